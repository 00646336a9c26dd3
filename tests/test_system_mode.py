"""System mode with real unprivileged users (issue 5 item 2).

Two system users, dmatest-a and dmatest-b, are created for the session. Each test gets a root-owned
world in /tmp laid out as a system install: `spool` 0711 with `spool/incoming` 1733 (the drop
directory), `mail` 0755 for the mboxes, a world-readable dma.conf. The users submit with the real
`sendmail` (through `setpriv`); root runs the queue in the foreground (`sendmail -D -q`), as the
runner does. Every attempt to reach another user's mail is made by the other user's own process,
and the errno it gets is checked.

Needs root (it is skipped otherwise) and `useradd`/`userdel`/`setpriv`.
"""

from __future__ import annotations

import json
import os
import pwd
import shutil
import stat
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from dma_fixtures import MAILNAME, closed_port, program

pytestmark = [
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root: creates users and a system spool"),
    pytest.mark.skipif(
        shutil.which("setpriv") is None or shutil.which("useradd") is None, reason="no setpriv/useradd"
    ),
]

USERS = ("dmatest-a", "dmatest-b")
PY = os.path.realpath(sys.executable)


class User:
    def __init__(self, name: str) -> None:
        pw = pwd.getpwnam(name)
        self.name = name
        self.uid = pw.pw_uid
        self.gid = pw.pw_gid

    def argv(self, *args: str) -> list[str]:
        return ["setpriv", "--reuid", str(self.uid), "--regid", str(self.gid), "--clear-groups", *args]


def _traversable_paths() -> list[str]:
    """What an unprivileged user must reach to run our programs: the venv, its interpreter, the
    package (an editable install), the extension module."""
    import dma

    return [
        PY,
        sys.executable,
        program("sendmail"),
        os.path.realpath(dma.__file__),
        os.path.realpath(dma._native.__file__),
    ]


@contextmanager
def real_users(*names: str) -> Iterator[list[User]]:
    """System users `names`, created for the block and removed after it, who can run our programs."""
    for name in names:
        subprocess.run(["userdel", name], capture_output=True, check=False)  # a leftover of a killed run
        subprocess.run(
            ["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", name],
            check=True,
            capture_output=True,
        )
    # Make the interpreter reachable (it lives under /root/.pyenv here): o+x on the ancestors that
    # lack it, restored afterwards.
    changed: dict[str, int] = {}
    for target in _traversable_paths():
        p = Path(target).parent
        while True:
            mode = stat.S_IMODE(p.stat().st_mode)
            if not mode & 0o001 and str(p) not in changed:
                changed[str(p)] = mode
                os.chmod(p, mode | 0o001)
            if p == p.parent:
                break
            p = p.parent
    try:
        yield [User(name) for name in names]
    finally:
        for path, mode in changed.items():
            os.chmod(path, mode)
        for name in names:
            for _ in range(50):  # userdel refuses while a process of the user still runs
                if subprocess.run(["userdel", name], capture_output=True, check=False).returncode in (0, 6):
                    break
                time.sleep(0.2)


@pytest.fixture(scope="session")
def users() -> Iterator[tuple[User, User]]:
    with real_users(*USERS) as (a, b):
        yield a, b


class World:
    """A root-owned system install in /tmp."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.spool = root / "spool"
        self.incoming = self.spool / "incoming"
        self.mail = root / "mail"
        self.aliases = root / "aliases"
        self.conf = root / "dma.conf"
        os.chmod(root, 0o755)
        self.spool.mkdir(mode=0o711)
        os.chmod(self.spool, 0o711)
        self.incoming.mkdir()
        os.chmod(self.incoming, 0o1733)
        self.mail.mkdir()
        os.chmod(self.mail, 0o755)
        self.aliases.write_text("")
        os.chmod(self.aliases, 0o644)
        self.write_conf()
        self.env = {
            "PATH": "/usr/bin:/bin",
            "DMA_CONF": str(self.conf),
            "LANG": "C.UTF-8",
        }

    def write_conf(self, *extra: str) -> None:
        self.conf.write_text(
            "\n".join(
                [
                    f"SPOOLDIR {self.spool}",
                    f"MBOXDIR {self.mail}",
                    f"ALIASES {self.aliases}",
                    "SMARTHOST 127.0.0.1",
                    f"PORT {closed_port()}",
                    f"MAILNAME {MAILNAME}",
                    *extra,
                ]
            )
            + "\n"
        )
        os.chmod(self.conf, 0o644)

    def submit(
        self, user: User, args: list[str], message: bytes, env: dict[str, str] | None = None
    ) -> subprocess.CompletedProcess[bytes]:
        return subprocess.run(
            user.argv(program("sendmail"), *args),
            input=message,
            capture_output=True,
            env={**self.env, **(env or {})},
            cwd="/",
            timeout=60,
            check=False,
        )

    def run_queue(self) -> subprocess.CompletedProcess[bytes]:
        """The root runner, in the foreground: picks up the drops and delivers."""
        r = subprocess.run(
            [program("sendmail"), "-D", "-q"],
            capture_output=True,
            env=self.env,
            cwd="/",
            timeout=60,
            check=False,
        )
        assert b"Traceback" not in r.stderr, r.stderr.decode()
        return r

    def as_user(self, user: User, ops: list[list[str]]) -> dict[str, str]:
        """Attempt each operation as `user`; returns {label: "ok" or the errno name}."""
        return probe(user, ops, self.env)

    def drops(self) -> list[str]:
        return sorted(os.listdir(self.incoming))

    def spool_files(self) -> list[str]:
        return sorted(
            n for n in os.listdir(self.spool) if n not in ("incoming", "lock") and "usage." not in n
        )

    def mbox(self, name: str = "root") -> bytes:
        path = self.mail / name
        return path.read_bytes() if path.exists() else b""

    def drop_pair(self, user: User, ident: str, envelope: bytes, message: bytes) -> None:
        """Write a drop by hand as `user` (D first, then E, as sendmail does)."""
        script = textwrap.dedent(
            """
            import os, sys
            base, ident = sys.argv[1], sys.argv[2]
            env, msg = bytes.fromhex(sys.argv[3]), bytes.fromhex(sys.argv[4])
            for name, data in (("D", msg), ("E", env)):
                fd = os.open(f"{base}/{name}{ident}", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
                os.write(fd, data)
                os.close(fd)
            """
        )
        subprocess.run(
            user.argv(PY, "-c", script, str(self.incoming), ident, envelope.hex(), message.hex()),
            check=True,
            cwd="/",
            env=self.env,
            timeout=30,
        )

    def user_script(self, user: User, script: str, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            user.argv(PY, "-c", textwrap.dedent(script), *args),
            capture_output=True,
            text=True,
            cwd="/",
            env=self.env,
            timeout=30,
            check=False,
        )


PROBE = """
import errno, json, os, sys
results = {}
for label, op, *args in json.loads(sys.argv[1]):
    try:
        if op == "listdir":
            os.listdir(args[0])
        elif op == "read":
            with open(args[0], "rb") as f:
                f.read(1)
        elif op == "write":
            with open(args[0], "r+b") as f:
                f.write(b"X")
        elif op == "append":
            fd = os.open(args[0], os.O_WRONLY | os.O_APPEND)
            os.close(fd)
        elif op == "truncate":
            os.truncate(args[0], 0)
        elif op == "rename":
            os.rename(args[0], args[1])
        elif op == "replace":
            # our own new file, renamed over the target
            fd = os.open(args[1], os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            os.write(fd, b"forged")
            os.close(fd)
            try:
                os.rename(args[1], args[0])
            finally:
                try:
                    os.unlink(args[1])
                except OSError:
                    pass
        elif op == "unlink":
            os.unlink(args[0])
        elif op == "chmod":
            os.chmod(args[0], 0o666)
        elif op == "link":
            os.link(args[0], args[1])
        elif op == "utime":
            os.utime(args[0], (0, 0))
        else:
            raise SystemExit(f"unknown op {op}")
        results[label] = "ok"
    except OSError as e:
        results[label] = errno.errorcode.get(e.errno, str(e.errno))
print(json.dumps(results))
"""


def probe(user: User, ops: list[list[str]], env: dict[str, str]) -> dict[str, str]:
    r = subprocess.run(
        user.argv(PY, "-c", PROBE, json.dumps(ops)),
        capture_output=True,
        text=True,
        cwd="/",
        env=env,
        timeout=30,
        check=True,
    )
    result: dict[str, str] = json.loads(r.stdout)
    return result


@pytest.fixture
def world(users: tuple[User, User]) -> Iterator[World]:
    root = Path(tempfile.mkdtemp(prefix="dma-sysmode-", dir="/tmp"))
    try:
        yield World(root)
    finally:
        shutil.rmtree(root, ignore_errors=True)


def message(body: str, *headers: str) -> bytes:
    return ("\n".join([*headers, "Subject: test", "", body]) + "\n").encode()


def received_lines(mbox: bytes, marker: bytes) -> list[bytes]:
    """The header block of the message in `mbox` whose body holds `marker`, as lines."""
    for part in mbox.split(b"\nFrom ")[::-1] if mbox else []:
        if marker in part:
            head = part.split(b"\n\n", 1)[0]
            return head.split(b"\n")
    raise AssertionError(f"{marker!r} not delivered:\n{mbox.decode(errors='replace')}")


# ---- submission: the drop directory ------------------------------------------------------------


def test_submission_lands_in_drop_dir_then_mbox(world: World, users: tuple[User, User]) -> None:
    a, _ = users
    r = world.submit(a, ["root"], message("hello from a"))
    assert r.returncode == 0, r.stderr
    assert r.stderr == b""
    drops = world.drops()
    assert len(drops) == 2 and {d[0] for d in drops} == {"D", "E"}, drops
    assert drops[0][1:] == drops[1][1:]
    for name in drops:
        st = os.lstat(world.incoming / name)
        assert stat.S_ISREG(st.st_mode) and st.st_uid == a.uid and stat.S_IMODE(st.st_mode) == 0o600
    assert world.spool_files() == []  # the private spool is out of the submitter's reach
    r = world.run_queue()
    assert r.returncode == 0, r.stderr
    assert world.drops() == []
    lines = received_lines(world.mbox(), b"hello from a")
    assert lines[1].startswith(f"Received: from {a.name} (uid {a.uid})".encode()), lines


def test_dsn_options_travel_through_the_drop(world: World, users: tuple[User, User]) -> None:
    a, _ = users
    r = world.submit(a, ["-N", "never", "-V", "id 1", "bob@remote.example"], message("dsn"))
    assert r.returncode == 0, r.stderr
    assert world.run_queue().returncode == 0  # taken; the closed smarthost defers it
    [q] = [n for n in world.spool_files() if n.startswith("Q")]
    assert (world.spool / q).read_text().endswith("\nDSN: NOTIFY=NEVER ENVID=id+201\n")


def test_other_user_cannot_touch_drop_files(world: World, users: tuple[User, User]) -> None:
    a, b = users
    assert world.submit(a, ["root"], message("secret of a")).returncode == 0
    d, e = (str(world.incoming / n) for n in world.drops())
    inc = str(world.incoming)
    ops: list[list[str]] = [["list incoming", "listdir", inc]]
    for path in (d, e):
        n = os.path.basename(path)
        ops += [
            [f"read {n}", "read", path],
            [f"write {n}", "write", path],
            [f"append {n}", "append", path],
            [f"truncate {n}", "truncate", path],
            [f"rename {n}", "rename", path, f"{inc}/stolen{n}"],
            [f"replace {n}", "replace", path, f"{inc}/forged{n}"],
            [f"unlink {n}", "unlink", path],
            [f"chmod {n}", "chmod", path],
            [f"utime {n}", "utime", path],
            [f"link {n}", "link", path, f"{inc}/linked{n}"],
        ]
    results = world.as_user(b, ops)
    assert results.pop("list incoming") == "EACCES"
    for label, outcome in results.items():
        assert outcome in ("EACCES", "EPERM"), (label, outcome)
    # Untouched: A's mail is delivered as written.
    assert sorted(world.drops()) == sorted(os.path.basename(p) for p in (d, e))
    world.run_queue()
    assert b"secret of a" in world.mbox()


def test_spool_private_after_pickup(world: World, users: tuple[User, User]) -> None:
    a, b = users
    # A remote recipient: the smarthost refuses connections, so the entry stays queued.
    assert world.submit(a, ["someone@remote.example"], message("queued secret")).returncode == 0
    world.run_queue()
    files = world.spool_files()
    assert any(f.startswith("Q") for f in files) and any(f.startswith("M") for f in files), files
    assert world.drops() == []
    ops = [["list spool", "listdir", str(world.spool)]]
    for f in files:
        ops += [[f"read {f}", "read", str(world.spool / f)], [f"unlink {f}", "unlink", str(world.spool / f)]]
    for user in (a, b):
        results = world.as_user(user, ops)
        for label, outcome in results.items():
            assert outcome in ("EACCES", "EPERM"), (user.name, label, outcome)


def test_mailq_as_unprivileged_user(world: World, users: tuple[User, User]) -> None:
    """`mailq` by a user in system mode: the spool is the runner's, so a one-line error (no
    traceback) and nothing of the queued mail."""
    a, b = users
    assert world.submit(a, ["someone@remote.example"], message("queued secret")).returncode == 0
    world.run_queue()
    for user in (a, b):
        r = subprocess.run(
            user.argv(program("mailq")), capture_output=True, env=world.env, cwd="/", timeout=30, check=False
        )
        assert b"someone@remote.example" not in r.stdout + r.stderr
        assert b"Traceback" not in r.stderr, r.stderr.decode()
        assert r.returncode != 0
        assert r.stderr.startswith(b"mailq: ") and r.stderr.count(b"\n") == 1, r.stderr


def test_root_mailq_lists_mail_waiting_in_the_drop_directory(world: World, users: tuple[User, User]) -> None:
    """Without systemd a user's mail waits in the drop directory until the runner comes by: root's
    `mailq` shows it there (state `incoming`), and then as a spool entry once it is taken."""
    a, _ = users
    r = world.submit(
        a, ["someone@remote.example", "other@remote.example"], message("waiting", f"From: {a.name}")
    )
    assert r.returncode == 0, r.stderr
    ident = next(name[1:] for name in world.drops() if name.startswith("E"))

    def mailq(*args: str) -> str:
        r = subprocess.run(
            [program("mailq"), *args], capture_output=True, env=world.env, cwd="/", timeout=30, check=False
        )
        assert r.returncode == 0 and r.stderr == b"", r.stderr
        return r.stdout.decode()

    sender = f"{a.name}@{MAILNAME}"
    assert mailq() == (
        f"ID\t: {ident}.1\nFrom\t: {sender}\nTo\t: someone@remote.example\n--\n"
        f"ID\t: {ident}.2\nFrom\t: {sender}\nTo\t: other@remote.example\n"
    )
    rows = json.loads(mailq("--json"))
    assert [(row["id"], row["state"], row["recipient"]) for row in rows] == [
        (f"{ident}.1", "incoming", "someone@remote.example"),
        (f"{ident}.2", "incoming", "other@remote.example"),
    ]
    assert rows[0]["size"] == os.lstat(world.incoming / f"D{ident}").st_size
    world.run_queue()  # the smarthost refuses: taken into the spool, and deferred
    rows = json.loads(mailq("--json"))
    assert sorted((row["state"], row["recipient"]) for row in rows) == [
        ("deferred", "other@remote.example"),
        ("deferred", "someone@remote.example"),
    ], rows
    assert world.drops() == []


# ---- identity --------------------------------------------------------------------------------


FORGED_RECEIVED = "Received: from root (uid 0)\n\tby mail.example (dma 0.1.0); Thu, 1 Jan 2026 00:00:00 +0000"


def test_identity_comes_from_file_owner_via_sendmail(world: World, users: tuple[User, User]) -> None:
    a, b = users
    r = world.submit(
        a, ["-f", f"{b.name}@{MAILNAME}", "-F", "B", "root"], message("forged via sendmail", FORGED_RECEIVED)
    )
    assert r.returncode == 0, r.stderr
    world.run_queue()
    lines = received_lines(world.mbox(), b"forged via sendmail")
    ours = lines[1]
    assert ours == f"Received: from {a.name} (uid {a.uid})".encode(), lines
    # The forged line is kept below ours, never above it.
    forged_at = lines.index(b"Received: from root (uid 0)")
    assert forged_at > 1


def test_bs_session_gets_the_callers_identity(world: World, users: tuple[User, User]) -> None:
    """`sendmail -bs` as a, claiming b in MAIL FROM and a forged Received: in DATA: a drop like any."""
    a, b = users
    data = message("forged via -bs", FORGED_RECEIVED).replace(b"\n", b"\r\n")
    smtp = b"EHLO x\r\nMAIL FROM:<%s@%s>\r\nRCPT TO:<root>\r\nDATA\r\n%s.\r\nQUIT\r\n"
    r = world.submit(a, ["-bs"], smtp % (b.name.encode(), MAILNAME.encode(), data))
    assert r.returncode == 0 and b"\r\n250 2.0.0 queued as " in r.stdout, (r.stdout, r.stderr)
    assert all(os.lstat(world.incoming / d).st_uid == a.uid for d in world.drops())
    world.run_queue()
    lines = received_lines(world.mbox(), b"forged via -bs")
    assert lines[1] == f"Received: from {a.name} (uid {a.uid})".encode(), lines
    assert lines.index(b"Received: from root (uid 0)") > 1


@pytest.mark.parametrize("claimed", ["root", "dmatest-b"])
def test_identity_comes_from_file_owner_hand_written_drop(
    world: World, users: tuple[User, User], claimed: str
) -> None:
    a, _ = users
    envelope = f"Sender: {claimed}@{MAILNAME}\nRecipient: root\n".encode()
    body = message(f"hand forged as {claimed}", FORGED_RECEIVED.replace("root", claimed, 1))
    world.drop_pair(a, "forged1", envelope, body)
    r = world.run_queue()
    assert r.returncode == 0, r.stderr
    assert world.drops() == []
    lines = received_lines(world.mbox(), f"hand forged as {claimed}".encode())
    assert lines[1] == f"Received: from {a.name} (uid {a.uid})".encode(), lines
    assert lines.index(f"Received: from {claimed} (uid 0)".encode()) > 1


# ---- hostile drops: refused, removed, the valid ones next to them delivered -----------------------


def _plant(world: World, user: User, script: str, *args: str) -> None:
    r = world.user_script(user, script, str(world.incoming), *args)
    assert r.returncode == 0, r.stderr


VALID_ENV = b"Sender: a@mail.example\nRecipient: root\n"


def test_hostile_drops_refused_and_valid_ones_delivered(world: World, users: tuple[User, User]) -> None:
    a, b = users
    secret = world.root / "secret"
    secret.write_text("ROOT-ONLY-SECRET\n")
    os.chmod(secret, 0o600)

    # Valid mail from both users, submitted normally, next to the hostile drops.
    assert world.submit(a, ["root"], message("valid from a")).returncode == 0
    assert world.submit(b, ["root"], message("valid from b")).returncode == 0
    b_data = next(
        n for n in world.drops() if n.startswith("D") and os.lstat(world.incoming / n).st_uid == b.uid
    )

    # A symlink as the message: to /etc/shadow, to the root-only secret, to B's drop file.
    _plant(
        world,
        a,
        """
        import os, sys
        base, secret, bfile = sys.argv[1:4]
        for ident, target in (("shadow", "/etc/shadow"), ("secret", secret), ("bfile", f"{base}/{bfile}")):
            os.symlink(target, f"{base}/Dsym{ident}")
            with open(f"{base}/Esym{ident}", "w") as f:
                f.write("Sender: a@mail.example\\nRecipient: root\\n")
        # A symlink as the envelope, to a valid envelope elsewhere.
        with open(f"{base}/Denvsym", "w") as f:
            f.write("Subject: envsym\\n\\nENVSYM-BODY\\n")
        os.symlink("/etc/passwd", f"{base}/Eenvsym")
        # A hard link: the message has two names.
        with open(f"{base}/Dhard", "w") as f:
            f.write("Subject: hard\\n\\nHARDLINK-BODY\\n")
        os.link(f"{base}/Dhard", f"{base}/xhard")
        with open(f"{base}/Ehard", "w") as f:
            f.write("Sender: a@mail.example\\nRecipient: root\\n")
        # A FIFO as the message and as the envelope (the runner must not block on them).
        os.mkfifo(f"{base}/Dfifo")
        with open(f"{base}/Efifo", "w") as f:
            f.write("Sender: a@mail.example\\nRecipient: root\\n")
        with open(f"{base}/Dfifoenv", "w") as f:
            f.write("Subject: fifoenv\\n\\nFIFOENV-BODY\\n")
        os.mkfifo(f"{base}/Efifoenv")
        # A directory as the message.
        os.mkdir(f"{base}/Ddir")
        with open(f"{base}/Ddirenv", "w") as f:
            f.write("Subject: direnv\\n\\nDIRENV-BODY\\n")
        os.mkdir(f"{base}/Edirenv")
        with open(f"{base}/Edir", "w") as f:
            f.write("Sender: a@mail.example\\nRecipient: root\\n")
        # An envelope without a message.
        with open(f"{base}/Eorphan", "w") as f:
            f.write("Sender: a@mail.example\\nRecipient: root\\n")
        # Envelopes with CR/LF injection, NUL, garbage, two senders, no recipient, no final newline.
        bad = {
            "crlf": "Sender: a@mail.example\\nRecipient: root\\r\\nRCPT TO:<x@evil.example>\\n",
            "cr": "Sender: a@mail.example\\rRecipient: x@evil.example\\nRecipient: root\\n",
            "nul": "Sender: a@mail.example\\nRecipient: ro\\0ot\\n",
            "garbage": "Sender: a@mail.example\\nRecipient: root\\nHELLO THERE\\n",
            "twosenders": "Sender: a@mail.example\\nSender: b@mail.example\\nRecipient: root\\n",
            "norcpt": "Sender: a@mail.example\\n",
            "nonl": "Sender: a@mail.example\\nRecipient: root",
            "badaddr": "Sender: a@mail.example\\nRecipient: x@-bad-.example\\n",
            "ctrl": "Sender: a@mail.example\\x1b[2J\\nRecipient: root\\n",
            "binary": "\\xff\\xfe\\x00garbage",
        }
        for ident, env in bad.items():
            with open(f"{base}/D{ident}", "w") as f:
                f.write(f"Subject: {ident}\\n\\nBAD-{ident.upper()}-BODY\\n")
            with open(f"{base}/E{ident}", "w", encoding="latin-1") as f:
                f.write(env)
        """,
        str(secret),
        b_data,
    )
    # D and E owned by different users: B's message, A's envelope.
    _plant(
        world,
        b,
        """
        import sys
        with open(f"{sys.argv[1]}/Dmixed", "w") as f:
            f.write("Subject: mixed\\n\\nMIXED-BODY\\n")
        """,
    )
    _plant(
        world,
        a,
        """
        import sys
        with open(f"{sys.argv[1]}/Emixed", "w") as f:
            f.write("Sender: a@mail.example\\nRecipient: root\\n")
        """,
    )
    # Root's own hard link to a root-only file (as on a system without protected_hardlinks).
    os.link(secret, world.incoming / "Droothard")
    (world.incoming / "Eroothard").write_text("Sender: a@mail.example\nRecipient: root\n")

    shadow_before = Path("/etc/shadow").read_bytes() if Path("/etc/shadow").exists() else b""
    r = world.run_queue()
    assert r.returncode == 0, r.stderr

    mbox = world.mbox()
    assert b"valid from a" in mbox and b"valid from b" in mbox, mbox.decode(errors="replace")
    for forbidden in (b"ROOT-ONLY-SECRET", b"root:", b"BODY", b"evil.example"):
        assert forbidden not in mbox, forbidden
    if shadow_before:
        assert Path("/etc/shadow").read_bytes() == shadow_before
    # Everything was consumed: taken, or refused and removed; the second name of A's hard link
    # too (not a drop name). Nothing was followed: the secret keeps its one name.
    # The messages whose envelope was not a file wait as lone halves, removed after drop.STALE.
    assert world.drops() == ["Ddirenv", "Denvsym", "Dfifoenv"]
    assert secret.read_text() == "ROOT-ONLY-SECRET\n" and secret.stat().st_nlink == 1
    assert sorted(os.listdir(world.mail)) == ["dmatest-a", "root"]
    # The two valid messages, and root's notice about its own hard link; A is told of each of its
    # refused drops (a notice naming it and why), and gets nothing of anyone's content.
    assert mbox.count(b"\nFrom ") + mbox.startswith(b"From ") == 3
    assert b"Subject: Mail not accepted" in mbox and b"Droothard is not a plain file" in mbox
    notices = world.mbox(a.name)
    for ident in (
        "symshadow",
        "symsecret",
        "symbfile",
        "hard",
        "fifo",
        "dir",
        "mixed",
        "crlf",
        "nul",
        "norcpt",
    ):
        assert f"drop {ident} was not accepted".encode() in notices, ident
    for forbidden in (b"ROOT-ONLY-SECRET", b"root:x", b"BODY", b"valid from b"):
        assert forbidden not in notices, forbidden


def test_symlink_planted_in_mboxdir_is_not_followed(world: World, users: tuple[User, User]) -> None:
    a, b = users
    target = world.root / "precious"
    target.write_text("precious root file\n")
    os.chmod(target, 0o644)
    os.symlink(target, world.mail / b.name)
    # A hard link planted as an mbox, too (a second name of a root file).
    other = world.root / "precious2"
    other.write_text("second precious\n")
    os.link(other, world.mail / a.name)
    assert world.submit(a, [b.name, a.name], message("to the planted mboxes")).returncode == 0
    r = world.run_queue()
    assert r.returncode == 0, r.stderr
    assert target.read_text() == "precious root file\n"
    assert other.read_text() == "second precious\n"
    assert os.path.islink(world.mail / b.name)


def test_maildir_parent_symlink_is_not_followed(world: World, users: tuple[User, User]) -> None:
    """A user who owns a directory on the Maildir path replaces an inner directory by a symlink to a
    root-only place: root's delivery must not create anything there."""
    a, _ = users
    homes = world.root / "homes"
    homes.mkdir()
    os.chmod(homes, 0o755)
    home = homes / a.name
    home.mkdir()
    os.chown(home, a.uid, a.gid)
    rootonly = world.root / "rootonly"
    rootonly.mkdir(mode=0o700)
    world.write_conf(f"MAILDIR {homes}/%u/mail/Maildir")
    r = world.user_script(
        a, "import os, sys; os.symlink(sys.argv[1], sys.argv[2])", str(rootonly), str(home / "mail")
    )
    assert r.returncode == 0, r.stderr
    assert world.submit(a, [a.name], message("maildir via symlink")).returncode == 0
    r = world.run_queue()
    assert r.returncode == 0, r.stderr
    assert os.listdir(rootonly) == [], "root delivered through the user's symlink into a root-only directory"


# ---- recipients that look like paths -----------------------------------------------------------


@pytest.mark.parametrize("rcpt", ["../../etc/x", "../x", "/tmp/x", ".x", "root/../../x"])
def test_path_like_recipient_refused_at_submission(world: World, users: tuple[User, User], rcpt: str) -> None:
    a, _ = users
    r = world.submit(a, [rcpt], message("path recipient"))
    assert r.returncode != 0
    assert b"Traceback" not in r.stderr
    assert world.drops() == []


def test_path_like_recipients_in_hand_written_drop_and_alias(world: World, users: tuple[User, User]) -> None:
    a, _ = users
    # The admin's alias cannot turn a name into a path either.
    world.aliases.write_text("evil: ../../escape\nrelay: /tmp/escape-alias\n")
    for i, rcpt in enumerate(["../../escape", "../escape", "/tmp/escape-drop", ".escape", "evil", "relay"]):
        world.drop_pair(
            a, f"path{i}", f"Sender: a@mail.example\nRecipient: {rcpt}\n".encode(), message(f"PATH{i}")
        )
    world.drop_pair(a, "pathok", VALID_ENV, message("path ok"))
    r = world.run_queue()
    assert r.returncode == 0, r.stderr
    assert world.drops() == []
    assert b"path ok" in world.mbox()
    assert b"PATH" not in world.mbox()
    # A is told about each refused drop; nothing reached a path.
    assert sorted(os.listdir(world.mail)) == ["dmatest-a", "root"]
    assert world.mbox(a.name).count(b"Subject: Mail not accepted") == 6
    for p in ("/tmp/escape-drop", "/tmp/escape-alias", str(world.root / "escape"), "/escape"):
        assert not os.path.exists(p), p


# ---- auth.conf and the user-mode spool ---------------------------------------------------------


def test_doctor_warns_about_world_readable_auth_conf(world: World) -> None:
    auth = world.root / "auth.conf"
    auth.write_text("user|127.0.0.1:secret\n")
    world.write_conf(f"AUTHPATH {auth}")
    for mode, warned in ((0o644, True), (0o640, True), (0o600, False)):
        os.chmod(auth, mode)
        r = subprocess.run(
            [program("dma"), "doctor"],
            capture_output=True,
            env=world.env,
            cwd="/",
            timeout=60,
            check=False,
        )
        out = r.stdout.decode() + r.stderr.decode()
        assert "Traceback" not in out
        assert (f"has mode {mode:04o}: readable by group or others" in out) == warned, (mode, out)
        assert "secret" not in out.replace(str(auth), "")


def test_user_mode_spool_private(world: World, users: tuple[User, User]) -> None:
    a, b = users
    home = world.root / "home-a"
    home.mkdir()
    os.chown(home, a.uid, a.gid)
    os.chmod(home, 0o755)  # a permissive home: the state directory itself must be private
    env = {"HOME": str(home), "DMA_CONF": str(world.root / "none.conf")}
    # -bq: queue only (no runner left behind as A).
    r = world.submit(a, ["-bq", "someone@remote.example"], message("user mode secret"), env=env)
    assert r.returncode == 0, r.stderr
    state = home / ".local" / "state" / "dma"
    spool = state / "spool"
    assert spool.is_dir()
    for d in (spool,):
        st = d.stat()
        assert st.st_uid == a.uid
        assert stat.S_IMODE(st.st_mode) & 0o077 == 0, (d, oct(st.st_mode))
    ops = [["list spool", "listdir", str(spool)]]
    for f in os.listdir(spool):
        ops.append([f"read {f}", "read", str(spool / f)])
    results = world.as_user(b, ops)
    for label, outcome in results.items():
        assert outcome == "EACCES", (label, outcome)
