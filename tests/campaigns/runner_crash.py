"""The queue runner's crash campaign: `dma -q -D` killed (SIGKILL) again and again at random moments
while it delivers a queue to a recording SMTP sink (tests/sink.py), until a run ends by itself.
Then nothing may be lost or corrupted; a message may arrive twice only if a kill hit its delivery
in flight (the window between the server's reply to the final dot and the runner recording it), so
duplicates are attributed to the kills and bounded by them.

    .venv/bin/python tests/campaigns/runner_crash.py [--trials 200] [--seed N] [--workdir DIR]

prints `runner crash campaign: trials=... kills=... lost=0 corrupted=0 duplicated=D`.
Seeded and reproducible in its decisions (random.Random(seed); DMA_CRASH_SEED or --seed sets it);
the timing of the kills relative to the runner's work is the machine's.
"""

from __future__ import annotations

import os
import random
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from dma_fixtures import DmaEnv, program
from sink import Sink

from campaigns.common import Result, main_with, parser

SEED = int(os.environ.get("DMA_CRASH_SEED", "3464"))
MESSAGES_PER_ROUND = 30
KILLS_PER_ROUND = 25
HOST_CONCURRENCY = 2
LEFTOVER_OK = {"lock", "flush", "wake", "delivered"}


@dataclass
class Trial:
    number: int
    round: int
    mode: str  # "time" (a random delay) or "accept" (just after the sink accepted a message)
    delay: float
    started: float
    ended: float = 0.0
    killed: bool = False
    #: the sink's connection numbers (first, last] opened while this run lived
    connections: tuple[int, int] = (0, 0)


def random_body(rng: random.Random, tag: str) -> str:
    """A body with the lines SMTP and mbox care about, sometimes large enough to be cut mid-DATA."""
    lines = [f"body of {tag}"]
    for _ in range(rng.randrange(1, 12)):
        lines.append(
            rng.choice(
                [
                    ".",
                    "..",
                    ".leading dot",
                    "From the start of a line",
                    "",
                    "x" * rng.randrange(1, 990),
                    f"{rng.getrandbits(64):016x}",
                    "trailing space ",
                ]
            )
        )
    if rng.random() < 0.15:
        lines += [f"{i:06d} {rng.getrandbits(128):032x}" for i in range(rng.randrange(2000, 8000))]
    lines.append(f"end of {tag}")
    return "\n".join(lines) + "\n"


def run(work: Path, seed: int = SEED, min_trials: int = 200) -> Result:
    """Rounds of submissions and kills until `min_trials` runner processes have been started."""
    sink = Sink().start()
    try:
        return _campaign(work, seed, min_trials, sink)
    finally:
        sink.stop()


def _campaign(work: Path, seed: int, min_trials: int, sink: Sink) -> Result:
    rng = random.Random(seed)
    env = DmaEnv(work)
    env.smarthost = f"SMARTHOST 127.0.0.1\nPORT {sink.port}"
    env.write_conf(
        "RETRY_MIN 1s",
        "RETRY_MAX 2s",
        "CONNECT_TIMEOUT 2",
        "TIMEOUT 5",
        f"HOST_CONCURRENCY {HOST_CONCURRENCY}",
    )
    runner = [program("dma"), "-C", str(env.conf), "-q", "-D"]
    submitted: dict[str, str] = {}  # Message-Id -> body
    trials: list[Trial] = []
    started = time.monotonic()

    round_number = 0
    while len(trials) < min_trials:
        round_number += 1
        for i in range(MESSAGES_PER_ROUND):
            mid = f"<crash-{seed}-{round_number}-{i}@test.example>"
            body = random_body(rng, mid)
            msg = f"Message-Id: {mid}\nSubject: crash {mid}\n\n{body}".encode()
            rcpts = [f"r{rng.randrange(3)}@remote{rng.randrange(2)}.test"]
            r = env.run(["-C", str(env.conf), "-bq", "-i", "-f", "root", *rcpts], msg)
            assert r.returncode == 0, r
            submitted[mid] = body
        kills = 0
        while True:
            final = kills >= KILLS_PER_ROUND
            mode = "accept" if rng.random() < 0.3 else "time"
            delay = rng.uniform(0, 0.05) if rng.random() < 0.6 else rng.uniform(0.05, 0.4)
            nth = rng.randrange(1, 8)
            extra = rng.uniform(0, 0.004)
            trial = Trial(len(trials) + 1, round_number, "final" if final else mode, delay, time.monotonic())
            trials.append(trial)
            before = len(sink.messages())
            connections_before = sink.connections
            proc = subprocess.Popen(
                runner, env=env.env, cwd=env.root, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
            )
            if final:
                _, err = proc.communicate(timeout=120)
                assert proc.returncode == 0, err
            elif mode == "time":
                try:
                    proc.wait(timeout=delay)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    trial.killed = True
            else:
                # Right after the sink took the nth message of this run: the reply is on its way.
                deadline = time.monotonic() + 2
                while (
                    proc.poll() is None
                    and len(sink.messages()) < before + nth
                    and time.monotonic() < deadline
                ):
                    time.sleep(0.0005)
                time.sleep(extra)
                if proc.poll() is None:
                    proc.kill()
                    trial.killed = True
            proc.wait(30)
            if proc.stderr is not None:
                proc.stderr.close()
            trial.ended = time.monotonic()
            trial.connections = (connections_before, sink.connections)
            if not trial.killed:
                break  # a run that completed by itself
            kills += 1

    elapsed = time.monotonic() - started
    received = sink.messages()
    counts = Counter(a.message_id for a in received)
    lost = sorted(set(submitted) - set(counts))
    corrupted = sorted(
        {a.message_id or "?" for a in received if submitted.get(a.message_id or "") != a.body.decode()}
    )
    strangers = sorted(str(m) for m in set(counts) - set(submitted))
    duplicated = {m: n - 1 for m, n in counts.items() if n > 1}
    kills = sum(t.killed for t in trials)

    # Which run sent the first copy of each duplicate (by the connection it came on, as the server may
    # take a final dot only after its sender died): it must have been killed.
    def trial_of(connection: int) -> Trial | None:
        return next((t for t in trials if t.connections[0] < connection <= t.connections[1]), None)

    first_copy: dict[str | None, Any] = {}
    for a in received:
        first_copy.setdefault(a.message_id, a)
    blamed = {m: trial_of(first_copy[m].connection) for m in duplicated}
    by_trial = Counter(t.number if t else None for t in blamed.values())

    leftovers = [n for n in env.files() if n not in LEFTOVER_OK]
    res = Result()
    res.line = (
        f"runner crash campaign: trials={len(trials)} kills={kills} lost={len(lost)} "
        f"corrupted={len(corrupted)} "
        f"duplicated={sum(duplicated.values())}"
    )
    res.details.append(
        f"seed={seed} rounds={round_number} messages={len(submitted)} received={len(received)} "
        f"connections={sink.connections} elapsed={elapsed:.1f}s"
    )
    for m, t in blamed.items():
        res.details.append(
            f"duplicate {m} x{duplicated[m]}: first copy during trial {t.number if t else '?'} "
            f"({t.mode if t else '-'}, killed={t.killed if t else '-'})"
        )
    entries = env.entries()
    res.check(lost == [], f"lost: {lost}")
    res.check(corrupted == [], f"corrupted: {corrupted}")
    res.check(strangers == [], f"messages nobody submitted: {strangers}")
    res.check(len(trials) >= min_trials and kills >= len(trials) - round_number, "too few trials or kills")
    res.check(entries == [], f"still queued: {[(e.id, e.state, e.last_error) for e in entries]}")
    res.check(leftovers == [], f"leftover files: {leftovers}")
    # Duplicates: only what was in flight at a kill, one transaction per open session.
    res.check(sum(duplicated.values()) <= kills, "more duplicates than kills")
    res.check(
        all(t is not None and t.killed for t in blamed.values()),
        f"a duplicate not sent by a killed run: {blamed}",
    )
    res.check(
        all(n <= HOST_CONCURRENCY for n in by_trial.values()),
        f"more duplicates than sessions in flight for one kill (trial: count) {dict(by_trial)}",
    )
    return res


def main() -> int:
    p = parser(__doc__, SEED)
    p.add_argument("--trials", type=int, default=200)
    args = p.parse_args()
    return main_with(run, args, min_trials=args.trials)


if __name__ == "__main__":
    sys.exit(main())
