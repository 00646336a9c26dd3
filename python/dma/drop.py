"""System mode: the drop directory where unprivileged users leave mail for the runner.

`<SPOOLDIR>/incoming` has mode 1733 and belongs to the runner (root): any local user can create a
file there, and nobody can list it, or read, replace or remove anyone else's files. A submitter
writes the message as `D<id>`, then its envelope as `E<id>` (`Sender:` and `Recipient:` lines, and
`DSN:` for `-N`/`-R`/`-V`);
the runner takes each pair into the private spool. Everything in the directory is untrusted: the
files are opened without following links and must be plain files with one link and one owner;
the submitter's identity in our `Received:` header comes from that owner, never from the contents;
the envelope is parsed and every address checked again, and the message goes through the same
spool writer as any other.
"""

from __future__ import annotations

import os
import pwd
import stat
import time

from . import _native, message
from .dsn import checked
from .errors import Fatal
from .routing import RecipientResolver

TYPE_CHECKING = False
if TYPE_CHECKING:
    from .config import Config
    from .log import Log

NAME = "incoming"
MODE = 0o1733
MAX_ENVELOPE = 1 << 20


def path(cfg: Config) -> str:
    return f"{cfg.spooldir}/{NAME}"


class Rejected(Exception):
    """A drop that cannot be taken: it is removed, and the reason logged."""


def open_plain(name: str) -> tuple[int, os.stat_result]:
    fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode) or st.st_nlink != 1:
        os.close(fd)
        raise Rejected(f"{name} is not a plain file with one link")
    return fd, st


def parse_envelope(text: str) -> tuple[str, list[str], str]:
    """`Sender: s` once, then `Recipient: r` lines, and `DSN: params` at most once (sender,
    recipients, DSN parameters); anything else rejects the drop."""
    if not text.endswith("\n"):
        raise Rejected("the envelope is incomplete")
    sender: str | None = None
    recipients: list[str] = []
    dsn: str | None = None
    for line in text[:-1].split("\n"):
        key, sep, value = line.partition(":")
        value = value.removeprefix(" ")
        if sep and key == "Sender" and sender is None:
            sender = value
        elif sep and key == "Recipient" and value:
            recipients.append(value)
        elif sep and key == "DSN" and dsn is None and checked(value):
            dsn = value
        else:
            raise Rejected(f"unexpected envelope line {line[:80]!r}")
    if sender is None or not recipients:
        raise Rejected("the envelope lacks a sender or recipients")
    for address in [sender, *recipients]:
        message.check_line_safe("an envelope address", address)
        if address:
            message.check_address(address, "envelope address")
    return sender, recipients, dsn or ""


def read_envelope(fd: int) -> tuple[str, list[str], str]:
    return parse_envelope(os.read(fd, MAX_ENVELOPE + 1).decode("utf-8", "surrogateescape"))


def waiting(cfg: Config) -> list[tuple[str, str, list[str], os.stat_result]]:
    """Drops the runner has not taken yet, oldest first: (id, sender, recipients as given, the
    message's stat). Only the runner's user can list them; a drop that cannot be read or parsed
    is left out, as the runner will refuse it (and log why)."""
    base = path(cfg)
    try:
        names = os.listdir(base)
    except OSError:
        return []
    found = []
    for name in names:
        if not name.startswith("E"):
            continue
        try:
            efd, _ = open_plain(f"{base}/{name}")
            try:
                sender, recipients, _ = read_envelope(efd)
            finally:
                os.close(efd)
            dst = os.lstat(f"{base}/D{name[1:]}")
        except (OSError, Rejected, Fatal):
            continue
        found.append((name[1:], sender, recipients, dst))
    found.sort(key=lambda drop: (drop[3].st_mtime, drop[0]))
    return found


def take(cfg: Config, ident: str) -> tuple[str, list[str], int]:
    """Move drop `ident` into the spool; returns (message id, recipients, submitter uid)."""
    base = path(cfg)
    efd, est = open_plain(f"{base}/E{ident}")
    try:
        dfd, dst = open_plain(f"{base}/D{ident}")
    except FileNotFoundError:
        os.close(efd)
        raise Rejected(f"E{ident} has no message") from None
    try:
        if est.st_uid != dst.st_uid:
            raise Rejected(f"E{ident} and D{ident} belong to different users")
        if est.st_size > MAX_ENVELOPE:
            raise Rejected(f"E{ident} is too large")
        uid = dst.st_uid
        sender, given, dsn = read_envelope(efd)
        recipients = RecipientResolver(cfg).resolve(given)
        try:
            user = pwd.getpwuid(uid).pw_name
        except KeyError:
            user = f"uid={uid}"
        incoming = _native.Incoming(cfg.spooldir)
        try:
            now = time.time()
            prefix = message.received_header(
                sender, incoming.id, cfg.mailname, cfg.system_hostname, user, now, uid=uid
            )
            incoming.receive(
                dfd,
                prefix=prefix,
                add_if_missing=message.headers_to_add(sender, incoming.id, cfg.mailname, now),
                dot_terminates=False,
                collect_recipients=False,
            )
            incoming.commit(sender, recipients, dsn)
        finally:
            incoming.abort()
    finally:
        os.close(efd)
        os.close(dfd)
    return incoming.id, recipients, uid


def pick_up(cfg: Config, events: Log) -> int:
    """Take every published drop into the spool; returns how many were taken."""
    base = path(cfg)
    try:
        names = os.listdir(base)
    except FileNotFoundError:
        return 0
    taken = 0
    for name in names:
        if not name.startswith("E"):
            continue
        ident = name[1:]
        try:
            message_id, recipients, uid = take(cfg, ident)
        except (Rejected, Fatal, ValueError, OSError) as e:
            events.event("err", "rejected", f"drop {ident} rejected: {e}", drop=ident)
        else:
            taken += 1
            events.event(
                "info",
                "queued",
                f"{message_id}: new mail from uid {uid} to {', '.join(recipients)}",
                id=message_id,
                uid=uid,
                to=", ".join(recipients),
            )
        # Taken or refused, the drop is done: the envelope goes first so a crash never
        # leaves an envelope without its message.
        for prefix in ("E", "D"):
            try:
                os.unlink(f"{base}/{prefix}{ident}")
            except FileNotFoundError:
                pass
            except IsADirectoryError:
                # A submitter's directory under a drop name: removed when empty, else left
                # (refused again next time); never followed or emptied by us.
                try:
                    os.rmdir(f"{base}/{prefix}{ident}")
                except OSError:
                    pass
    return taken
