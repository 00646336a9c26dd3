"""The queue runner end to end: retries, bounces, expiry, flushes, selections, concurrent runners and
the background runner's lifetime, through the real `sendmail`, `dma` and `mailq` programs and a
recording SMTP sink on loopback (tests/sink.py) used as the smarthost.

Every program gets `-C <the test's dma.conf>` on its command line, so the background runner a
submission forks can be found (and, if a test fails, ended) by that path in /proc.
"""

from __future__ import annotations

import email
import email.policy
import mailbox
import os
import re
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from dma_fixtures import DmaEnv, program
from sink import Sink

SENDER = "root"  # a local user: bounces land in MBOXDIR/root
FAST = ("RETRY_MIN 1s", "RETRY_MAX 2s", "CONNECT_TIMEOUT 2", "TIMEOUT 5")
SIGNALS = {"lock", "flush", "wake", "delivered"}


class World(DmaEnv):
    """A DmaEnv that relays through `sink`, with fast retries."""

    def __init__(self, root: Path, sink: Sink) -> None:
        super().__init__(root)
        self.sink = sink
        self.smarthost = f"SMARTHOST 127.0.0.1\nPORT {sink.port}"
        self.configure()

    def configure(self, *extra: str) -> None:
        self.write_conf(*FAST, *extra)

    def dma(self, *args: str, prog: str = "dma", timeout: float = 60) -> subprocess.CompletedProcess[bytes]:
        r = self.run(["-C", str(self.conf), *args], prog=prog, timeout=timeout)
        assert r.returncode == 0, r
        return r

    def submit(
        self,
        *rcpts: str,
        mid: str,
        body: str = "hello\n",
        sender: str = SENDER,
        queue_only: bool = True,
        extra: tuple[str, ...] = (),
    ) -> subprocess.CompletedProcess[bytes]:
        msg = f"Message-Id: {mid}\nSubject: test {mid}\n\n{body}".encode()
        args = ["-C", str(self.conf), *(["-bq"] if queue_only else []), *extra, "-f", sender, *rcpts]
        r = self.run(args, msg)
        assert r.returncode == 0, r
        return r

    def queue_files(self) -> list[str]:
        """Spool files that are queue content (not the lock, wake, flush or journal)."""
        return [n for n in self.files() if n not in SIGNALS]

    def runner_pids(self) -> list[int]:
        """Live processes whose command line names this test's dma.conf."""
        return processes_naming(str(self.conf))

    def edit_q(self, entry_id: str, **fields: str) -> None:
        path = self.spool / f"Q{entry_id}"
        new = {key.replace("_", "-"): value for key, value in fields.items()}
        lines = [line for line in path.read_text().splitlines() if line.split(":", 1)[0] not in new]
        lines += [f"{key}: {value}" for key, value in new.items()]
        tmp = self.spool / f"edit_{entry_id}"
        tmp.write_text("\n".join(lines) + "\n")
        os.replace(tmp, path)


def processes_naming(text: str) -> list[int]:
    pids = []
    for name in os.listdir("/proc"):
        if not name.isdigit() or int(name) == os.getpid():
            continue
        try:
            cmdline = Path(f"/proc/{name}/cmdline").read_bytes()
            state = Path(f"/proc/{name}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if state != "Z" and text.encode() in cmdline:
            pids.append(int(name))
    return pids


def wait_until(predicate: Callable[[], object], timeout: float = 20.0, step: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(step)
    return bool(predicate())


@pytest.fixture
def sink() -> Iterator[Sink]:
    s = Sink().start()
    yield s
    s.stop()


@pytest.fixture
def world(tmp_path: Path, sink: Sink) -> Iterator[World]:
    w = World(tmp_path, sink)
    yield w
    # A runner left behind by a failing test: ours (its command line names our config), by pid.
    for pid in w.runner_pids():
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def mids(prefix: str, n: int) -> list[str]:
    return [f"<{prefix}-{i}@test.example>" for i in range(n)]


def bounces(world: World, user: str = "root") -> list[Any]:
    path = world.mboxdir / user
    if not path.exists():
        return []
    box = mailbox.mbox(str(path), create=False)
    try:
        found: list[Any] = [
            email.message_from_bytes(box.get_bytes(key), policy=email.policy.default) for key in box.keys()
        ]
    finally:
        box.close()
    return [m for m in found if m.get_content_type() == "multipart/report"]


def delivery_status(report: Any) -> tuple[Any, list[Any]]:
    """The per-message fields and the per-recipient blocks of a bounce's message/delivery-status."""
    assert report.get_content_type() == "multipart/report"
    assert report.get_param("report-type") == "delivery-status"
    parts: list[Any] = report.get_payload()
    assert isinstance(parts, list)
    dsn = [p for p in parts if p.get_content_type() == "message/delivery-status"]
    assert len(dsn) == 1, [p.get_content_type() for p in parts]
    blocks: list[Any] = dsn[0].get_payload()
    assert isinstance(blocks, list) and len(blocks) >= 2, blocks
    return blocks[0], blocks[1:]


# ---- retries and the background runner ------------------------------------------------------------


def test_451_then_recovers_background_runner_delivers_once(world: World, sink: Sink) -> None:
    rcpt = "you@remote.test"
    sink.rcpt_once[rcpt] = ["451 4.3.0 try again later"]
    started = time.monotonic()
    world.submit(rcpt, mid="<retry@test.example>", queue_only=False)  # forks the runner
    assert wait_until(lambda: sink.count("<retry@test.example>") >= 1, timeout=15), (
        world.q_files(),
        sink.rcpt_log,
    )
    took = time.monotonic() - started
    assert wait_until(lambda: not world.queue_files() and not world.runner_pids(), timeout=10), (
        world.files(),
        world.runner_pids(),
    )
    time.sleep(1.5)  # nothing more comes
    assert sink.count("<retry@test.example>") == 1
    assert [reply[:3] for r, reply in sink.rcpt_log if r == rcpt] == ["451", "250"]
    assert took < 10, took


def test_background_runner_stays_while_a_retry_is_pending_and_exits_when_empty(
    world: World, sink: Sink
) -> None:
    rcpt = "slow@remote.test"
    sink.rcpt_replies[rcpt] = "451 4.3.0 not yet"
    world.submit(rcpt, mid="<pending@test.example>", queue_only=False)
    assert wait_until(lambda: any(r == rcpt for r, _ in sink.rcpt_log), timeout=10)
    # Deferred, and retried by the same resident process.
    assert wait_until(lambda: sum(r == rcpt for r, _ in sink.rcpt_log) >= 2, timeout=10), sink.rcpt_log
    pids = world.runner_pids()
    assert len(pids) == 1, pids
    (fields,) = world.q_files().values()
    assert int(fields["Attempts"]) >= 1 and fields["Last-Error"].find("451") >= 0, fields
    time.sleep(1.0)
    assert world.runner_pids() == pids, "the runner left while a retry was pending"
    del sink.rcpt_replies[rcpt]
    assert wait_until(lambda: sink.count("<pending@test.example>") == 1, timeout=10), sink.rcpt_log
    assert wait_until(lambda: not world.runner_pids(), timeout=10), world.runner_pids()
    assert world.queue_files() == []
    assert sink.count("<pending@test.example>") == 1


def test_a_runner_for_an_empty_queue_exits(world: World, sink: Sink) -> None:
    world.dma("-q")
    assert wait_until(lambda: not world.runner_pids(), timeout=10), world.runner_pids()
    assert sink.connections == 0


# ---- permanent failures and bounces ------------------------------------------------------------------


def test_550_for_one_of_three_recipients_one_bounce_to_the_sender(world: World, sink: Sink) -> None:
    bad = "bad@remote.test"
    sink.rcpt_replies[bad] = "550 5.1.1 <bad@remote.test>: Recipient address rejected: no such user"
    world.submit("a@remote.test", bad, "c@remote.test", mid="<three@test.example>")
    world.dma("-q", "-D")
    (got,) = sink.messages()
    assert sorted(got.rcpt_tos) == ["a@remote.test", "c@remote.test"]
    assert world.queue_files() == [], world.files()
    (report,) = bounces(world)
    assert [a.addr_spec for a in report["To"].addresses] == ["root@mail.example"]
    assert "MAILER-DAEMON" in report["From"]
    per_message, per_rcpt = delivery_status(report)
    assert per_message["Reporting-MTA"] == "dns; mail.example"
    (block,) = per_rcpt
    assert block["Final-Recipient"] == "rfc822; bad@remote.test"
    assert block["Action"] == "failed"
    assert re.fullmatch(r"5\.\d{1,3}\.\d{1,3}", block["Status"]), block["Status"]
    assert block["Status"] == "5.1.1"
    assert block["Remote-MTA"] == "dns; 127.0.0.1"
    assert block["Diagnostic-Code"].startswith("smtp; 550"), block["Diagnostic-Code"]
    assert "Recipient address rejected: no such user" in block["Diagnostic-Code"]
    # A second run sends nothing more.
    world.dma("-q", "-D")
    assert len(sink.messages()) == 1 and len(bounces(world)) == 1


@pytest.mark.parametrize("full", [True, False])
def test_fullbounce_includes_the_whole_original(world: World, sink: Sink, full: bool) -> None:
    world.configure(*(["FULLBOUNCE"] if full else []))
    sink.rcpt_replies["gone@remote.test"] = "550 5.1.1 gone"
    body = "the-original-body-line\nsecond line\n"
    world.submit("gone@remote.test", mid="<full@test.example>", body=body)
    world.dma("-q", "-D")
    (report,) = bounces(world)
    parts: list[Any] = report.get_payload()
    assert isinstance(parts, list)
    last = parts[-1]
    raw = last.as_bytes()
    assert b"<full@test.example>" in raw  # the headers, always
    assert b"Subject: test <full@test.example>" in raw
    if full:
        assert last.get_content_type() == "message/rfc822"
        assert b"the-original-body-line\nsecond line" in raw
    else:
        assert last.get_content_type() == "text/rfc822-headers"
        assert b"the-original-body-line" not in report.as_bytes()
    assert world.queue_files() == []


def test_a_bounce_to_an_undeliverable_sender_is_held_not_looped(world: World, sink: Sink) -> None:
    sender = "nobody@example.invalid"
    sink.rcpt_replies["x@remote.test"] = "550 5.1.1 no such user"
    sink.rcpt_replies[sender] = "550 5.1.1 sender unknown here"
    world.submit("x@remote.test", mid="<dbl@test.example>", sender=sender)
    world.dma("-q", "-D")
    held = world.entries()
    assert len(held) == 1, world.q_files()
    (entry,) = held
    assert entry.recipient == sender and entry.sender == ""
    assert entry.state == "held", world.q_files()
    assert "550" in entry.last_error
    listing = world.run([], prog="mailq").stdout.decode()
    assert f"ID\t: {entry.id}\nFrom\t: \nTo\t: {sender}\n" == listing, listing
    # Neither a forced foreground run nor a background runner tries it again, and the runner leaves.
    world.dma("-q", "-D")
    world.dma("-q")
    assert wait_until(lambda: not world.runner_pids(), timeout=10), world.runner_pids()
    time.sleep(1.5)
    assert [r for r, _ in sink.rcpt_log].count(sender) == 1, sink.rcpt_log
    assert [r for r, _ in sink.rcpt_log].count("x@remote.test") == 1
    assert [e.state for e in world.entries()] == ["held"]
    assert world.mboxdir.joinpath("root").exists() is False


def test_expiry_bounces_saying_it_gave_up(world: World, sink: Sink) -> None:
    world.configure("MAX_QUEUE_TIME 1h")
    sink.rcpt_replies["late@remote.test"] = "451 4.4.1 mailbox busy"
    world.submit("late@remote.test", mid="<old@test.example>")
    world.dma("-q", "-D")
    (entry,) = world.entries()
    assert entry.state == "" and entry.attempts == 1  # deferred, still young
    world.edit_q(entry.id, Created=str(int(time.time()) - 2 * 3600))
    world.dma("-q", "-D")
    assert world.queue_files() == [], world.q_files()
    (report,) = bounces(world)
    text = report.get_payload()[0].get_content()
    assert "gave up after trying for too long" in text, text
    assert "451 4.4.1 mailbox busy" in text
    _, (block,) = delivery_status(report)
    assert block["Final-Recipient"] == "rfc822; late@remote.test"
    assert block["Action"] == "failed"
    assert block["Status"].startswith("4."), block["Status"]
    assert sink.messages() == []


# ---- flushing and selections ----------------------------------------------------------------------------


def far_future(world: World) -> list[str]:
    """Defer every queued entry by a day, as after a failed attempt."""
    ids = [e.id for e in world.entries()]
    for entry_id in ids:
        world.edit_q(
            entry_id, Attempts="3", Next_Attempt=str(int(time.time()) + 86400), Last_Error="451 earlier"
        )
    return ids


def test_q_makes_deferred_entries_due_now(world: World, sink: Sink) -> None:
    world.submit("a@remote.test", mid="<later@test.example>")
    far_future(world)
    # A runner without -q (started by a submission) leaves it alone, and stays for it...
    world.submit("b@remote.test", mid="<now@test.example>", queue_only=False)
    assert wait_until(lambda: sink.count("<now@test.example>") == 1, timeout=10)
    time.sleep(1.5)
    assert sink.count("<later@test.example>") == 0
    pids = world.runner_pids()
    assert len(pids) == 1, pids
    # ...until `dma -q` wakes it: delivered at once, and the runner leaves.
    world.dma("-q")
    assert wait_until(lambda: sink.count("<later@test.example>") == 1, timeout=5), world.q_files()
    assert wait_until(lambda: not world.runner_pids(), timeout=10)
    assert world.queue_files() == []
    assert dict(sink.counts()) == {"<now@test.example>": 1, "<later@test.example>": 1}


def test_q_D_delivers_deferred_entries_in_the_foreground(world: World, sink: Sink) -> None:
    for mid in mids("deferred", 3):
        world.submit("a@remote.test", mid=mid)
    far_future(world)
    world.dma("-q", "-D")
    assert world.queue_files() == []
    assert dict(sink.counts()) == {m: 1 for m in mids("deferred", 3)}


def test_qI_and_qR_deliver_only_what_they_select(world: World, sink: Sink) -> None:
    world.submit("a@one.test", "b@two.test", mid="<m1@test.example>")
    world.submit("c@one.test", mid="<m2@test.example>")
    world.submit("d@two.test", mid="<m3@test.example>")
    by_rcpt = {e.recipient: e for e in world.entries()}
    m1 = by_rcpt["a@one.test"].message_id
    far_future(world)

    world.dma(f"-qI{m1}")  # a message id: both its recipients
    assert dict(sink.counts()) == {"<m1@test.example>": 1}
    assert sorted(sink.messages()[0].rcpt_tos) == ["a@one.test", "b@two.test"]
    assert sorted(world.recipients()) == ["c@one.test", "d@two.test"]

    world.dma("-qRtwo.test")
    assert dict(sink.counts()) == {"<m1@test.example>": 1, "<m3@test.example>": 1}
    assert world.recipients() == ["c@one.test"]

    entry_id = by_rcpt["c@one.test"].id
    world.dma(f"-qI{entry_id}")  # an entry id
    assert world.recipients() == []
    assert dict(sink.counts()) == {
        m: 1 for m in ("<m1@test.example>", "<m2@test.example>", "<m3@test.example>")
    }


# ---- the server goes away ----------------------------------------------------------------------------


def test_server_disappears_mid_queue_nothing_lost(world: World, sink: Sink) -> None:
    world.configure("HOST_CONCURRENCY 2", "CONNECT_TIMEOUT 1", "TIMEOUT 3")
    queued = mids("vanish", 50)
    for mid in queued:
        world.submit("far@remote.test", mid=mid)
    sink.down_after = 15
    world.dma("-q", "-D")
    assert not sink.running
    before = sink.counts()
    assert 15 <= sum(before.values()) < 50, before
    left = world.entries()
    assert left and all(e.attempts == 1 and e.state == "" for e in left), world.q_files()
    sink.start()
    world.dma("-q", "-D")
    assert world.queue_files() == [], world.files()
    counts = sink.counts()
    assert set(counts) == set(queued), set(queued) - set(counts)
    duplicates = sum(n - 1 for n in counts.values())
    print(
        f"server went down after 15 messages: {sum(before.values())} received before, duplicates={duplicates}"
    )
    # Only sessions open when it went down (HOST_CONCURRENCY) can have had a reply lost.
    assert duplicates <= 2, counts


# ---- concurrent runners ---------------------------------------------------------------------------------


def test_two_dma_q_at_once_deliver_everything_once(world: World, sink: Sink) -> None:
    queued = mids("twice", 40)
    for mid in queued:
        world.submit("x@remote.test", mid=mid)
    cmd = [program("dma"), "-C", str(world.conf), "-q"]
    procs = [subprocess.Popen(cmd, env=world.env, cwd=world.root) for _ in range(2)]
    assert [p.wait(30) for p in procs] == [0, 0]
    assert wait_until(lambda: not world.queue_files() and not world.runner_pids(), timeout=20), world.files()
    assert dict(sink.counts()) == {m: 1 for m in queued}


def test_q_D_beside_a_background_runner_delivers_everything_once(world: World, sink: Sink) -> None:
    queued = mids("beside", 120)
    for mid in queued:
        world.submit("x@remote.test", mid=mid)
    background = subprocess.Popen(
        [program("dma"), "-C", str(world.conf), "-q"], env=world.env, cwd=world.root
    )
    foreground = subprocess.Popen(
        [program("dma"), "-C", str(world.conf), "-q", "-D"], env=world.env, cwd=world.root
    )
    assert foreground.wait(60) == 0 and background.wait(60) == 0
    assert wait_until(lambda: not world.queue_files() and not world.runner_pids(), timeout=20), world.files()
    counts = sink.counts()
    assert dict(counts) == {m: 1 for m in queued}, {m: n for m, n in counts.items() if n != 1}
    # Both did some of the work: they ran side by side, not one after the other.
    print(f"connections: {sink.connections}")


# ---- connection reuse -------------------------------------------------------------------------------------


@pytest.mark.parametrize("host_concurrency", [1, 2])
def test_one_connection_per_host_slot(world: World, sink: Sink, host_concurrency: int) -> None:
    world.configure(f"HOST_CONCURRENCY {host_concurrency}")
    queued = mids("reuse", 20)
    for i, mid in enumerate(queued):
        world.submit(f"r{i % 3}@remote{i % 2}.test", mid=mid)
    world.dma("-q", "-D")
    assert dict(sink.counts()) == {m: 1 for m in queued}
    assert world.queue_files() == []
    if host_concurrency == 1:
        assert sink.connections == 1
        assert {a.connection for a in sink.messages()} == {1}
    else:
        assert 1 <= sink.connections <= host_concurrency
