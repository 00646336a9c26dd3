# ruff: noqa: E501
"""What delivery costs on the everyday path, piece by piece, for one build or two side by side:

1. the lingering runner's CPU per delivered message: the runner the first `sendmail` starts, while
   N more calls follow one after another (its inotify wake delivers each at once), read from
   /proc/PID/stat of the runner alone, user and system apart;
2. the submitting process's own CPU and wall time with immediate delivery against `-bq`, while a
   runner lingers (so the immediate call only has to find it), calls alternating, 20 ms apart.

Run as root:  python benches/bench_runner.py [--no-build] [--n 300] [--other VENV [--label TEXT]]

`--other VENV`: also measure another build installed in VENV (for instance an earlier commit, by
`python -m venv VENV && VENV/bin/pip install .` in a worktree), interleaved with this one.

What users run: pip's installed `sendmail`, the default configuration but for the smarthost and
MAILNAME (immediate delivery, default LINGER). Sink: aiosmtpd on loopback, plain SMTP. A diagnostic
of ours, not a comparison: C dma has no lingering runner; bench_everyday.py puts whole calls side by
side with it. Writes the `bench_runner` section of RESULTS.md.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import benchlib as b

RCPT = "someone@example.net"


def ticks_ms(pid: int) -> tuple[float, float]:
    """User and system CPU of `pid` so far, in ms."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    hz = os.sysconf("SC_CLK_TCK")
    return int(fields[11]) * 1000 / hz, int(fields[12]) * 1000 / hz


class Setup:
    """A spool, a dma.conf relaying to a fresh aiosmtpd sink, and a 1 KB message."""

    def __init__(self, venv: str, work: str) -> None:
        self.venv = venv
        self.spool = tempfile.mkdtemp(dir=work)
        self.msg = os.path.join(work, "msg")
        b.write_message(self.msg, 1024, RCPT)
        self.sink = b.AioSink()
        self.conf = os.path.join(self.spool, "dma.conf")
        with open(self.conf, "w") as f:
            f.write(
                f"SPOOLDIR {self.spool}\nSMARTHOST 127.0.0.1\nPORT {self.sink.port}\nMAILNAME bench.example.com\n"
            )
        self.env = dict(os.environ, DMA_CONF=self.conf)

    def call(self, *extra: str) -> tuple[float, float]:
        """One `sendmail` of the message: (its CPU, its wall time), in ms."""
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        with open(self.msg, "rb") as f:
            start = time.perf_counter()
            subprocess.run(
                [f"{self.venv}/bin/sendmail", *extra, "-f", "bench@example.com", RCPT],
                stdin=f,
                env=self.env,
                check=True,
            )
            wall = time.perf_counter() - start
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu = after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime
        return cpu * 1000, wall * 1000

    def runner(self) -> int:
        """The pid of the runner: the one live process with our DMA_CONF (the calls have exited)."""
        mine = f"DMA_CONF={self.conf}\0".encode()
        for name in filter(str.isdigit, os.listdir("/proc")):
            with contextlib.suppress(OSError), open(f"/proc/{name}/environ", "rb") as f:
                if mine in f.read() + b"\0":
                    return int(name)
        raise SystemExit(f"{self.venv}: no runner for {self.conf}")

    def close(self) -> None:
        """Once the runner has lingered and gone."""
        lock = os.open(os.path.join(self.spool, "lock"), os.O_RDWR | os.O_CREAT)
        fcntl.flock(lock, fcntl.LOCK_EX)
        os.close(lock)
        self.sink.stop()


def runner_cpu(venv: str, work: str, n: int) -> tuple[float, float]:
    """(user, system) ms of the lingering runner per message delivered."""
    s = Setup(venv, work)
    s.call()  # starts the runner, which lingers
    try:
        if not s.sink.wait_for(1, 30):
            raise SystemExit(f"{venv}: the runner delivered nothing")
        pid = s.runner()
        user0, sys0 = ticks_ms(pid)
        for _ in range(n):
            s.call()
        if not s.sink.wait_for(n + 1, 60):
            raise SystemExit(f"{venv}: only {s.sink.count - 1} of {n} delivered")
        user1, sys1 = ticks_ms(pid)
    finally:
        s.close()
    return (user1 - user0) / n, (sys1 - sys0) / n


def submitter(venv: str, work: str, n: int) -> dict[str, tuple[float, float]]:
    """Median (CPU, wall) ms of the submitting process, immediate and `-bq`, beside a lingering runner."""
    s = Setup(venv, work)
    s.call()  # starts the runner, which lingers
    seen: dict[str, list[tuple[float, float]]] = {"immediate": [], "-bq": []}
    try:
        for i in range(n):
            for mode in ("immediate", "-bq") if i % 2 else ("-bq", "immediate"):
                seen[mode].append(s.call(*([] if mode == "immediate" else ["-bq"])))
                time.sleep(0.02)  # the runner delivers in the gap, not during the next call
        s.sink.wait_for(2 * n + 1, 60)
    finally:
        s.close()
    return {
        m: (statistics.median(c for c, _ in v), statistics.median(w for _, w in v)) for m, v in seen.items()
    }


def main() -> int:
    b.start(__file__, sys.argv[1:])
    parser = argparse.ArgumentParser()
    parser.add_argument("--no-build", action="store_true")
    parser.add_argument("--n", type=int, default=300)
    parser.add_argument("--other", help="another build's venv, measured interleaved with this one")
    parser.add_argument("--label", default="other build")
    args = parser.parse_args()
    builds = [(f"this build (git {b.git_head()})", b.VENV)]
    if args.other:
        builds.insert(0, (args.label, os.path.abspath(args.other)))
    about = b.facts()
    work = tempfile.mkdtemp(prefix="dma-bench-runner-", dir="/var/tmp")
    rows = {label: {"runner": [], "sub": []} for label, _ in builds}
    try:
        for _ in range(2):  # two rounds, builds interleaved, against drift
            for label, venv in builds:
                b.log(f"{label}: the runner's CPU per message")
                rows[label]["runner"].append(runner_cpu(venv, work, args.n))
                b.log(f"{label}: the submitter, immediate against -bq")
                rows[label]["sub"].append(submitter(venv, work, args.n // 2))
    finally:
        b.clean_dir(work)
        os.rmdir(work)
    out = ["## What delivery costs, piece by piece (`bench_runner.py`)", ""]
    out += [f"- {k}: {v}" for k, v in about]
    out += [
        "",
        f"Plain SMTP to an aiosmtpd sink, 1 KB messages, {args.n} per measurement, two rounds with the builds",
        "interleaved (each round's figure shown), pip's `sendmail` with the default configuration. Runner:",
        "CPU of the runner the first call starts, per message it delivered. Submitter: median CPU and wall time of one `sendmail` with immediate delivery and with",
        "`-bq`, while a runner lingers, calls alternating 20 ms apart.",
        "",
        "| build | runner CPU ms / message (user + system) | submitter CPU ms, immediate / `-bq` | submitter wall ms, immediate / `-bq` |",
        "|---|---:|---:|---:|",
    ]
    for label, r in rows.items():
        runner = ", ".join(f"{u + s:.2f} ({u:.2f} + {s:.2f})" for u, s in r["runner"])
        cpu = ", ".join(f"{d['immediate'][0]:.2f} / {d['-bq'][0]:.2f}" for d in r["sub"])
        wall = ", ".join(f"{d['immediate'][1]:.2f} / {d['-bq'][1]:.2f}" for d in r["sub"])
        out.append(f"| {label} | {runner} | {cpu} | {wall} |")
    text = "\n".join(out) + "\n"
    print(text)
    b.write_section("bench_runner", text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
