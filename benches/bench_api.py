# ruff: noqa: E501, RUF001
"""Durable messages per second queued from ONE running Python process through `dma.api`, one by one
and in batches (`dma.api.Batch`, one syncfs per batch), next to the command-line rate of our
`sendmail -bq` and of C dma's `dma -bq` (one process per message), all in one run.

Run as root from anywhere:  python benches/bench_api.py [--no-build] [--rounds 3]

It builds the project in release mode into benches/out/venv (as bench_submit.py does), measures our
API in a child interpreter of that venv, and prints a Markdown report that it also writes into its
own section of benches/RESULTS.md (between `<!-- BEGIN bench_api -->` and `<!-- END bench_api -->`;
the other sections are left as they are).

C dma 0.13 reads only /etc/dma/dma.conf. Another benchmark may be using C dma at the same time, so
this one takes the file only when it is Debian's (no `DEFER`, not written by a benchmark), waiting
up to 10 minutes for that; it writes `SPOOLDIR /var/spool/dma` + `DEFER` for the length of the C dma
runs, restores the file (also on SIGINT/SIGTERM), and removes from /var/spool/dma only the queue
files whose `Recipient:` is this run's own address.

Nothing is delivered: every configuration says DEFER and the command lines use `-bq`.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any

from benchlib import C_CONF, C_DMA, C_SPOOL, OUT, RESULTS, ROOT, VENV, VPY

BEGIN = "<!-- BEGIN bench_api -->"
END = "<!-- END bench_api -->"
C_WAIT = 600.0
# This run's own recipient: the only queue files it removes from C dma's shared spool.
RCPT = f"bench-api-{os.getpid()}@example.com"
TARGET = 2000.0

os.environ.pop("PYTHONDONTWRITEBYTECODE", None)


def log(text: str) -> None:
    sys.stderr.write(f"[bench_api] {text}\n")
    sys.stderr.flush()


def message_1k(rcpt: str) -> bytes:
    head = f"From: root\nTo: {rcpt}\nSubject: bench 1 KB\n\n"
    line = "The quick brown fox jumps over the lazy dog, then queues itself for later.\n"
    body = (line * 20)[: 1024 - len(head) - 1] + "\n"
    data = (head + body).encode()
    assert len(data) == 1024, len(data)
    return data


# ---------------------------------------------------------------------------------------------
# Our API, measured inside the venv's interpreter (`--worker`)


def clean_dir(path: str) -> None:
    for name in os.listdir(path):
        os.unlink(os.path.join(path, name))


def worker(conf: str, spool: str, single: int, total: int) -> None:
    """Print one JSON object: {mode: messages per second} for this round."""
    from email import message_from_bytes, policy

    from dma import api, config

    cfg = config.load(conf)
    assert cfg.defer and cfg.spooldir == spool
    data = message_1k(RCPT)
    obj = message_from_bytes(data, policy=policy.default)
    results: dict[str, float] = {}

    def timed(mode: str, n: int, run: Any) -> None:
        clean_dir(spool)
        os.sync()
        t0 = time.perf_counter()
        run()
        elapsed = time.perf_counter() - t0
        assert sum(1 for name in os.listdir(spool) if name.startswith("Q")) == n
        results[mode] = n / elapsed

    def one_by_one() -> None:
        for _ in range(single):
            api.submit(data, recipients=[RCPT], config=cfg)

    def batches(size: int, message: Any) -> Any:
        def run() -> None:
            for _ in range(total // size):
                with api.Batch(cfg) as batch:
                    for _ in range(size):
                        batch.submit(message, recipients=[RCPT])

        return run

    timed("single", single, one_by_one)
    timed("batch100", total, batches(100, data))
    timed("batch1000", total, batches(1000, data))
    timed("batch1000obj", total, batches(1000, obj))
    clean_dir(spool)
    print(json.dumps(results))


# ---------------------------------------------------------------------------------------------
# Command lines: one process per message


def cli_rate(argv: list[str], msg_path: str, n: int, env: dict[str, str] | None = None) -> float:
    t0 = time.perf_counter()
    for _ in range(n):
        with open(msg_path, "rb") as stdin:
            p = subprocess.run(argv, stdin=stdin, capture_output=True, env=env, check=False)
        if p.returncode != 0:
            raise SystemExit(f"{argv} failed ({p.returncode}): {p.stderr.decode(errors='replace')}")
    return n / (time.perf_counter() - t0)


class CDma:
    """C dma's /etc/dma/dma.conf, taken only while it is Debian's, and restored."""

    TEXT = f"# Written by dma's benches/bench_api.py for the length of a run; restored after.\nSPOOLDIR {C_SPOOL}\nDEFER\n"

    def __init__(self) -> None:
        self.original: bytes | None = None

    @staticmethod
    def is_default(text: str) -> bool:
        lines = [line.strip() for line in text.splitlines()]
        return (
            "benches/" not in text
            and "DEFER" not in lines
            and not any(line.startswith("SPOOLDIR") for line in lines)
        )

    def __enter__(self) -> CDma:
        deadline = time.monotonic() + C_WAIT
        while True:
            with open(C_CONF, "rb") as f:
                original = f.read()
            if self.is_default(original.decode("utf-8", "replace")):
                break
            if time.monotonic() > deadline:
                raise SystemExit(
                    f"{C_CONF} was not Debian's default for {C_WAIT:.0f} s: another benchmark holds it"
                )
            log(f"{C_CONF} is in use by another benchmark; waiting")
            time.sleep(5)
        self.original = original
        with open(C_CONF, "wb") as f:  # in place: owner root:mail and mode 0640 stay
            f.write(self.TEXT.encode())
        return self

    def __exit__(self, *exc: object) -> None:
        if self.original is not None:
            with open(C_CONF, "wb") as f:
                f.write(self.original)
            self.original = None
        log(f"restored {C_CONF}; removed {self.clean()} files of this run from {C_SPOOL}")

    @staticmethod
    def clean() -> int:
        """Remove the Q and M files whose Recipient is this run's address, and nothing else."""
        n = 0
        for name in os.listdir(C_SPOOL):
            if not name.startswith("Q"):
                continue
            path = os.path.join(C_SPOOL, name)
            try:
                with open(path, encoding="utf-8", errors="replace") as f:
                    ours = f"Recipient: {RCPT}\n" in f.read() + "\n"
            except FileNotFoundError:
                continue
            if ours:
                for p in (path, os.path.join(C_SPOOL, "M" + name[1:])):
                    try:
                        os.unlink(p)
                        n += 1
                    except FileNotFoundError:
                        pass
        return n


# ---------------------------------------------------------------------------------------------
# Report


def facts() -> list[tuple[str, str]]:
    cpu = ""
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    with open("/proc/loadavg") as f:
        load = " ".join(f.read().split()[:3])
    try:
        head = open(os.path.join(OUT, "build-info.txt")).read().strip()
    except OSError:
        head = "?"
    c_version = subprocess.run(
        ["dpkg-query", "-W", "-f", "${Version}", "dma"], capture_output=True, text=True, check=False
    ).stdout
    fs = subprocess.run(
        ["stat", "-f", "-c", "%T", "/var/tmp"], capture_output=True, text=True, check=False
    ).stdout
    return [
        ("date", datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")),
        ("machine", f"`nproc` = {os.cpu_count()}, {cpu}, {platform.machine()}, Linux {platform.release()}"),
        ("load average at start", load),
        (
            "our dma",
            f"`pip install /work/main` (release), built at git {head}; Python {platform.python_version()}",
        ),
        ("C dma", f"Debian `dma` {c_version}"),
        ("spools", f"/var/tmp/… (ours) and {C_SPOOL} (C dma), one file system ({fs.strip()})"),
    ]


def report(
    rounds: list[dict[str, float]], args: argparse.Namespace, started: float, load: list[tuple[str, str]]
) -> str:
    med = {k: statistics.median(r[k] for r in rounds) for k in rounds[0]}
    lo = {k: min(r[k] for r in rounds) for k in rounds[0]}
    hi = {k: max(r[k] for r in rounds) for k in rounds[0]}
    c = med["c_cli"]
    rows = [
        (
            "single",
            "ours `dma.api.submit(bytes)`, one by one (each durable: fsyncs + wake check)",
            args.single,
        ),
        ("batch100", "ours `dma.api.Batch`, batches of 100 (one syncfs per batch)", args.total),
        ("batch1000", "ours `dma.api.Batch`, batches of 1000", args.total),
        (
            "batch1000obj",
            "ours `dma.api.Batch`, batches of 1000, `EmailMessage` objects (serialised by `email`)",
            args.total,
        ),
        ("our_cli", "ours `sendmail -bq` (pip console script), one process per message", args.cli),
        ("c_cli", "C dma `dma -bq`, one process per message", args.cli),
    ]
    out = [BEGIN, "## Submission from a running program (`bench_api.py`)", ""]
    out.append(
        "Written by `python benches/bench_api.py`; 1 KB message, one recipient, DEFER, nothing delivered."
    )
    out.append("")
    out += [f"- **{k}**: {v}" for k, v in load]
    out.append("")
    out.append(
        f"Durable messages per second, median of {len(rounds)} rounds (min – max); one process submits them all."
    )
    out.append("")
    out.append("| how | messages per round | msg/s (median) | min – max | ÷ C dma CLI |")
    out.append("|---|---:|---:|---:|---:|")
    for key, label, n in rows:
        out.append(
            f"| {label} | {n} | {med[key]:,.0f} | {lo[key]:,.0f} – {hi[key]:,.0f} | {med[key] / c:.1f}× |"
        )
    out.append("")
    best = max(med["batch100"], med["batch1000"])
    verdict = "met" if best >= TARGET else "NOT met"
    out.append(f"Target ≥ {TARGET:,.0f} msg/s in batch form: **{verdict}** ({best:,.0f} msg/s).")
    out.append("")
    out.append(
        "Every row is durable when it is counted: `submit` syncs each message (file, `Q` file and "
        "directory) before it returns; a batch writes its messages without the `Q` and directory "
        "syncs and makes them durable with one `syncfs` at the end of the `with` block. The spool "
        "writer still `fsync`s each message's data file in a batch (`Incoming.receive`), which is "
        "what keeps a half-written `M` file from being delivered after a machine crash; that "
        "per-message fsync is most of a batch's cost. The command-line rows include a process start "
        "per message."
    )
    out.append("")
    out.append(f"Total benchmark time: {time.monotonic() - started:.0f} s.")
    out.append(END)
    return "\n".join(out) + "\n"


def write_results(section: str) -> None:
    """Replace this benchmark's section of RESULTS.md, or append it; never touch the others."""
    try:
        with open(RESULTS) as f:
            text = f.read()
    except FileNotFoundError:
        text = "# dma benchmark results\n"
    if BEGIN in text and END in text:
        before, rest = text.split(BEGIN, 1)
        after = rest.split(END, 1)[1].lstrip("\n")
        text = before + section + ("\n" + after if after else "")
    else:
        text = text.rstrip("\n") + "\n\n" + section
    tmp = RESULTS + f".tmp{os.getpid()}"
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, RESULTS)


def build(skip: bool) -> None:
    if skip and os.path.exists(VPY):
        log("--no-build: using the existing benches/out/venv")
        return
    if not os.path.exists(VPY):
        subprocess.run([sys.executable, "-m", "venv", VENV], check=True)
    env = dict(os.environ, CARGO_TARGET_DIR=os.path.join(OUT, "target"))
    log("pip install /work/main (maturin release build)")
    subprocess.run(
        [VPY, "-m", "pip", "install", "-q", "--force-reinstall", "--no-deps", ROOT], check=True, env=env
    )
    subprocess.run([VPY, "-m", "pip", "install", "-q", ROOT], check=True, env=env)
    head = subprocess.run(
        ["git", "-C", ROOT, "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=False
    )
    dirty = subprocess.run(
        ["git", "-C", ROOT, "status", "--porcelain", "--untracked-files=no", "--", "python", "rust"],
        capture_output=True,
        text=True,
        check=False,
    )
    with open(os.path.join(OUT, "build-info.txt"), "w") as f:
        f.write(
            head.stdout.strip()
            + (" (python/ or rust/ had uncommitted changes)" if dirty.stdout else "")
            + "\n"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--no-build", action="store_true")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--single", type=int, default=1000, help="messages one by one, per round")
    parser.add_argument("--total", type=int, default=10000, help="messages in batch form, per mode and round")
    parser.add_argument("--cli", type=int, default=300, help="command-line submissions, per agent and round")
    parser.add_argument("--worker", nargs=2, metavar=("CONF", "SPOOL"), help=argparse.SUPPRESS)
    parser.add_argument("--no-results", action="store_true", help="print the report, leave RESULTS.md alone")
    args = parser.parse_args()
    if args.worker:
        worker(args.worker[0], args.worker[1], args.single, args.total)
        return
    if os.geteuid() != 0:
        raise SystemExit("run as root: C dma's configuration is /etc/dma/dma.conf")
    started = time.monotonic()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    build(args.no_build)
    load = facts()
    work = tempfile.mkdtemp(prefix="dma-bench-api-", dir="/var/tmp")
    try:
        spool = os.path.join(work, "spool")
        os.makedirs(spool)
        os.makedirs(os.path.join(work, "mail"))
        conf = os.path.join(work, "dma.conf")
        with open(conf, "w") as f:
            f.write(f"SPOOLDIR {spool}\nMBOXDIR {work}/mail\nALIASES {work}/aliases\nDEFER\n")
        open(os.path.join(work, "aliases"), "w").close()
        msg_path = os.path.join(work, "msg-1k.eml")
        with open(msg_path, "wb") as f:
            f.write(message_1k(RCPT))
        rounds: list[dict[str, float]] = []
        with CDma():
            for r in range(args.rounds):
                log(f"round {r + 1}/{args.rounds}: API in {VPY}")
                p = subprocess.run(
                    [
                        VPY,
                        os.path.abspath(__file__),
                        "--worker",
                        conf,
                        spool,
                        "--single",
                        str(args.single),
                        "--total",
                        str(args.total),
                    ],
                    capture_output=True,
                    text=True,
                    check=False,
                    cwd=work,
                )
                if p.returncode != 0:
                    raise SystemExit(f"worker failed: {p.stderr}")
                row: dict[str, float] = json.loads(p.stdout)
                log(f"round {r + 1}: our sendmail -bq x {args.cli}")
                row["our_cli"] = cli_rate(
                    [os.path.join(VENV, "bin", "sendmail"), "-C", conf, "-bq", RCPT], msg_path, args.cli
                )
                clean_dir(spool)
                log(f"round {r + 1}: C dma -bq x {args.cli}")
                row["c_cli"] = cli_rate([C_DMA, "-bq", RCPT], msg_path, args.cli)
                CDma.clean()
                log(f"round {r + 1}: " + ", ".join(f"{k} {v:,.0f}/s" for k, v in row.items()))
                rounds.append(row)
        section = report(rounds, args, started, load)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    sys.stdout.write(section)
    if not args.no_results:
        write_results(section)
        log(f"wrote its section of {RESULTS}")


if __name__ == "__main__":
    main()
