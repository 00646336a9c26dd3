"""The submitter's crash campaign: `sendmail -bq` killed (SIGKILL) at random points while it reads a
message fed slowly through a pipe and spools it, and sometimes right after it exited (control).

Afterwards a fresh process looks at every trial's spool: it must hold either the complete message
(one Q and one M per recipient, the M byte-identical to what an uninterrupted submission of the
same input stores, once our own ids and dates are masked) or nothing of it: no entry listed, and
whatever files are left (the uncommitted message's `tmp_<id>`, and the Q and M files it had
written before its commit) are garbage that `_native.Spool.clean_stale` removes. A submission that
exited 0 must be complete.

    .venv/bin/python tests/campaigns/submit_crash.py [--trials 200] [--seed N] [--workdir DIR]

prints `submit crash campaign: trials=N killed=K complete=C absent=A partial=P corrupted=X`.
The decisions (inputs, kill points) come from random.Random(seed); where a kill lands relative to
the program's work is the machine's timing.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
import signal
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from campaigns.common import Result, main_with, parser

SEED = 3464
MODES = (("read", 0.45), ("commit", 0.40), ("after", 0.15))

_DATE = re.compile(rb"[A-Z][a-z]{2}, \d{1,2} [A-Z][a-z]{2} \d{4} \d\d:\d\d:\d\d [+-]\d{4}")


def normalize(content: bytes, message_id: str) -> bytes:
    """The stored message with what differs between two submissions of one input masked: the spool
    id (in Received: and the Message-Id we add) and the dates we write. Only the header is touched."""
    head, sep, body = content.partition(b"\n\n")
    head = head.replace(message_id.encode(), b"<ID>")
    head = re.sub(rb"<ID>\.[0-9a-f]+@", b"<ID>.<R>@", head)
    head = _DATE.sub(b"<DATE>", head)
    return head + sep + body


def digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:16]


# ---- the fresh process's view -------------------------------------------------------------------


def unlisted(files: list[str], entries: list[Any]) -> list[str]:
    """The Q files of committed messages that the scan did not list: unreadable ones."""
    ids = {e.id for e in entries}
    committed = [n for n in files if n.startswith("Q") and f"tmp_{n[1:].rpartition('.')[0]}" not in files]
    return [n for n in committed if n[1:] not in ids]


def inspect_spool(spool: str) -> dict[str, Any]:
    from dma import _native

    files = sorted(os.listdir(spool))
    entries = _native.scan_queue(spool)
    malformed = unlisted(files, entries)
    listed = []
    for e in entries:
        m = Path(spool, f"M{e.id}").read_bytes()
        listed.append(
            {
                "id": e.id,
                "recipient": e.recipient,
                "sender": e.sender,
                "m": digest(normalize(m, e.message_id)),
            }
        )
    removed = sorted(_native.Spool(spool).clean_stale(0))
    after_files = sorted(os.listdir(spool))
    after_entries = _native.scan_queue(spool)
    return {
        "files": files,
        "entries": listed,
        "malformed": malformed,
        "removed": removed,
        "after_files": after_files,
        "after_entries": sorted(e.id for e in after_entries),
        "after_malformed": unlisted(after_files, after_entries),
    }


def inspect_fresh(spools: list[str]) -> list[dict[str, Any]]:
    """inspect_spool for each spool, in a new interpreter (nothing cached from the trials)."""
    out = subprocess.run(
        [sys.executable, __file__, "--inspect", *spools], capture_output=True, check=True, timeout=600
    )
    return list(json.loads(out.stdout))


# ---- inputs -------------------------------------------------------------------------------------


@dataclass
class Input:
    number: int
    data: bytes
    recipients: list[str]
    dot: bool  # `.` ends the message (no -i)
    reference: str = ""  # digest of the normalized M of an uninterrupted submission
    window: float = 0.0  # seconds from the end of the input to the exit, uninterrupted


def make_input(rng: random.Random, number: int) -> Input:
    head = []
    if rng.random() < 0.7:
        head.append(f"Message-Id: <submit-{number}@test.example>")
    if rng.random() < 0.5:
        head.append("Date: Tue, 24 Nov 2026 10:00:00 +0000")
    if rng.random() < 0.5:
        head.append("From: Someone <someone@test.example>")
    head.append(f"Subject: input {number}")
    if rng.random() < 0.3:
        head.append("Bcc: hidden@test.example")
    lines = [f"body of input {number}"]
    size = rng.choice([200, 5_000, 60_000, 400_000, 1_500_000])
    total = 0
    while total < size:
        line = rng.choice(
            [".", "..", ".x", "From here", "", "x" * rng.randrange(1, 990), f"{rng.getrandbits(128):032x}"]
        )
        lines.append(line)
        total += len(line) + 1
    eol = "\r\n" if rng.random() < 0.3 else "\n"
    text = eol.join(head) + eol + eol + eol.join(lines) + eol
    if rng.random() < 0.2:
        text = "From someone Tue Nov 24 10:00:00 2026" + eol + text
    rcpts = [f"r{i}@remote{rng.randrange(3)}.test" for i in range(rng.choice([1, 1, 2, 3, 5, 8]))]
    return Input(number, text.encode(), rcpts, dot=rng.random() < 0.3)


def argv(conf: Path, inp: Input) -> list[str]:
    from dma_fixtures import program

    return [
        program("sendmail"),
        "-C",
        str(conf),
        "-bq",
        *([] if inp.dot else ["-i"]),
        "-f",
        "root",
        *inp.recipients,
    ]


def chunks(rng: random.Random, data: bytes) -> list[bytes]:
    n = rng.randrange(4, 40)
    cuts = sorted({0, len(data), *(rng.randrange(len(data)) for _ in range(n))})
    return [data[a:b] for a, b in zip(cuts, cuts[1:])]


# ---- the campaign -------------------------------------------------------------------------------


@dataclass
class Trial:
    number: int
    input: int
    mode: str
    delay: float
    returncode: int | None = None
    killed: bool = False
    outcome: str = ""
    note: str = ""


def feed(proc: subprocess.Popen[bytes], parts: list[bytes], upto: int, pause: float) -> None:
    assert proc.stdin is not None
    for part in parts[:upto]:
        try:
            proc.stdin.write(part)
            proc.stdin.flush()
        except (BrokenPipeError, OSError):
            return
        time.sleep(pause)


def run(work: Path, seed: int = SEED, trials: int = 200, inputs: int = 16, log: Any = None) -> Result:
    from dma_fixtures import DmaEnv

    rng = random.Random(seed)
    env = DmaEnv(work)
    started = time.monotonic()
    pool = [make_input(rng, i) for i in range(inputs)]

    # References, and the time from the end of the input to the exit (the commit window).
    ref = work / "ref"
    ref.mkdir()
    for inp in pool:
        spool = ref / f"in{inp.number}"
        conf = env.write_conf(path=ref / f"in{inp.number}.conf", spool=spool)
        spool.mkdir()
        # Fed as the trials feed it, so that the time from the end of the input to the exit is the
        # commit (the start-up is long over): that is where the "commit" kills land.
        proc = subprocess.Popen(
            argv(conf, inp),
            env=env.env,
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        feed(proc, chunks(rng, inp.data), 10**9, 0.002)
        t = time.monotonic()
        try:
            proc.stdin.close()  # type: ignore[union-attr]
        except OSError:
            pass
        proc.wait(60)
        inp.window = time.monotonic() - t
        assert proc.stderr is not None
        err = proc.stderr.read()
        proc.stderr.close()
        if proc.returncode != 0:
            raise RuntimeError(f"reference submission of input {inp.number} failed: {err!r}")
    views = inspect_fresh([str(ref / f"in{i.number}") for i in pool])
    for inp, view in zip(pool, views):
        digests = {e["m"] for e in view["entries"]}
        if len(view["entries"]) != len(inp.recipients) or len(digests) != 1:
            raise RuntimeError(f"reference of input {inp.number}: {view}")
        inp.reference = digests.pop()

    runs: list[Trial] = []
    spools: list[str] = []
    for n in range(trials):
        inp = rng.choice(pool)
        mode = rng.choices([m for m, _ in MODES], [w for _, w in MODES])[0]
        parts = chunks(rng, inp.data)
        pause = rng.uniform(0, 0.004)
        upto = rng.randrange(len(parts) + 1) if mode == "read" else len(parts)
        delay = rng.uniform(0, 0.01) if mode == "read" else rng.uniform(0, inp.window * 1.2)
        trial = Trial(n, inp.number, mode, delay)
        spool = work / "trials" / f"t{n:04d}"
        spool.mkdir(parents=True)
        conf = env.write_conf(path=spool.parent / f"t{n:04d}.conf", spool=spool)
        proc = subprocess.Popen(
            argv(conf, inp),
            env=env.env,
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        feed(proc, parts, upto, pause)
        if mode != "read":
            try:
                proc.stdin.close()  # type: ignore[union-attr]
            except OSError:
                pass
        if mode == "after":
            proc.wait(60)
        else:
            try:
                proc.wait(timeout=delay)
            except subprocess.TimeoutExpired:
                pass
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
        else:
            try:
                os.kill(proc.pid, signal.SIGKILL)  # the control: a kill that comes too late
            except ProcessLookupError:
                pass
        proc.wait(60)
        try:
            proc.stdin.close()  # type: ignore[union-attr]
        except OSError:
            pass
        trial.returncode = proc.returncode
        trial.killed = proc.returncode == -signal.SIGKILL
        runs.append(trial)
        spools.append(str(spool))

    views = inspect_fresh(spools)
    by_number = {i.number: i for i in pool}
    for trial, view in zip(runs, views):
        inp = by_number[trial.input]
        q_files = [f for f in view["files"] if f.startswith("Q")]
        problems = []
        if view["malformed"] or view["after_malformed"]:
            problems.append(f"malformed {view['malformed']} {view['after_malformed']}")
        if not view["entries"]:
            trial.outcome = "absent"
            if view["after_files"]:
                problems.append(f"garbage clean_stale left: {view['after_files']}")
        else:
            rcpts = sorted(e["recipient"] for e in view["entries"])
            ids = {e["id"].rsplit(".", 1)[0] for e in view["entries"]}
            if rcpts != sorted(inp.recipients) or len(q_files) != len(inp.recipients) or len(ids) != 1:
                trial.outcome = "partial"
                trial.note = f"{len(view['entries'])}/{len(inp.recipients)} entries, files {view['files']}"
            elif any(e["m"] != inp.reference for e in view["entries"]):
                trial.outcome = "corrupted"
                trial.note = (
                    f"M differs from the reference: {[e['m'] for e in view['entries']]} != {inp.reference}"
                )
            else:
                trial.outcome = "complete"
                if sorted(view["after_entries"]) != sorted(e["id"] for e in view["entries"]):
                    problems.append(f"clean_stale changed the entries: {view['after_entries']}")
                leftover = [f for f in view["after_files"] if not f.startswith(("Q", "M"))]
                if leftover:
                    problems.append(f"garbage clean_stale left: {leftover}")
        if trial.returncode == 0 and trial.outcome != "complete":
            problems.append(f"exited 0 but {trial.outcome}")
        if trial.returncode not in (0, -signal.SIGKILL):
            problems.append(f"exit status {trial.returncode}")
        if problems:
            trial.note = "; ".join(filter(None, [trial.note, *problems]))
            trial.outcome = trial.outcome if trial.outcome in ("partial", "corrupted") else "corrupted"

    outcomes = Counter(t.outcome for t in runs)
    killed = sum(t.killed for t in runs)
    res = Result()
    res.line = (
        f"submit crash campaign: trials={len(runs)} killed={killed} complete={outcomes['complete']} "
        f"absent={outcomes['absent']} partial={outcomes['partial']} corrupted={outcomes['corrupted']}"
    )
    by_mode = {
        m: dict(Counter(t.outcome for t in runs if t.mode == m))
        | {"killed": sum(t.killed for t in runs if t.mode == m)}
        for m, _ in MODES
    }
    res.details.append(
        f"seed={seed} inputs={len(pool)} "
        f"commit_window={min(i.window for i in pool) * 1000:.1f}..{max(i.window for i in pool) * 1000:.1f}ms "
        f"exited_0={sum(t.returncode == 0 for t in runs)} elapsed={time.monotonic() - started:.1f}s"
    )
    res.details.append(f"by kill point: {by_mode}")
    for t in runs:
        if t.outcome in ("partial", "corrupted"):
            res.details.append(
                f"trial {t.number} (input {t.input}, {len(by_number[t.input].recipients)} rcpts, {t.mode}, "
                f"delay {t.delay * 1000:.2f}ms, exit {t.returncode}): {t.outcome}: {t.note}"
            )
    res.check(outcomes["partial"] == 0, f"{outcomes['partial']} partial spools")
    res.check(outcomes["corrupted"] == 0, f"{outcomes['corrupted']} corrupted spools")
    res.check(outcomes["complete"] + outcomes["absent"] == len(runs), "trials neither complete nor absent")
    res.check(
        killed > 0 and outcomes["absent"] > 0 and outcomes["complete"] > 0,
        "the kills did not cover both outcomes",
    )
    return res


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "--inspect":
        json.dump([inspect_spool(s) for s in sys.argv[2:]], sys.stdout)
        return 0
    p = parser(__doc__, SEED)
    p.add_argument("--trials", type=int, default=200)
    args = p.parse_args()
    return main_with(run, args, trials=args.trials)


if __name__ == "__main__":
    sys.exit(main())
