"""The everyday path (docs/runner.md): a program runs `sendmail` once per message, with immediate
delivery. The runner the first call starts lingers LINGER seconds with its connection open, wakes
at once (inotify) when the next message is queued, and no slow neighbour holds the others up:
a tarpitting server, a trickled TLS handshake or a user's locked mbox.

Real programs, a recording aiosmtpd sink (tests/sink.py) and raw socket servers on loopback.
"""

from __future__ import annotations

import fcntl
import os
import signal
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from dma import _native
from sink import Sink
from smtp_servers import Peer, RawServer
from test_runner import World, wait_until
from test_runner import sink as sink


@pytest.fixture
def everyday(tmp_path: Path, sink: Sink) -> Iterator[World]:
    w = World(tmp_path, sink)
    w.configure("LINGER 3", "HOST_CONCURRENCY 1")  # one connection, so that its reuse shows
    yield w
    for pid in runner_holders(w):
        os.kill(pid, signal.SIGKILL)


def runner_holders(world: World) -> list[int]:
    """The runner, while it holds the spool's lock: the live processes naming our dma.conf."""
    fd = os.open(world.spool / "lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return world.runner_pids()
    finally:
        os.close(fd)
    return []


def send(world: World, rcpt: str, mid: str) -> float:
    """One `sendmail` with immediate delivery; returns when it came back."""
    world.submit(rcpt, mid=mid, queue_only=False)
    return time.time()


def test_a_burst_shares_one_runner_and_one_connection(everyday: World, sink: Sink) -> None:
    returned = {}
    for i in range(10):
        returned[f"<b{i}@t>"] = send(everyday, "a@remote.example", f"<b{i}@t>")
    assert sink.wait_for(lambda: len(sink.messages()) == 10, timeout=10)
    assert sink.connections == 1
    assert len({m.connection for m in sink.messages()}) == 1
    # Woken at once, not by a poll: each message reached the server soon after its sendmail.
    late = [m.at - returned[m.message_id or ""] for m in sink.messages()]
    assert max(late) < 0.5, late
    [pid] = runner_holders(everyday)
    # A background process in its own session, without a terminal.
    stat = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    assert (int(stat[3]), int(stat[4])) == (pid, 0)  # session id, tty_nr
    # It lingers LINGER seconds after the last delivery, then QUITs and exits.
    assert wait_until(lambda: not runner_holders(everyday), timeout=3 + 3)
    assert time.time() - max(m.at for m in sink.messages()) > 2.5
    assert everyday.queue_files() == []
    # The delivered journal, replayed once rather than after each message, went before the runner.
    assert [n for n in everyday.files() if n.startswith("delivered")] == []


def test_a_call_that_finds_the_runner_lingering_does_not_load_it(everyday: World, sink: Sink) -> None:
    everyday.configure("LINGER 60")
    send(everyday, "a@remote.example", "<l1@t>")
    assert sink.wait_for(lambda: len(sink.messages()) == 1, timeout=10)
    assert runner_holders(everyday)
    # The second call, in a Python that reports what it imported: the runner's lock is held, so
    # the call only queues (the commit wakes the runner) and loads nothing of the runner's.
    code = "import sys; from dma import cli; "
    code += "c = cli.main(sys.argv[1:]); print(c, 'dma.mail.queue' in sys.modules)"
    msg = b"Message-Id: <l2@t>\nSubject: two\n\nhello\n"
    args = ["sendmail", "-C", str(everyday.conf), "-f", "root", "a@remote.example"]
    r = everyday.run(["-c", code, *args], msg, prog=sys.executable)
    assert (r.returncode, r.stdout.split()) == (0, [b"0", b"False"]), r
    assert sink.wait_for(lambda: len(sink.messages()) == 2, timeout=10)
    assert sink.connections == 1


def test_the_runner_sleeps_through_files_that_are_no_work(tmp_path: Path) -> None:
    spool = _native.Spool(str(tmp_path))

    def record() -> None:  # what the runner's own records and a message being written look like
        time.sleep(0.05)
        (tmp_path / "tmp_Q1").write_text("x")
        os.rename(tmp_path / "tmp_Q1", tmp_path / "Q1")

    writer = threading.Thread(target=record)
    writer.start()
    start = time.monotonic()
    assert spool.wait(0.5) == (False, False)
    assert time.monotonic() - start >= 0.5
    writer.join()
    (tmp_path / "tmp_1").write_text("x")
    os.rename(tmp_path / "tmp_1", tmp_path / "M1.1")  # a committed message: work, at once
    assert spool.wait(30) == (True, False)


def test_sigterm_ends_a_lingering_runner_cleanly(everyday: World, sink: Sink) -> None:
    everyday.configure("LINGER 60")
    send(everyday, "a@remote.example", "<t1@t>")
    assert sink.wait_for(lambda: len(sink.messages()) == 1, timeout=10)
    [pid] = runner_holders(everyday)
    os.kill(pid, signal.SIGTERM)
    assert wait_until(lambda: not runner_holders(everyday) and not os.path.exists(f"/proc/{pid}/status"), 3)
    # The next message starts a new runner.
    send(everyday, "a@remote.example", "<t2@t>")
    assert sink.wait_for(lambda: len(sink.messages()) == 2, timeout=10)
    assert sink.connections == 2


def drop_after_one(peer: Peer) -> None:
    """A server that takes one message, then hangs up without a word (an idle timeout)."""
    peer.send("220 raw.test ESMTP")
    while line := peer.readline():
        verb = line[:4].upper()
        if verb == b"DATA":
            peer.send("354 go ahead")
            peer.read_data()
            peer.send("250 2.0.0 queued")
            return
        peer.send("221 bye" if verb == b"QUIT" else "250 ok")


def test_a_dropped_cached_connection_is_opened_again(everyday: World) -> None:
    with RawServer(drop_after_one) as srv:
        everyday.smarthost = f"SMARTHOST 127.0.0.1\nPORT {srv.port}"
        everyday.configure("LINGER 5")
        send(everyday, "a@remote.example", "<d1@t>")
        assert wait_until(lambda: len(srv.peers) == 1 and len(srv.peers[0].data) == 1, 10)
        time.sleep(0.3)
        send(everyday, "a@remote.example", "<d2@t>")
        assert wait_until(lambda: sum(len(p.data) for p in srv.peers) == 2, 10)
        assert len(srv.peers) == 2
        assert srv.peers[1].data and not srv.errors
        assert wait_until(lambda: everyday.queue_files() == [], 5)


def tarpit_greeting(peer: Peer) -> None:
    """A greeting trickled one byte a second: every read returns in time, the reply never does."""
    for byte in b"220 slow.test ESMTP tarpit\r\n":
        peer.send(bytes([byte]))
        time.sleep(1)


def tarpit_handshake(peer: Peer) -> None:
    """STARTTLS accepted, then the 'handshake' trickled one byte a second."""
    peer.send("220 slow.test ESMTP")
    while line := peer.readline():
        if line.upper().startswith(b"EHLO"):
            peer.send("250-slow.test\r\n250 STARTTLS")
        elif line.upper().startswith(b"STARTTLS"):
            peer.send("220 go ahead")
            for byte in bytes([22, 3, 3, 0, 90]) + b"\0" * 60:
                peer.send(bytes([byte]))
                time.sleep(1)
            return


@pytest.mark.parametrize("tarpit", [tarpit_greeting, tarpit_handshake])
def test_a_tarpit_holds_up_nobody(everyday: World, sink: Sink, tarpit) -> None:  # type: ignore[no-untyped-def]
    with RawServer(tarpit) as slow:
        everyday.configure("LINGER 1", "TIMEOUT 4", f"ROUTE to:slow.example 127.0.0.1:{slow.port} starttls")
        start = time.time()
        for i in range(3):
            send(everyday, f"u{i}@slow.example", f"<slow{i}@t>")
        time.sleep(1)
        sent = send(everyday, "a@remote.example", "<fast@t>")
        assert sink.wait_for(lambda: len(sink.messages()) == 1, timeout=10)
        assert sink.messages()[0].at - sent < 1.0
        # Each tarpitted session ends by its overall deadline (TIMEOUT 4), not byte by byte.
        assert wait_until(lambda: all(e.attempts == 1 for e in everyday.entries()) and everyday.entries(), 15)
        assert time.time() - start < 4 + 5
        assert all("timeout" in e.last_error for e in everyday.entries())


def test_a_locked_mbox_holds_up_nobody(everyday: World, sink: Sink) -> None:
    mbox = everyday.mboxdir / "root"
    fd = os.open(mbox, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        start = time.time()
        send(everyday, "root", "<local@t>")
        sent = send(everyday, "a@remote.example", "<remote@t>")
        assert sink.wait_for(lambda: len(sink.messages()) == 1, timeout=10)
        assert sink.messages()[0].at - sent < 1.0
        # Given up after a short wait for the lock, and left for a later retry.
        assert wait_until(lambda: [e.attempts for e in everyday.entries()] == [1], 10)
        assert time.time() - start < 3 + 3
        assert "lock" in everyday.entries()[0].last_error
    finally:
        os.close(fd)
    everyday.dma("-q", "-D")
    assert b"<local@t>" in mbox.read_bytes()


def test_a_flood_of_wakes_does_not_keep_the_runner_alive(everyday: World, sink: Sink) -> None:
    everyday.configure("LINGER 1")
    send(everyday, "a@remote.example", "<f1@t>")
    assert sink.wait_for(lambda: len(sink.messages()) == 1, timeout=10)
    delivered = time.time()
    wake = everyday.spool / "wake"
    while time.time() - delivered < 4 and runner_holders(everyday):
        wake.touch()  # what `sendmail` does to wake a runner, without any mail
        time.sleep(0.005)
    # Wake-ups without mail do not stretch LINGER: it left about 1 s after its last delivery.
    assert not runner_holders(everyday)
    assert time.time() - delivered < 2.5
