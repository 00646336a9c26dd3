"""The queue runner's crash campaign, CI size (100 trials): the campaign itself lives in
tests/campaigns/runner_crash.py (full size: `python tests/campaigns/runner_crash.py`, 200 trials;
docs/campaigns.md). `dma -q -D` is killed (SIGKILL) again and again at random moments while it
delivers a queue to a recording SMTP sink, until a run ends by itself. Then nothing may be lost or
corrupted; a message may arrive twice only if a kill hit its delivery in flight (the window between
the server's reply to the final dot and the runner recording it), so duplicates are attributed to
the kills and bounded by them (at most one per session open at the kill).

Seeded and reproducible in its decisions (DMA_CRASH_SEED overrides the seed); the timing of the
kills relative to the runner's work is the machine's.
"""

from __future__ import annotations

import subprocess
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
from campaigns import runner_crash
from dma_fixtures import DmaEnv, program
from sink import Sink

MIN_TRIALS = 100


@pytest.fixture
def sink() -> Iterator[Sink]:
    s = Sink().start()
    yield s
    s.stop()


def test_crash_campaign(tmp_path: Path) -> None:
    result = runner_crash.run(tmp_path, min_trials=MIN_TRIALS)
    print()
    print(result.report())
    assert result.problems == [], result.report()


def test_a_kill_while_the_journal_is_replayed_sends_nothing_twice(tmp_path: Path, sink: Sink) -> None:
    """Confirmed deliveries a killed run left in the delivered journal stay confirmed even if the run
    replaying that journal is killed too."""
    env = DmaEnv(tmp_path)
    env.smarthost = f"SMARTHOST 127.0.0.1\nPORT {sink.port}"
    env.write_conf("RETRY_MIN 1s", "RETRY_MAX 2s", "HOST_CONCURRENCY 1")
    queued = [f"<replay-{i}@test.example>" for i in range(40)]
    for mid in queued:
        r = env.run(
            ["-C", str(env.conf), "-bq", "-f", "root", "x@remote.test"], f"Message-Id: {mid}\n\nx\n".encode()
        )
        assert r.returncode == 0, r
    runner = [program("dma"), "-C", str(env.conf), "-q", "-D"]
    journal = env.spool / "delivered"

    # 1. Killed in the middle of its one session: the server confirmed some messages, which are in
    #    the journal but still queued.
    proc = subprocess.Popen(runner, env=env.env, cwd=env.root)
    assert sink.wait_for(lambda: len(sink.messages()) >= 20, timeout=20, step=0.0005)
    proc.kill()
    proc.wait(10)
    confirmed = set(journal.read_text().split()) if journal.exists() else set()
    still_queued = {e.id for e in env.entries()}
    pending_confirmed = confirmed & still_queued
    assert pending_confirmed, (confirmed, still_queued)

    # 2. The next run takes the journal; killed right after that, before it removed every entry.
    proc = subprocess.Popen(runner, env=env.env, cwd=env.root)
    deadline = time.monotonic() + 20
    while journal.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.0002)
    proc.kill()
    proc.wait(10)
    replayed = pending_confirmed - {e.id for e in env.entries()}
    print(
        f"\njournal replay: {len(pending_confirmed)} confirmed but queued, "
        f"{len(replayed)} removed before the kill"
    )

    # 3. A run that completes.
    r = env.run(["-C", str(env.conf), "-q", "-D"], prog="dma")
    assert r.returncode == 0, r
    counts = Counter(a.message_id for a in sink.messages())
    assert set(counts) == set(queued)
    twice = sorted(str(m) for m, n in counts.items() if n > 1)
    # At most the one transaction in flight when the first run was killed.
    assert len(twice) <= 1, (len(twice), twice)
    assert env.entries() == []
