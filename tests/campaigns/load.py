"""The load test: many messages submitted by concurrent processes while the runner (started by the
submissions themselves: no -bq) delivers them to an aiosmtpd sink that fails 10% of transactions
temporarily (451 at the final dot, chosen by a seeded hash of the Message-Id and the attempt, so a
retry of the same message may succeed). RETRY_MIN 1s, RETRY_MAX 2s.

Every message must be delivered exactly once or accounted for (still queued, with its reason), the
queue must empty before the deadline, and the runner's VmRSS (sampled every 0.25 s) must stay under
64 MiB without steady growth.

    .venv/bin/python tests/campaigns/load.py [--messages 10000] [--processes 8] [--seed N] [--workdir DIR]

prints `load test: messages=N delivered=D duplicates=U queued=Q runner_rss_mib=min..max elapsed=S`.
Submissions go through the fast launcher of `dma install` (dma.admin.install).
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from dma_fixtures import DmaEnv
from sink import Sink

from campaigns.common import Result, main_with, parser

SEED = 3464
FAIL_RATE = 0.10
RSS_LIMIT_MIB = 64


class FlakySink(Sink):
    """The recording sink of tests/sink.py, refusing a seeded 10% of transactions with 451."""

    def __init__(self, seed: int) -> None:
        super().__init__()
        self.seed = seed
        self.tries: Counter[str | None] = Counter()
        self.refused = 0

    def _data(self, envelope: Any, connection: int) -> str:
        from sink import message_id

        content = bytes(envelope.original_content or envelope.content).replace(b"\r\n", b"\n")
        mid = message_id(content)
        with self.lock:
            self.tries[mid] += 1
            attempt = self.tries[mid]
        h = hashlib.sha256(f"{self.seed}/{mid}/{attempt}".encode()).digest()
        if int.from_bytes(h[:4], "big") < FAIL_RATE * 2**32:
            with self.lock:
                self.refused += 1
            return "451 4.3.0 try again later (load test)"
        return super()._data(envelope, connection)


def runner_pid(lock: str) -> int | None:
    """The process holding `<spool>/lock` open: the runner."""
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            for fd in os.listdir(f"/proc/{pid}/fd"):
                if os.readlink(f"/proc/{pid}/fd/{fd}") == lock:
                    return int(pid)
        except OSError:
            continue
    return None


def vm_rss_kib(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def run(
    work: Path,
    seed: int = SEED,
    messages: int = 10_000,
    processes: int = 8,
    deadline: float = 900,
    log: Any = None,
) -> Result:
    from dma.admin.install import script, write_atomically

    env = DmaEnv(work)
    sink = FlakySink(seed).start()
    env.smarthost = f"SMARTHOST 127.0.0.1\nPORT {sink.port}"
    env.write_conf("RETRY_MIN 1s", "RETRY_MAX 2s", "CONNECT_TIMEOUT 2", "TIMEOUT 10")
    launcher = str(work / "sendmail")
    write_atomically(launcher, script("sendmail"), 0o755)
    lock = str(env.spool / "lock")

    samples: list[tuple[float, int, int]] = []  # (time, pid, VmRSS KiB)
    stop = threading.Event()

    def sample() -> None:
        pid = None
        while not stop.is_set():
            if pid is None or vm_rss_kib(pid) is None:
                pid = runner_pid(lock)
            if pid is not None:
                rss = vm_rss_kib(pid)
                if rss is not None:
                    samples.append((time.monotonic(), pid, rss))
            stop.wait(0.25)

    failures: list[str] = []
    submitted: list[str] = []
    per_worker = [messages // processes + (1 if w < messages % processes else 0) for w in range(processes)]

    def submit(worker: int) -> None:
        for i in range(per_worker[worker]):
            mid = f"<load-{seed}-{worker}-{i}@test.example>"
            msg = (
                f"Message-Id: {mid}\nSubject: load {worker}/{i}\n\nmessage {i} of worker {worker}\n".encode()
            )
            r = subprocess.run(
                [launcher, "-f", "root", f"u{i % 7}@remote{worker % 3}.test"],
                input=msg,
                env=env.env,
                capture_output=True,
                check=False,
                cwd=env.root,
            )
            if r.returncode != 0:
                failures.append(f"{mid}: exit {r.returncode}: {r.stderr.decode(errors='replace').strip()}")
            else:
                submitted.append(mid)

    started = time.monotonic()
    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    workers = [threading.Thread(target=submit, args=(w,)) for w in range(processes)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    submit_time = time.monotonic() - started
    end = started + deadline
    while time.monotonic() < end and (env.entries() or len(set(sink.counts())) < len(submitted)):
        time.sleep(0.5)
    drained = time.monotonic() - started
    time.sleep(1.5)  # the runner sees the empty queue and exits
    stop.set()
    sampler.join()
    sink.stop()

    counts = sink.counts()
    entries = env.entries()
    queued = {e.message_id: e for e in entries}
    queued_mids = set()
    for e in entries:
        text = (env.spool / f"M{e.id}").read_bytes()
        from sink import message_id

        queued_mids.add(message_id(text))
    delivered = sum(1 for m in submitted if counts[m] >= 1)
    duplicates = sum(counts[m] - 1 for m in submitted if counts[m] > 1)
    unaccounted = [m for m in submitted if counts[m] == 0 and m not in queued_mids]
    strangers = [m for m in counts if m not in set(submitted)]

    rss = [s[2] for s in samples]
    pids = Counter(s[1] for s in samples)
    lo, hi = (min(rss) / 1024, max(rss) / 1024) if rss else (0.0, 0.0)
    # Growth: in the runner process sampled longest, the last quarter against the first quarter.
    growth = ""
    if pids:
        main_pid, n = pids.most_common(1)[0]
        series = [s[2] for s in samples if s[1] == main_pid]
        if n >= 8:
            q = n // 4
            first, last = max(series[:q]) / 1024, max(series[-q:]) / 1024
            growth = (
                f"longest runner pid {main_pid}: {n} samples, "
                f"first quarter max {first:.1f} MiB, last {last:.1f} MiB"
            )
        else:
            first = last = 0.0
    res = Result()
    res.line = (
        f"load test: messages={len(submitted)} delivered={delivered} duplicates={duplicates} "
        f"queued={len(entries)} "
        f"runner_rss_mib={lo:.1f}..{hi:.1f} elapsed={drained:.1f}s"
    )
    res.details.append(
        f"seed={seed} processes={processes} submissions={submit_time:.1f}s "
        f"({len(submitted) / max(submit_time, 1e-9):.0f}/s) refused_451={sink.refused} "
        f"transactions={sum(sink.tries.values())} connections={sink.connections} "
        f"runner_processes={len(pids)} "
        f"rss_samples={len(rss)}"
    )
    if growth:
        res.details.append(growth)
    for e in list(queued.values())[:10]:
        res.details.append(f"still queued {e.id}: attempts={e.attempts} {e.state} {e.last_error}")
    res.check(not failures, f"{len(failures)} submissions failed: {failures[:3]}")
    res.check(len(submitted) == messages, f"submitted {len(submitted)} of {messages}")
    res.check(not unaccounted, f"{len(unaccounted)} neither delivered nor queued: {unaccounted[:5]}")
    res.check(duplicates == 0, f"{duplicates} duplicates")
    res.check(not strangers, f"messages nobody submitted: {strangers[:5]}")
    res.check(not entries, f"queue not empty after {deadline:.0f}s: {len(entries)} entries")
    res.check(bool(rss), "no runner was ever sampled")
    res.check(hi < RSS_LIMIT_MIB, f"runner RSS {hi:.1f} MiB >= {RSS_LIMIT_MIB} MiB")
    if growth and n >= 8:
        res.check(last <= first * 1.2 + 2, f"runner RSS grows: {growth}")
    return res


def main() -> int:
    p = parser(__doc__, SEED)
    p.add_argument("--messages", type=int, default=10_000)
    p.add_argument("--processes", type=int, default=8)
    p.add_argument("--deadline", type=float, default=900, help="seconds allowed for the queue to empty")
    args = p.parse_args()
    return main_with(run, args, messages=args.messages, processes=args.processes, deadline=args.deadline)


if __name__ == "__main__":
    sys.exit(main())
