"""System mode: the runner's pickup of the drops (`D<id>`, the message, then `E<id>`, its envelope)
that users leave in `<SPOOLDIR>/incoming`. All of it is untrusted: docs/runner.md tells why each
check is there."""

from __future__ import annotations

import errno
import os
import pwd
import stat
import time

from dma import _native
from dma.errors import EX_CONFIG, EX_DATAERR, EX_NOUSER, Fatal

from .message import user_name
from .routing import RecipientResolver
from .submit import Spooling, over

TYPE_CHECKING = False
if TYPE_CHECKING:
    from dma.config import Config

    from .log import Log

NAME = "incoming"
MAX_ENVELOPE = 1 << 20
STALE = 300  # seconds (by ctime, which a user cannot set back) before a lone half is removed
QUARANTINE = "quarantine"
PER_PASS = 16
# Drops this process queued but could not remove: never queued twice by it (see `handle`).
UNREMOVED: set[str] = set()


def path(cfg: Config) -> str:
    return f"{cfg.spooldir}/{NAME}"


def open_plain(name: str) -> tuple[int, os.stat_result]:
    try:
        fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as e:
        if e.errno in (errno.ELOOP, errno.ENXIO):  # a symbolic link, a socket
            raise Fatal(EX_DATAERR, f"{name} is not a plain file") from None
        raise
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode) or st.st_nlink != 1:
        os.close(fd)
        raise Fatal(EX_DATAERR, f"{name} is not a plain file with one link")
    return fd, st


def envelope(name: str) -> tuple[os.stat_result, str, list[str], str]:
    """The stat and the (sender, recipients, DSN parameters) of envelope `name`; invalid content
    (a refused drop) raises Fatal(EX_DATAERR)."""
    fd, st = open_plain(name)
    try:
        if st.st_size > MAX_ENVELOPE:
            raise Fatal(EX_DATAERR, "the envelope is too large")
        fault("read")
        data = os.read(fd, MAX_ENVELOPE + 1)
    finally:
        os.close(fd)
    fault("parse")
    try:
        return (st, *_native.Incoming.drop_envelope(data))
    except ValueError as e:
        raise Fatal(EX_DATAERR, str(e)) from None


def waiting(cfg: Config) -> list[tuple[str, str, list[str], os.stat_result]]:
    """Drops not taken yet, oldest first: (id, sender, recipients as given, the message's stat).
    A drop that cannot be read or parsed is left out: the runner will refuse it (and log why)."""
    base = path(cfg)
    try:
        names = os.listdir(base)
    except OSError:
        return []
    found = []
    for ident in (name[1:] for name in names if name.startswith("E")):
        try:
            _, sender, recipients, _ = envelope(f"{base}/E{ident}")
            dst = os.lstat(f"{base}/D{ident}")
        except (OSError, Fatal):
            continue
        found.append((ident, sender, recipients, dst))
    return sorted(found, key=lambda drop: (drop[3].st_mtime, drop[0]))


def fault(step: str) -> None:
    """tests/campaigns/pickup.py's injection point: inert without DMA_PICKUP_FAULT=<step>:<errno|KILL>."""
    want = os.environ.get("DMA_PICKUP_FAULT", "").partition(":")
    if want[0] == step:
        if want[2] == "KILL":
            os.kill(os.getpid(), 9)
        code = getattr(errno, want[2], errno.EIO)
        raise OSError(code, os.strerror(code))


def quarantine(cfg: Config) -> str:
    qdir = f"{cfg.spooldir}/{QUARANTINE}"
    os.makedirs(qdir, mode=0o700, exist_ok=True)
    return qdir


def discard(cfg: Config, name: str) -> None:
    """Move `name` out of the drop directory, then remove it, whatever its type, following no link.
    What cannot be removed now (a directory its owner keeps writing to) waits in quarantine."""
    where = f"{path(cfg)}/{name}"
    try:
        os.unlink(where)  # a file, FIFO, socket or symlink (never followed)
    except FileNotFoundError:
        pass
    except IsADirectoryError:
        moved = f"{quarantine(cfg)}/x{time.time_ns()}{name}"
        try:
            os.rename(where, moved)
        except OSError:
            moved = where  # another file system: removed in place (rmtree works on descriptors)
        remove_tree(moved)


def remove_tree(where: str) -> None:
    import shutil  # here: it imports `re`

    shutil.rmtree(where, ignore_errors=True)  # works on descriptors, never follows a link


def take(cfg: Config, ident: str, est: os.stat_result, sid: str, used: list[int], events: Log) -> None:
    """Move drop `ident` into the spool as message `sid`."""
    base = path(cfg)
    est2, sender, given, dsn = envelope(f"{base}/E{ident}")
    if (est2.st_dev, est2.st_ino) != (est.st_dev, est.st_ino):
        raise OSError(errno.EAGAIN, "replaced while being read")
    try:
        dfd, dst = open_plain(f"{base}/D{ident}")
    except FileNotFoundError:
        raise Fatal(EX_DATAERR, "the envelope has no message") from None
    try:
        if est.st_uid != dst.st_uid:
            raise Fatal(EX_DATAERR, "the envelope and the message belong to different users")
        fault("alias")
        recipients = RecipientResolver(cfg).resolve(given)
        fault("passwd")
        user = user_name(est.st_uid)
        if over(cfg, used[0], used[1]):
            raise OSError(errno.EDQUOT, f"uid {est.st_uid} holds {used[0]} queued messages ({used[1]} bytes)")
        with Spooling(cfg, sender, name=sid) as msg:
            fault("write")
            size, _ = msg.receive(dfd, user, uid=est.st_uid)
            fault("sync")
            msg.incoming.commit(sender, recipients, dsn)
        used[0] += 1
        used[1] += size
        to = ", ".join(recipients)
        text = f"new mail from uid {est.st_uid} to {to}"
        events.event("info", "queued", text, id=sid, uid=est.st_uid, to=to)
    finally:
        os.close(dfd)


def refuse(cfg: Config, ident: str, est: os.stat_result, rid: str, why: str, events: Log) -> None:
    """Tell the owner of a drop with invalid content, in a notice queued as `rid`, an id naming the
    drop (a second try after a crash finds it queued); keep the drop for the postmaster if we cannot."""
    try:
        user = pwd.getpwuid(est.st_uid).pw_name
        recipients = RecipientResolver(cfg).resolve([user])
        text = (
            f"From: Mail Delivery System <MAILER-DAEMON@{cfg.mailname}>\nTo: <{user}>\n"
            "Subject: Mail not accepted\nAuto-Submitted: auto-replied\n\n"
            f"The mail you left for delivery as drop {ident} was not accepted: {why}.\n"
            "Nothing of it was sent.\n"
        )
        with Spooling(cfg, "", name=rid) as msg:
            msg.receive(text.encode("utf-8", "surrogateescape"), "MAILER-DAEMON")
            msg.incoming.commit("", recipients)
    except (KeyError, Fatal) as e:
        if isinstance(e, Fatal) and e.code == EX_CONFIG:
            raise
        qdir = quarantine(cfg)
        for part in ("E", "D"):
            try:
                os.rename(f"{path(cfg)}/{part}{ident}", f"{qdir}/{part}{ident}")
            except FileNotFoundError:
                pass
        events.event("err", "rejected", f"drop {ident} refused ({why}), kept in {qdir}: {e}", drop=ident)
        return
    events.event("err", "rejected", f"drop {ident} refused, uid {est.st_uid} told: {why}", drop=ident)


def pick_up(cfg: Config, events: Log) -> int:
    """Take every published drop into the spool, clear away what is not a drop; returns how
    many wait for a later pass."""
    base = path(cfg)
    try:
        names = os.listdir(base)
    except FileNotFoundError:
        return 0
    queued = {e.message_id: e.size for e in _native.scan_queue(cfg.spooldir)}
    per_uid: dict[int, list[int]] = {}  # [messages, bytes] queued per uid, the `u<uid>` of our ids
    for mid, size in queued.items():
        tag = mid.rpartition("u")[2]
        if "u" in mid and tag.isdigit():
            used = per_uid.setdefault(int(tag), [0, 0])
            used[0] += 1
            used[1] += size
    stats: dict[str, os.stat_result] = {}
    totals = {uid: list(used) for uid, used in per_uid.items()}
    for name in names:
        try:
            stats[name] = st = os.lstat(f"{base}/{name}")
        except FileNotFoundError:
            continue
        used = totals.setdefault(st.st_uid, [0, 0])
        used[0] += not name.startswith("E")
        used[1] += st.st_size
    held = {f"usage.{uid}": used for uid, used in totals.items() if used[0] or used[1]}
    try:  # the `usage.<uid>` files (docs/runner.md), and what quarantine could not remove before
        for name in os.listdir(cfg.spooldir):
            if name.startswith("usage.") and name not in held:
                os.unlink(f"{cfg.spooldir}/{name}")
        for name, (msgs, size) in held.items():
            tmp = f"{cfg.spooldir}/.{name}"
            with open(tmp, "w") as f:
                f.write(f"{msgs} {size}\n")
            os.chmod(tmp, 0o644)
            os.replace(tmp, f"{cfg.spooldir}/{name}")
        for name in os.listdir(f"{cfg.spooldir}/{QUARANTINE}"):
            if name.startswith("x"):  # a directory that could not be removed last time
                remove_tree(f"{cfg.spooldir}/{QUARANTINE}/{name}")
    except OSError:
        pass  # bookkeeping: the next pass does it again
    waits = 0
    now = time.time()
    # Envelopes first, the users in turn (each one's oldest first), at most PER_PASS of a user's a pass.
    rank: dict[int, int] = {}
    order = []
    for name, st in sorted(stats.items(), key=lambda item: item[1].st_mtime):
        rank[st.st_uid] = turn = rank.get(st.st_uid, -1) + name.startswith("E")
        order.append((name[:1] != "E", turn, name, st))
    for _, turn, name, st in sorted(order, key=lambda item: item[:2]):
        ident = name[1:]
        pair = 0 < len(ident) <= 64 and ident.isascii() and ident.isalnum() and stat.S_ISREG(st.st_mode)
        try:
            if name.startswith("E") and pair and turn >= PER_PASS:
                waits += 1
            elif name.startswith("E") and pair:
                handle(cfg, ident, st, queued, per_uid.setdefault(st.st_uid, [0, 0]), events)
            elif name.startswith("D") and pair and f"E{ident}" in stats:
                continue  # the message of a pair: taken with its envelope
            elif not (
                stat.S_ISREG(st.st_mode)
                and name[:1] in "Dt"
                and now - st.st_ctime < STALE
                and not over(cfg, *totals[st.st_uid])
            ):
                # Not a drop, or a half whose writer is gone or whose owner (over the cap) was refused.
                discard(cfg, name)
                events.event("warning", "rejected", f"{name!r} removed from the drop directory: not a drop")
        except Exception as e:  # whatever it is, the drop waits for the next pass
            if isinstance(e, Fatal) and e.code == EX_CONFIG:
                raise
            waits += 1
            events.event("warning", "deferred", f"drop {ident} waits: {e}", drop=ident)
    return waits


def handle(
    cfg: Config, ident: str, st: os.stat_result, queued: dict[str, int], used: list[int], events: Log
) -> None:
    """Take (or refuse) the drop whose envelope `st` describes, then remove it: the envelope first,
    so a crash never leaves an envelope without its message."""
    sid, rid = (f"{ident}{kind}{st.st_ino:x}u{st.st_uid}" for kind in "ir")
    if sid not in queued and sid not in UNREMOVED:  # else taken before, and its removal failed
        try:
            take(cfg, ident, st, sid, used, events)
        except Fatal as e:
            if e.code not in (EX_DATAERR, EX_NOUSER):  # invalid content is refused, the rest waits
                raise
            if rid not in queued:  # else its notice is queued
                refuse(cfg, ident, st, rid, str(e), events)
    UNREMOVED.add(sid)
    fault("unlink")
    for part in ("E", "D"):
        discard(cfg, f"{part}{ident}")
    UNREMOVED.discard(sid)
