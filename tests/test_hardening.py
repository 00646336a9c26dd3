"""Issue 10, findings 2, 4 and 6, against the real programs: a user who stops their own Maildir
delivery cannot stall the runner; nothing an envelope holds can add an ESMTP parameter, whichever
way it came in; and the runner's commands end with one line, never a traceback.

System mode reuses test_system_mode.py's real users and root-owned world.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import test_system_mode
from conftest import in_private_namespace
from dma import _native, api
from dma.errors import EX_DATAERR, Fatal
from dma_fixtures import DmaEnv, one_line_error, program
from smtp_servers import Smtpd
from test_system_mode import User, World, message

users, world = test_system_mode.users, test_system_mode.world  # its fixtures, used here too

AUTH_SENDER = "rt_a@x> AUTH=<ceo@corp.example"
NOTIFY_RCPT = "b@remote.example> NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;ceo@corp.example"


@pytest.fixture
def smtpd() -> Iterator[Smtpd]:
    with Smtpd() as server:
        yield server


def seen_by(server: Smtpd) -> str:
    """Everything of the envelopes the server took, as one string."""
    got = [*server.handler.mails]
    for m in server.handler.messages:
        got += [m.mail_from, *m.mail_options, *m.rcpt_tos]
    return " ".join(got)


# ---- finding 4: one address check for every way in -------------------------------------------


@pytest.mark.parametrize(
    "args,env",
    [
        (["ok@remote.example"], {"EMAIL": "a@x> AUTH=<ceo@corp.example>"}),
        (["ok@remote.example"], {"EMAIL": "a@x> AUTH=<ceo@corp.example"}),
        (["-f", AUTH_SENDER, "ok@remote.example"], {}),
        ([NOTIFY_RCPT], {}),
        (["-t"], {}),
    ],
    ids=["EMAIL", "EMAIL-open", "-f", "recipient", "-t"],
)
def test_no_way_in_adds_an_esmtp_parameter(
    dma_env: DmaEnv, smtpd: Smtpd, args: list[str], env: dict[str, str]
) -> None:
    dma_env.smarthost = f"SMARTHOST 127.0.0.1\nPORT {smtpd.port}"
    dma_env.write_conf()
    data = b"To: ok@x\\>\\ NOTIFY=SUCCESS@corp.example\nSubject: x\n\nbody\n"
    r = dma_env.run(["-D", *args], data, env=env)
    assert r.returncode == EX_DATAERR, r.stderr
    assert "invalid" in one_line_error(r)
    assert dma_env.entries() == [] and seen_by(smtpd) == ""


def test_the_python_api_takes_the_same_check(dma_env: DmaEnv) -> None:
    for kw in ({"sender": AUTH_SENDER, "recipients": "ok@remote.example"}, {"recipients": NOTIFY_RCPT}):
        with pytest.raises(Fatal) as e:
            api.submit(b"Subject: x\n\nbody\n", config=str(dma_env.conf), **kw)  # type: ignore[arg-type]
        assert e.value.code == EX_DATAERR
    assert dma_env.entries() == []


def test_hand_written_drop_cannot_add_an_esmtp_parameter(
    world: World, users: tuple[User, User], smtpd: Smtpd
) -> None:
    a, _ = users
    world.conf.write_text(world.conf.read_text().replace("PORT ", f"PORT {smtpd.port}\n#", 1))
    for ident, sender, rcpt in (
        ("auth", AUTH_SENDER, "ok@remote.example"),
        ("notify", "a@mail.example", NOTIFY_RCPT),
        ("good", "a@mail.example", "ok@remote.example"),
    ):
        world.drop_pair(a, ident, f"Sender: {sender}\nRecipient: {rcpt}\n".encode(), message(ident))
    world.run_queue()
    assert [(m.mail_from, m.rcpt_tos) for m in smtpd.handler.messages] == [
        ("a@mail.example", ["ok@remote.example"])
    ]
    assert "ceo@" not in seen_by(smtpd) and "AUTH=" not in seen_by(smtpd)
    for e in _native.scan_queue(str(world.spool)):
        assert "ceo@" not in e.sender + e.recipient, e


# ---- finding 6: one line and a sysexits code, never a traceback -------------------------------


def run_as(world: World, user: User, *argv: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        user.argv(program(argv[0]), *argv[1:]), capture_output=True, env=world.env, cwd="/", timeout=60
    )


@pytest.mark.parametrize(
    "argv,code",
    [
        (["dma", "queue", "show", "ID"], 77),
        (["dma", "queue", "delete", "ID"], 77),
        (["dma", "queue", "hold", "ID"], 77),
        (["sendmail", "-q"], 73),
        (["sendmail", "-D", "-q"], 73),
        (["dma", "serve"], 73),
    ],
)
def test_runner_commands_as_an_unprivileged_user_say_one_line(
    world: World, users: tuple[User, User], argv: list[str], code: int
) -> None:
    a, _ = users
    assert world.submit(a, ["someone@remote.example"], message("queued")).returncode == 0
    world.run_queue()
    [entry] = _native.scan_queue(str(world.spool))
    r = run_as(world, a, *[entry.id if word == "ID" else word for word in argv])
    assert (r.returncode, r.stdout) == (code, b""), r.stderr.decode()
    assert "Traceback" not in one_line_error(r, argv[0])
    assert [e.id for e in _native.scan_queue(str(world.spool))] == [entry.id]


READ_ONLY_SERVE = """
import json, subprocess, sys
spool, conf, dma = sys.argv[1:4]
subprocess.run(["mount", "--bind", spool, spool], check=True)
subprocess.run(["mount", "-o", "remount,bind,ro", spool], check=True)
r = subprocess.run([dma, "serve", "-C", conf], capture_output=True, text=True, timeout=60)
print(json.dumps({"code": r.returncode, "stderr": r.stderr}))
"""


def test_serve_on_a_read_only_spool_says_one_line(dma_env: DmaEnv) -> None:
    report = in_private_namespace(READ_ONLY_SERVE, str(dma_env.spool), str(dma_env.conf), program("dma"))
    assert report["code"] == 73, report
    assert report["stderr"].startswith("dma: ") and report["stderr"].count("\n") == 1, report
    assert "Read-only file system" in report["stderr"], report


# ---- finding 2: a user who stops their own delivery stalls nothing -----------------------------

STOPPER = """
import os, signal, time
end = time.monotonic() + 60
while time.monotonic() < end:  # stop every process of ours (but this one) as soon as it exists
    try:
        os.kill(-1, signal.SIGSTOP)
    except OSError:
        pass
"""


def processes_of(uid: int) -> list[int]:
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            if os.stat(f"/proc/{pid}").st_uid == uid:
                found.append(int(pid))
        except FileNotFoundError:
            pass
    return found


def foreground_run(world: World) -> subprocess.Popen[bytes]:
    """`sendmail -D -q` as root, as World.run_queue does it."""
    argv = [program("sendmail"), "-D", "-q"]
    return subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=world.env, cwd="/")


def stopped_child_fds(runner: subprocess.Popen[bytes], user: User, stopper: int) -> list[str]:
    """What the stopped delivery process of `user` holds open, once it is stopped."""
    while runner.poll() is None:
        for pid in processes_of(user.uid):
            try:
                if (
                    pid != stopper
                    and Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "T"
                ):
                    return sorted(os.readlink(f"/proc/{pid}/fd/{fd}") for fd in os.listdir(f"/proc/{pid}/fd"))
            except FileNotFoundError:
                pass
        time.sleep(0.01)
    return []


def test_a_stopped_maildir_delivery_is_killed_and_deferred(world: World, users: tuple[User, User]) -> None:
    a, b = users
    homes = world.root / "homes"
    homes.mkdir(mode=0o755)
    for user in users:
        (homes / user.name).mkdir()
        os.chown(homes / user.name, user.uid, user.gid)
    world.write_conf(f"MAILDIR {homes}/%u/Maildir", "TIMEOUT 3")
    big = message("to a " + "x" * (16 << 20))  # long enough a copy to be caught and stopped
    assert world.submit(a, [a.name], big).returncode == 0
    assert world.submit(b, [b.name], message("to b")).returncode == 0
    stopper = subprocess.Popen(a.argv(sys.executable, "-c", STOPPER), cwd="/")
    try:
        t0 = time.monotonic()
        runner = foreground_run(world)
        fds = stopped_child_fds(runner, a, stopper.pid)
        _, err = runner.communicate(timeout=30)
        elapsed = time.monotonic() - t0
    finally:
        stopper.kill()
        stopper.wait()
        for pid in processes_of(a.uid):  # what a runner left behind, before this was fixed
            os.kill(pid, signal.SIGKILL)
    assert runner.returncode == 0 and elapsed < 15, (elapsed, err.decode())
    [entry] = _native.scan_queue(str(world.spool))
    assert entry.recipient == a.name and "(TIMEOUT): killed" in entry.last_error, entry.last_error
    # Of the runner's files it held the message only: no lock, no queue entry.
    assert {f for f in fds if f.startswith(f"{world.spool}/")} == {f"{world.spool}/M{entry.id}"}, fds
    assert processes_of(a.uid) == []  # the stopped child is gone
    assert b"to b" in b"".join(p.read_bytes() for p in (homes / b.name / "Maildir/new").iterdir())
    # The next run is not blocked, and delivers what was deferred.
    second = foreground_run(world)
    second.communicate(timeout=30)
    assert second.returncode == 0
    assert _native.scan_queue(str(world.spool)) == []
    assert len(os.listdir(homes / a.name / "Maildir/new")) == 1
