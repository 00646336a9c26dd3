"""Local delivery: mbox and Maildir through the real `dma._native`, on real files."""

from __future__ import annotations

import errno
import grp
import os
import pwd
import shutil
import subprocess
import sys
import tempfile
import textwrap
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
from dma import _native
from dma.mail import local
from dma.mail.local import DeliveryFailure

WHEN = "Wed Nov 25 12:00:41 2026"
ME = pwd.getpwuid(os.getuid()).pw_name
MINE = (os.getuid(), os.getgid(), 0o600)  # `create` for an mbox of ours


@dataclass(frozen=True)
class Cfg:
    mboxdir: str
    maildir: str | None = None
    mailname: str = "vm"
    user_mode: bool = True
    timeout: float = 300.0


def spool(tmp_path: Path, content: bytes, name: str = "Mtest") -> str:
    path = tmp_path / name
    path.write_bytes(content)
    return str(path)


def run_py(code: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code), *args],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )


# ---- mbox bytes ---------------------------------------------------------------------------------

# The message of dma-behaviour.md 5.2, as spooled, and the mbox C dma makes of it.
DOC_MESSAGE = (
    b"Received: from root (uid 0)\n"
    b"\t(envelope-from sender@ext.example)\n"
    b"\tid 20cd6f\n"
    b"\tby vm (DragonFly Mail Agent v0.14 on vm);\n"
    b"\tWed, 25 Nov 2026 12:00:41 +0000\n"
    b"Subject: local\n"
    b"Date: Wed, 25 Nov 2026 12:00:41 +0000\n"
    b"Message-Id: <6b06cde9.20cd6f.772701f@vm>\n"
    b"From: <sender@ext.example>\n"
    b"\n"
    b"From here\n"
    b">From there\n"
    b"Fromage\n"
    b"\n"
    b"end\n"
)
DOC_MBOX = (
    b"From sender@ext.example Wed Nov 25 12:00:41 2026\n"
    + DOC_MESSAGE.replace(b"\nFrom here", b"\n>From here").replace(b">From there", b">>From there")
    + b"\n"
)


def test_mbox_bytes_match_c_dma_example(tmp_path: Path) -> None:
    m = spool(tmp_path, DOC_MESSAGE)
    local.deliver(ME, "sender@ext.example", m, Cfg(str(tmp_path)), when=WHEN)
    got = (tmp_path / ME).read_bytes()
    assert got == DOC_MBOX
    assert b"\n>From here\n>>From there\nFromage\n\nend\n\n" in got


def test_mbox_quoting_of_many_levels(tmp_path: Path) -> None:
    body = b"From a\n>From b\n>>>From c\nFromage\n From d\n>Fromage\nx From y\n>>From"
    m = spool(tmp_path, body)
    mbox = tmp_path / "mbox"
    mbox.write_bytes(b"")
    _native.mbox_append(mbox, m, "s@x", WHEN, MINE, 100.0)
    assert mbox.read_bytes() == (
        b"From s@x " + WHEN.encode() + b"\n"
        b">From a\n>>From b\n>>>>From c\nFromage\n From d\n>Fromage\nx From y\n>>From\n\n"
    )


def test_empty_sender_is_mailer_daemon(tmp_path: Path) -> None:
    m = spool(tmp_path, b"Subject: bounce\n\nsorry\n")
    local.deliver(ME, "", m, Cfg(str(tmp_path)), when=WHEN)
    want = b"From MAILER-DAEMON " + WHEN.encode() + b"\nSubject: bounce\n\nsorry\n\n"
    assert (tmp_path / ME).read_bytes() == want


def test_two_messages_framed_by_one_empty_line(tmp_path: Path) -> None:
    m1 = spool(tmp_path, b"Subject: one\n\nfirst\n", "M1")
    m2 = spool(tmp_path, b"Subject: two\n\nsecond, no final newline", "M2")
    cfg = Cfg(str(tmp_path))
    local.deliver(ME, "a@x", m1, cfg, when=WHEN)
    local.deliver(ME, "b@x", m2, cfg, when="Thu Nov  5 01:02:03 2026")
    assert (tmp_path / ME).read_bytes() == (
        b"From a@x Wed Nov 25 12:00:41 2026\nSubject: one\n\nfirst\n\n"
        b"From b@x Thu Nov  5 01:02:03 2026\nSubject: two\n\nsecond, no final newline\n\n"
    )


def test_default_date_is_ctime_form(tmp_path: Path) -> None:
    m = spool(tmp_path, b"x\n")
    before = time.time()
    local.deliver(ME, "a@x", m, Cfg(str(tmp_path)))
    line = (tmp_path / ME).read_bytes().split(b"\n", 1)[0].decode()
    stamp = line.removeprefix("From a@x ")
    # ctime(): "Wed Nov  5 01:02:03 2026", day of month space-padded.
    assert len(stamp) == 24
    parsed = time.mktime(time.strptime(stamp, "%a %b %d %H:%M:%S %Y"))
    assert before - 2 <= parsed <= time.time() + 1


# ---- safety ---------------------------------------------------------------------------------------


def test_symlinked_mbox_refused_and_target_untouched(tmp_path: Path) -> None:
    target = tmp_path / "target"
    target.write_bytes(b"precious\n")
    boxes = tmp_path / "mail"
    boxes.mkdir()
    (boxes / ME).symlink_to(target)
    m = spool(tmp_path, b"x\n")
    for user_mode in (True, False):
        with pytest.raises(DeliveryFailure) as exc:
            local.deliver(ME, "a@x", m, Cfg(str(boxes), user_mode=user_mode), when=WHEN)
        assert not exc.value.permanent
    assert target.read_bytes() == b"precious\n"
    assert os.path.islink(boxes / ME)
    with pytest.raises(OSError) as oserr:
        _native.mbox_append(boxes / ME, m, "a", WHEN, MINE, 100.0)
    assert oserr.value.errno == errno.ELOOP


def test_dangling_symlink_not_followed_on_create(tmp_path: Path) -> None:
    boxes = tmp_path / "mail"
    boxes.mkdir()
    (boxes / ME).symlink_to(tmp_path / "planted")
    m = spool(tmp_path, b"x\n")
    with pytest.raises(DeliveryFailure):
        local.deliver(ME, "a@x", m, Cfg(str(boxes), user_mode=False), when=WHEN)
    assert not (tmp_path / "planted").exists()


def test_hard_linked_mbox_refused(tmp_path: Path) -> None:
    target = tmp_path / "target"
    target.write_bytes(b"precious\n")
    boxes = tmp_path / "mail"
    boxes.mkdir()
    os.link(target, boxes / ME)
    m = spool(tmp_path, b"x\n")
    with pytest.raises(DeliveryFailure) as exc:
        local.deliver(ME, "a@x", m, Cfg(str(boxes)), when=WHEN)
    assert not exc.value.permanent
    assert "hard link" in str(exc.value)
    assert target.read_bytes() == b"precious\n"


@pytest.mark.skipif(os.getuid() != 0, reason="needs root to create a file owned by someone else")
def test_mbox_owned_by_someone_else_refused_in_system_mode(tmp_path: Path) -> None:
    nobody = pwd.getpwnam("nobody")
    box = tmp_path / ME
    box.write_bytes(b"")
    os.chown(box, nobody.pw_uid, nobody.pw_gid)
    m = spool(tmp_path, b"x\n")
    if ME != "root":
        with pytest.raises(DeliveryFailure):
            local.deliver(ME, "a@x", m, Cfg(str(tmp_path), user_mode=False), when=WHEN)
    # The other way round: root's own mbox is fine for root, nobody's mbox owned by root is fine.
    box2 = tmp_path / "nobody"
    box2.write_bytes(b"")
    local.deliver("nobody", "a@x", m, Cfg(str(tmp_path), user_mode=False), when=WHEN)
    assert box2.read_bytes().startswith(b"From a@x")
    # An mbox of nobody's owned by a third user (not root, not nobody) is refused.
    other = next(p for p in pwd.getpwall() if p.pw_uid not in (0, nobody.pw_uid))
    os.chown(box2, other.pw_uid, other.pw_gid)
    with pytest.raises(DeliveryFailure) as exc:
        local.deliver("nobody", "a@x", m, Cfg(str(tmp_path), user_mode=False), when=WHEN)
    assert not exc.value.permanent


def test_newline_in_sender_is_permanent(tmp_path: Path) -> None:
    m = spool(tmp_path, b"x\n")
    (tmp_path / ME).write_bytes(b"")
    with pytest.raises(DeliveryFailure) as exc:
        local.deliver(ME, "a@x\nFrom forged", m, Cfg(str(tmp_path)), when=WHEN)
    assert exc.value.permanent
    assert (tmp_path / ME).read_bytes() == b""


def test_missing_mboxdir_is_temporary_in_system_mode(tmp_path: Path) -> None:
    m = spool(tmp_path, b"x\n")
    with pytest.raises(DeliveryFailure) as exc:
        local.deliver(ME, "a@x", m, Cfg(str(tmp_path / "nonexistent"), user_mode=False), when=WHEN)
    assert not exc.value.permanent
    assert "No such file" in str(exc.value)
    assert not (tmp_path / "nonexistent").exists()


def test_missing_mboxdir_is_made_in_user_mode(tmp_path: Path) -> None:
    m = spool(tmp_path, b"x\n")
    boxes = tmp_path / "state" / "mail"
    local.deliver(ME, "a@x", m, Cfg(str(boxes)), when=WHEN)
    assert (boxes / ME).read_bytes() == b"From a@x " + WHEN.encode() + b"\nx\n\n"


# ---- creation and ownership ---------------------------------------------------------------------


def test_user_mode_creates_0600_owned_by_us(tmp_path: Path) -> None:
    m = spool(tmp_path, b"x\n")
    local.deliver(ME, "a@x", m, Cfg(str(tmp_path)), when=WHEN)
    st = os.stat(tmp_path / ME)
    assert (st.st_uid, st.st_gid, st.st_mode & 0o7777) == (os.getuid(), os.getgid(), 0o600)


@pytest.mark.skipif(os.getuid() != 0, reason="system mode chowns: needs root")
def test_system_mode_creates_0620_user_mail(tmp_path: Path) -> None:
    nobody = pwd.getpwnam("nobody")
    try:
        gid = grp.getgrnam("mail").gr_gid
    except KeyError:
        gid = nobody.pw_gid
    m = spool(tmp_path, b"Subject: hi\n\nhello\n")
    local.deliver("nobody", "a@x", m, Cfg(str(tmp_path), user_mode=False), when=WHEN)
    st = os.stat(tmp_path / "nobody")
    assert (st.st_uid, st.st_gid, st.st_mode & 0o7777) == (nobody.pw_uid, gid, 0o620)
    assert (tmp_path / "nobody").read_bytes() == b"From a@x " + WHEN.encode() + b"\nSubject: hi\n\nhello\n\n"
    # An existing mbox keeps its owner and mode.
    os.chmod(tmp_path / "nobody", 0o600)
    local.deliver("nobody", "a@x", m, Cfg(str(tmp_path), user_mode=False), when=WHEN)
    assert os.stat(tmp_path / "nobody").st_mode & 0o7777 == 0o600


# ---- users --------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["no-such-user-dma-test", "../etc/passwd", "a/b", ".hidden", "", "x\0y"])
def test_unknown_or_unsafe_user_is_permanent(tmp_path: Path, name: str) -> None:
    m = spool(tmp_path, b"x\n")
    with pytest.raises(DeliveryFailure) as exc:
        local.deliver(name, "a@x", m, Cfg(str(tmp_path)), when=WHEN)
    assert exc.value.permanent
    assert sorted(os.listdir(tmp_path)) == ["Mtest"]
    assert not local.is_local_user(name)


def test_is_local_user() -> None:
    assert local.is_local_user(ME)
    assert local.is_local_user("nobody")
    assert not local.is_local_user("no-such-user-dma-test")


# ---- locking ------------------------------------------------------------------------------------

HOLD_LOCK = """
import fcntl, sys, time
f = open(sys.argv[1], "rb")
fcntl.flock(f, fcntl.LOCK_EX)
print("locked", flush=True)
time.sleep(float(sys.argv[2]))
"""


def hold_lock(path: Path, seconds: float) -> subprocess.Popen[str]:
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLD_LOCK, str(path), str(seconds)], stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None
    assert proc.stdout.readline() == "locked\n"
    return proc


def test_locked_mbox_delays_delivery_until_released(tmp_path: Path) -> None:
    box = tmp_path / ME
    box.write_bytes(b"")
    m = spool(tmp_path, b"x\n")
    proc = hold_lock(box, 1.0)
    try:
        start = time.monotonic()
        local.deliver(ME, "a@x", m, Cfg(str(tmp_path)), when=WHEN, lock_timeout=20)
        waited = time.monotonic() - start
    finally:
        proc.wait()
        assert proc.stdout is not None
        proc.stdout.close()
    assert waited >= 0.5
    assert box.read_bytes() == b"From a@x " + WHEN.encode() + b"\nx\n\n"


def test_lock_timeout_is_temporary(tmp_path: Path) -> None:
    box = tmp_path / ME
    box.write_bytes(b"old\n")
    m = spool(tmp_path, b"x\n")
    proc = hold_lock(box, 5.0)
    try:
        start = time.monotonic()
        with pytest.raises(DeliveryFailure) as exc:
            local.deliver(ME, "a@x", m, Cfg(str(tmp_path)), when=WHEN, lock_timeout=0.3)
        assert 0.3 <= time.monotonic() - start < 3
    finally:
        proc.kill()
        proc.wait()
        assert proc.stdout is not None
        proc.stdout.close()
    assert not exc.value.permanent
    assert "lock" in str(exc.value)
    assert box.read_bytes() == b"old\n"


# ---- failure half-way ---------------------------------------------------------------------------

FSIZE_CHILD = """
import errno, os, resource, signal, sys
from dma import _native
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
limit = int(sys.argv[3])
resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
mine = (os.getuid(), os.getgid(), 0o600)
try:
    _native.mbox_append(sys.argv[1], sys.argv[2], "a@x", "Wed Nov 25 12:00:41 2026", mine, 100.0)
except OSError as e:
    print(errno.errorcode[e.errno], e.strerror)
else:
    print("no error")
"""


def test_write_failure_truncates_back(tmp_path: Path) -> None:
    box = tmp_path / "mbox"
    old = b"From old Thu Jan  1 00:00:00 1970\nold message\n\n"
    box.write_bytes(old)
    m = spool(tmp_path, b"From x\n" + b"y" * 999 + b"\n" * 200_000)
    # Room for the From_ line and a little more: the write fails in the middle of the body.
    res = run_py(FSIZE_CHILD, str(box), m, str(len(old) + 5000))
    assert res.returncode == 0, res.stderr
    assert res.stdout.startswith("EFBIG"), res.stdout
    assert box.read_bytes() == old


@pytest.mark.skipif(os.getuid() != 0, reason="mounting a tmpfs needs root")
def test_disk_full_truncates_back(tmp_path: Path) -> None:
    mnt = tmp_path / "small"
    mnt.mkdir()
    res = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mnt)], capture_output=True)
    if res.returncode != 0:
        pytest.skip(f"cannot mount tmpfs: {res.stderr.decode().strip()}")
    try:
        box = mnt / "mbox"
        old = b"From old Thu Jan  1 00:00:00 1970\nold message\n\n"
        box.write_bytes(old)
        m = spool(tmp_path, b"line\n" * 100_000)
        with pytest.raises(OSError) as exc:
            _native.mbox_append(box, m, "a@x", WHEN, MINE, 100.0)
        assert exc.value.errno == errno.ENOSPC
        assert box.read_bytes() == old
        # After the failure the space is back: a small message goes in.
        small = spool(tmp_path, b"small\n", "Msmall")
        _native.mbox_append(box, small, "a@x", WHEN, MINE, 100.0)
        assert box.read_bytes() == old + b"From a@x " + WHEN.encode() + b"\nsmall\n\n"
    finally:
        subprocess.run(["umount", str(mnt)], check=False)


# ---- memory -------------------------------------------------------------------------------------

# Peak RSS from VmHWM: ru_maxrss survives exec on Linux and would report the forked pytest's
# size, not this process's.
RSS_CHILD = """
import os
import sys
import tempfile
from dma import _native
def peak_kib():
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmHWM:"))
before = peak_kib()
mine = (os.getuid(), os.getgid(), 0o600)
_native.mbox_append(sys.argv[1], sys.argv[2], "a@x", "Wed Nov 25 12:00:41 2026", mine, 100.0)
print(before, peak_kib())
"""


def test_50_mib_message_in_constant_memory(tmp_path: Path) -> None:
    line = b"From the quick brown fox jumps over the lazy dog, again and again and again\n"
    count = (50 * 1024 * 1024) // len(line) + 1
    m = tmp_path / "Mbig"
    with open(m, "wb") as f:
        block = line * 1024
        for _ in range(count // 1024 + 1):
            f.write(block)
    size = m.stat().st_size
    assert size >= 50 * 1024 * 1024
    box = tmp_path / "mbox"
    box.write_bytes(b"")
    res = run_py(RSS_CHILD, str(box), str(m))
    assert res.returncode == 0, res.stderr
    before_kib, peak_kib = map(int, res.stdout.split())
    assert peak_kib < 32 * 1024, f"peak RSS {peak_kib} KiB"
    assert peak_kib - before_kib < 4 * 1024, f"RSS grew by {peak_kib - before_kib} KiB"
    lines = size // len(line)
    header = len(b"From a@x Wed Nov 25 12:00:41 2026\n")
    assert box.stat().st_size == header + size + lines + 1  # one '>' per line, one empty line
    with open(box, "rb") as f:
        f.seek(header)
        assert f.read(len(line) + 1) == b">" + line
        f.seek(-(len(line) + 2), os.SEEK_END)
        assert f.read() == b">" + line + b"\n"


# ---- Maildir ------------------------------------------------------------------------------------


def test_maildir_delivery(tmp_path: Path) -> None:
    content = b"From x\nSubject: y\n\nFrom here, unquoted\n"
    m = spool(tmp_path, content)
    cfg = Cfg(str(tmp_path / "unused"), maildir=str(tmp_path / "Maildir-%u"), mailname="mx.example")
    local.deliver(ME, "a@x", m, cfg)
    local.deliver(ME, "a@x", m, cfg)
    md = tmp_path / f"Maildir-{ME}"
    assert sorted(p.name for p in md.iterdir()) == ["cur", "new", "tmp"]
    assert list((md / "tmp").iterdir()) == []
    assert list((md / "cur").iterdir()) == []
    files = sorted((md / "new").iterdir())
    assert len(files) == 2
    for f in files:
        assert f.read_bytes() == content
        assert f.name.endswith(".mx.example")
        assert ".M" in f.name and f"P{os.getpid()}Q" in f.name
        assert os.stat(f).st_mode & 0o7777 == 0o600
    assert not (tmp_path / "unused").exists()


def test_maildir_returns_name_and_refuses_symlinked_new(tmp_path: Path) -> None:
    m = spool(tmp_path, b"x\n")
    name = _native.maildir_deliver(tmp_path / "md", m, "h")
    assert (tmp_path / "md" / "new" / name).read_bytes() == b"x\n"
    evil = tmp_path / "evil"
    evil.mkdir()
    md2 = tmp_path / "md2"
    md2.mkdir()
    (md2 / "new").symlink_to(evil)
    cfg = Cfg(str(tmp_path), maildir=str(md2))
    with pytest.raises(DeliveryFailure) as exc:
        local.deliver(ME, "a@x", m, cfg)
    assert not exc.value.permanent
    assert list(evil.iterdir()) == []


@pytest.mark.skipif(os.getuid() != 0, reason="system mode chowns: needs root")
def test_maildir_system_mode_owned_by_user(tmp_path: Path) -> None:
    # System mode delivers into a Maildir as its owner, so the user must be able to reach it:
    # a world-traversable tree outside pytest's root-only tmp_path, with a directory of theirs.
    nobody = pwd.getpwnam("nobody")
    m = spool(tmp_path, b"x\n")
    base = Path(tempfile.mkdtemp(prefix="dma-maildir-"))
    try:
        os.chmod(base, 0o755)
        homes = base / "homes"
        homes.mkdir()
        os.chown(homes, nobody.pw_uid, nobody.pw_gid)
        local.deliver("nobody", "a@x", m, Cfg(str(tmp_path), maildir=str(homes / "%u"), user_mode=False))
        check_maildir_owner(homes / "nobody", nobody)
    finally:
        shutil.rmtree(base)


def test_maildir_system_mode_cannot_be_led_outside_the_users_reach(tmp_path: Path) -> None:
    # The user may point the Maildir path anywhere: root's own directory stays untouched.
    m = spool(tmp_path, b"x\n")
    with pytest.raises(DeliveryFailure) as e:
        local.deliver("nobody", "a@x", m, Cfg(str(tmp_path), maildir=str(tmp_path / "%u"), user_mode=False))
    assert not e.value.permanent
    assert not (tmp_path / "nobody").exists()


def check_maildir_owner(md: Path, nobody: pwd.struct_passwd) -> None:
    for d in (md, md / "new", md / "cur", md / "tmp"):
        st = os.stat(d)
        assert (st.st_uid, st.st_gid, st.st_mode & 0o7777) == (nobody.pw_uid, nobody.pw_gid, 0o700)
    (f,) = (md / "new").iterdir()
    assert (os.stat(f).st_uid, os.stat(f).st_gid) == (nobody.pw_uid, nobody.pw_gid)


def test_maildir_template_expansion() -> None:
    pw = pwd.getpwnam(ME)
    assert local.expand_maildir("~/Maildir", pw) == pw.pw_dir + "/Maildir"
    assert local.expand_maildir("/var/mail/%u/", pw) == f"/var/mail/{ME}/"
    with pytest.raises(DeliveryFailure):
        local.expand_maildir("Maildir", pw)
