"""`dma queue ...`: hold, release, delete, bounce and show real queue entries, with the real programs."""

from __future__ import annotations

import fcntl
import json
import os
import subprocess
from collections.abc import Iterator

import pytest
from dma_fixtures import DmaEnv
from smtp_servers import Smtpd

MESSAGE = b"Subject: queue control\n\nthe body of the message\n"


@pytest.fixture
def server(dma_env: DmaEnv) -> Iterator[Smtpd]:
    """A sink the dma_env relays to."""
    with Smtpd() as srv:
        dma_env.smarthost = f"SMARTHOST 127.0.0.1\nPORT {srv.port}"
        dma_env.write_conf()
        yield srv


def queue(env: DmaEnv, *args: str) -> subprocess.CompletedProcess[bytes]:
    return env.run(["queue", *args], prog="dma")


def enqueue(env: DmaEnv, *rcpts: str) -> str:
    """Queue one message (sendmail -bq); returns its message id."""
    before = {e.message_id for e in env.entries()}
    r = env.run(["-bq", *rcpts], MESSAGE)
    assert r.returncode == 0, r.stderr
    [mid] = {e.message_id for e in env.entries()} - before
    return mid


def states(env: DmaEnv) -> dict[str, str]:
    return {e.id: e.state for e in env.entries()}


def run_queue(env: DmaEnv) -> None:
    r = env.run(["-q", "-D"], prog="dma")
    assert r.returncode == 0, r.stderr


def delivered(server: Smtpd) -> list[str]:
    return sorted(r for m in server.handler.messages for r in m.rcpt_tos)


def test_held_entries_are_not_delivered_until_released(dma_env: DmaEnv, server: Smtpd) -> None:
    mid = enqueue(dma_env, "a@remote.test", "b@remote.test")
    other = enqueue(dma_env, "c@remote.test")
    r = queue(dma_env, "hold", mid)
    assert r.returncode == 0, r.stderr
    assert r.stdout.decode().splitlines() == [
        f"{mid}.1: held (<root@mail.example> -> a@remote.test)",
        f"{mid}.2: held (<root@mail.example> -> b@remote.test)",
    ]
    assert states(dma_env) == {f"{mid}.1": "held", f"{mid}.2": "held", f"{other}.1": ""}
    assert {q["State"] for q in dma_env.q_files().values() if q["ID"].startswith(mid)} == {"held"}
    assert queue(dma_env, "hold", f"{mid}.1").stdout.decode().startswith(f"{mid}.1: already held")

    run_queue(dma_env)
    assert delivered(server) == ["c@remote.test"]
    assert states(dma_env) == {f"{mid}.1": "held", f"{mid}.2": "held"}
    [row] = [x for x in json.loads(queue(dma_env, "list", "--json").stdout) if x["id"] == f"{mid}.1"]
    assert row["state"] == "held"

    # Release one entry: only that one goes.
    r = queue(dma_env, "release", f"{mid}.2")
    assert r.returncode == 0, r.stderr
    assert r.stdout.decode() == f"{mid}.2: released, due now (<root@mail.example> -> b@remote.test)\n"
    [entry] = [e for e in dma_env.entries() if e.id == f"{mid}.2"]
    assert (entry.state, entry.next_attempt) == ("", 0)
    run_queue(dma_env)
    assert delivered(server) == ["b@remote.test", "c@remote.test"]
    assert states(dma_env) == {f"{mid}.1": "held"}

    assert queue(dma_env, "release", mid).returncode == 0
    run_queue(dma_env)
    assert delivered(server) == ["a@remote.test", "b@remote.test", "c@remote.test"]
    assert dma_env.entries() == []


def test_release_makes_a_deferred_entry_due_now(dma_env: DmaEnv) -> None:
    mid = enqueue(dma_env, "a@remote.test")
    run_queue(dma_env)  # the default smarthost refuses: deferred
    [entry] = dma_env.entries()
    assert entry.attempts == 1 and entry.next_attempt > 0 and entry.last_error
    assert queue(dma_env, "release", mid).stdout.decode().startswith(f"{mid}.1: due now")
    [entry] = dma_env.entries()
    assert (entry.attempts, entry.next_attempt, entry.state) == (1, 0, "")
    assert entry.last_error  # kept: it says why the entry is still here
    assert os.path.exists(dma_env.spool / "wake"), "a running runner is woken"


def test_release_an_entry_held_for_the_postmaster(dma_env: DmaEnv, server: Smtpd) -> None:
    # A bounce (null sender) that failed: held by settle(), released by the postmaster.
    server.handler.rcpt_replies["gone@remote.test"] = "550 5.1.1 no such user"
    r = dma_env.run(["-bq", "-f", "", "gone@remote.test"], MESSAGE)
    assert r.returncode == 0, r.stderr
    run_queue(dma_env)
    [entry] = dma_env.entries()
    assert entry.state == "held" and "held:" in entry.last_error
    del server.handler.rcpt_replies["gone@remote.test"]
    r = queue(dma_env, "release", entry.id)
    assert r.stdout.decode() == f"{entry.id}: released, due now (<> -> gone@remote.test)\n"
    run_queue(dma_env)
    assert delivered(server) == ["gone@remote.test"]
    assert dma_env.entries() == []


def test_bounce_sends_a_bounce_to_the_sender(dma_env: DmaEnv, server: Smtpd) -> None:
    mid = enqueue(dma_env, "a@remote.test", "b@remote.test")
    r = queue(dma_env, "bounce", mid)
    assert r.returncode == 0, r.stderr
    assert r.stdout.decode().splitlines() == [
        f"{mid}.1: marked failed, to be bounced on the next queue run (<root@mail.example> -> a@remote.test)",
        f"{mid}.2: marked failed, to be bounced on the next queue run (<root@mail.example> -> b@remote.test)",
    ]
    for q in dma_env.q_files().values():
        assert (q["State"], q["Last-Error"], q.get("Next-Attempt", "0")) == (
            "failed",
            "bounced by the administrator",
            "0",
        )
    assert os.path.exists(dma_env.spool / "wake")
    run_queue(dma_env)
    assert delivered(server) == [], "bounced entries are not delivered"
    assert dma_env.entries() == []
    mbox = dma_env.mbox("root")
    assert b"From MAILER-DAEMON" in mbox or b"MAILER-DAEMON@mail.example" in mbox
    assert mbox.count(b"bounced by the administrator") >= 2
    assert b"a@remote.test" in mbox and b"b@remote.test" in mbox
    assert b"Subject: queue control" in mbox


def test_delete_removes_q_and_m_files(dma_env: DmaEnv) -> None:
    mid = enqueue(dma_env, "a@remote.test", "b@remote.test")
    keep = enqueue(dma_env, "c@remote.test")
    r = queue(dma_env, "delete", f"{mid}.1")
    assert r.returncode == 0, r.stderr
    assert r.stdout.decode() == f"{mid}.1: deleted (<root@mail.example> -> a@remote.test)\n"
    assert not any(mid + ".1" in name for name in dma_env.files())
    assert f"Q{mid}.2" in dma_env.files() and f"M{mid}.2" in dma_env.files()
    r = queue(dma_env, "delete", mid)
    assert r.stdout.decode() == f"{mid}.2: deleted (<root@mail.example> -> b@remote.test)\n"
    assert [n for n in dma_env.files() if n[0] in "QM"] == [f"M{keep}.1", f"Q{keep}.1"]


def test_show_prints_the_envelope_and_the_message(dma_env: DmaEnv) -> None:
    mid = enqueue(dma_env, "a@remote.test", "b@remote.test")
    r = queue(dma_env, "show", f"{mid}.2")
    assert r.returncode == 0, r.stderr
    head, _, message = r.stdout.partition(b"\n\n")
    fields = dict(line.split(": ", 1) for line in head.decode().splitlines())
    assert fields["ID"] == f"{mid}.2"
    assert fields["Sender"] == "<root@mail.example>"
    assert fields["Recipient"] == "b@remote.test"
    assert fields["State"] == "queued" and fields["Attempts"] == "0"
    assert message == dma_env.message()
    assert b"\nSubject: queue control\n" in message
    assert message.endswith(b"\n\nthe body of the message\n")

    # A message id: every envelope, then the message once.
    r = queue(dma_env, "show", mid)
    assert r.returncode == 0, r.stderr
    envelopes, _, message = r.stdout.partition(b"\n\n")
    assert envelopes.count(b"ID: ") == 2 and envelopes.count(b"Recipient: ") == 2
    assert message == dma_env.message()


def test_a_locked_entry_is_reported_and_left_alone(dma_env: DmaEnv) -> None:
    mid = enqueue(dma_env, "a@remote.test", "b@remote.test")
    fd = os.open(dma_env.spool / f"Q{mid}.1", os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        for action in ("hold", "release", "delete", "bounce"):
            r = queue(dma_env, action, f"{mid}.1")
            assert r.returncode == 75, (action, r.stderr)
            assert r.stderr.decode() == f"dma queue: {mid}.1: being delivered right now (locked); try again\n"
            assert r.stdout == b""
        # The message id: the free entry is done, the locked one reported.
        r = queue(dma_env, "hold", mid)
        assert r.returncode == 75
        assert r.stdout.decode() == f"{mid}.2: held (<root@mail.example> -> b@remote.test)\n"
        # Reading does not need the lock.
        assert queue(dma_env, "show", f"{mid}.1").returncode == 0
    finally:
        os.close(fd)
    assert states(dma_env) == {f"{mid}.1": "", f"{mid}.2": "held"}
    assert queue(dma_env, "hold", f"{mid}.1").returncode == 0


def test_unknown_ids_exit_66_and_the_others_are_done(dma_env: DmaEnv) -> None:
    mid = enqueue(dma_env, "a@remote.test")
    r = queue(dma_env, "hold", "0123abc", f"{mid}.1", f"{mid}.9")
    assert r.returncode == 66
    assert r.stderr.decode().splitlines() == [
        "dma queue: 0123abc: no such queue entry or message",
        f"dma queue: {mid}.9: no such queue entry or message",
    ]
    assert states(dma_env) == {f"{mid}.1": "held"}
    assert queue(dma_env, "show", "nothing").returncode == 66
    assert queue(dma_env, "delete", "../../etc/passwd").returncode == 66


def test_list_is_mailq(dma_env: DmaEnv) -> None:
    enqueue(dma_env, "a@remote.test", "b@remote.test")
    for args in ([], ["--json"]):
        mine = queue(dma_env, "list", *args)
        mailq = dma_env.run(args, prog="mailq")
        assert mine.returncode == 0 and mine.stdout == mailq.stdout
    assert len(json.loads(queue(dma_env, "list", "--json").stdout)) == 2


def test_config_option(dma_env: DmaEnv) -> None:
    enqueue(dma_env, "a@remote.test")
    other = dma_env.write_conf(path=dma_env.root / "other.conf", spool=dma_env.root / "other-spool")
    (dma_env.root / "other-spool").mkdir()
    assert queue(dma_env, "-C", str(other), "list").stdout == b"Mail queue is empty\n"
    assert queue(dma_env, "list", "-C", str(other)).stdout == b"Mail queue is empty\n"
    assert queue(dma_env, "list").stdout.startswith(b"ID\t: ")


@pytest.mark.parametrize(
    "args", [[], ["frobnicate"], ["show"], ["show", "a", "b"], ["hold"], ["list", "--xml"], ["-C"]]
)
def test_usage_errors(dma_env: DmaEnv, args: list[str]) -> None:
    r = queue(dma_env, *args)
    assert r.returncode == 64, r.stderr
    assert b"usage: dma queue" in r.stderr
