# ruff: noqa: E501, RUF001
"""Durable messages per second queued from ONE running Python process through `dma.api`, one by one
and in batches (`dma.api.Batch`, one syncfs per batch), next to the command-line rate of our
`sendmail -bq` and of C dma's `dma -bq` (one process per message), all in one run, on two file
systems: this machine's own (ext4 mounted without a journal) and a standard ext4 with a journal
(`mkfs.ext4` on a loop device), which is what Debian and Ubuntu install.

Run as root from anywhere:  python benches/bench_api.py [--no-build] [--rounds 3]

It builds the project in release mode into benches/out/venv (as bench_submit.py does), re-runs
itself with that venv's interpreter and prints a Markdown report that it also writes into its own
section of benches/RESULTS.md (the other sections are left as they are).

Every mode of every round writes into a spool directory of its own, created just before it, and
nothing is deleted until the end of the run. The spools' parent has ext4's top-directory flag
(`chattr +T`), so each spool lands in an inode group of its own: on ext4 without a journal, creating
a file among inodes freed in the last minutes costs about 0.5 ms of CPU (the allocator checks each
recently freed inode before it passes over it), which would measure what was deleted nearby
instead of the submitter. One row measures that case on purpose, after all the others: a spool
whose files were all just delivered (deleted).

C dma 0.13 reads only /etc/dma/dma.conf: it is rewritten in place (`SPOOLDIR <fresh dir>` + `DEFER`)
for the C dma runs and restored at the end, also on SIGINT/SIGTERM. Nothing is delivered: every
configuration says DEFER and the command lines use `-bq`.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any

from benchlib import C_DMA, OUT, VENV, CDma, facts, log, start, write_message, write_section

RCPT = "bench-api@example.com"
TARGET = 2000.0
LOOP_IMAGE_GIB = 4

MODES = [
    ("single", "ours `dma.api.submit(bytes)`, one by one (each durable: fsyncs + wake check)"),
    ("batch100", "ours `dma.api.Batch`, batches of 100 (one syncfs per batch)"),
    ("batch1000", "ours `dma.api.Batch`, batches of 1000"),
    ("batch1000obj", "ours `dma.api.Batch`, batches of 1000, `EmailMessage` objects (serialised by `email`)"),
    (
        "batch100_reused",
        "ours `dma.api.Batch`, batches of 100, into a spool whose 10,000 files were just deleted",
    ),
    ("our_cli", "ours `sendmail -bq` (pip console script), one process per message"),
    ("c_cli", "C dma `dma -bq`, one process per message"),
]


def fresh_spool(base: str, name: str) -> str:
    """A new spool directory and a dma.conf for it; returns the config's path."""
    spool = os.path.join(base, name)
    os.makedirs(spool)
    conf = spool + ".conf"
    with open(conf, "w") as f:
        f.write(f"SPOOLDIR {spool}\nMBOXDIR {base}/mail\nALIASES {base}/aliases\nDEFER\n")
    return conf


def queued(conf: str) -> int:
    spool = conf.removesuffix(".conf")
    return sum(1 for name in os.listdir(spool) if name.startswith("Q"))


def submit_batches(cfg: Any, n: int, size: int, message: Any) -> None:
    """`n` messages through `dma.api.Batch`, `size` to a batch."""
    from dma import api

    for _ in range(n // size):
        with api.Batch(cfg) as batch:
            for _ in range(size):
                batch.submit(message, recipients=[RCPT])


def timed(conf: str, n: int, run: Callable[[Any], None]) -> float:
    """Messages per second of `run(config)`, which must queue `n` messages into `conf`'s spool."""
    from dma import config

    cfg = config.Config(conf)
    os.sync()
    t0 = time.perf_counter()
    run(cfg)
    rate = n / (time.perf_counter() - t0)
    assert queued(conf) == n, (conf, queued(conf))
    return rate


def api_rates(base: str, tag: str, args: argparse.Namespace, message: bytes) -> dict[str, float]:
    """Our API's modes, each into its own fresh spool: messages per second."""
    from email import message_from_bytes, policy

    from dma import api

    obj = message_from_bytes(message, policy=policy.default)

    def one_by_one(cfg: Any) -> None:
        for _ in range(args.single):
            api.submit(message, recipients=[RCPT], config=cfg)

    runs: dict[str, tuple[int, Callable[[Any], None]]] = {
        "single": (args.single, one_by_one),
        "batch100": (args.total, lambda cfg: submit_batches(cfg, args.total, 100, message)),
        "batch1000": (args.total, lambda cfg: submit_batches(cfg, args.total, 1000, message)),
        "batch1000obj": (args.total, lambda cfg: submit_batches(cfg, args.total, 1000, obj)),
    }
    return {mode: timed(fresh_spool(base, f"{tag}-{mode}"), n, run) for mode, (n, run) in runs.items()}


def reused_rate(base: str, tag: str, args: argparse.Namespace, message: bytes) -> float:
    """A busy spool: batches of 100 into a spool whose as many messages were just delivered
    (removed) by a runner."""
    from dma import config

    conf = fresh_spool(base, f"{tag}-reused")
    submit_batches(config.Config(conf), args.total, 100, message)
    spool = conf.removesuffix(".conf")
    for name in os.listdir(spool):
        os.unlink(os.path.join(spool, name))
    return timed(conf, args.total, lambda cfg: submit_batches(cfg, args.total, 100, message))


def cli_rate(argv: list[str], msg_path: str, n: int) -> float:
    t0 = time.perf_counter()
    for _ in range(n):
        with open(msg_path, "rb") as stdin:
            p = subprocess.run(argv, stdin=stdin, capture_output=True, check=False)
        if p.returncode != 0:
            raise SystemExit(f"{argv} failed ({p.returncode}): {p.stderr.decode(errors='replace')}")
    return n / (time.perf_counter() - t0)


def measure(base: str, rounds: int, args: argparse.Namespace, c_dma: CDma) -> list[dict[str, float]]:
    """Every mode, `rounds` times, in fresh spools under `base`."""
    os.makedirs(os.path.join(base, "mail"))
    # Spread the spools over the file system (ext4's Orlov allocator, as for top-level
    # directories): no spool starts among the inodes that earlier work nearby has just freed.
    subprocess.run(["chattr", "+T", base], check=True)
    open(os.path.join(base, "aliases"), "w").close()
    msg_path = os.path.join(base, "msg-1k.eml")
    write_message(msg_path, 1024, RCPT)
    with open(msg_path, "rb") as f:
        message = f.read()
    results = []
    for r in range(rounds):
        tag = f"r{r + 1}"
        row = api_rates(base, tag, args, message)
        conf = fresh_spool(base, f"{tag}-our_cli")
        row["our_cli"] = cli_rate(
            [os.path.join(VENV, "bin", "sendmail"), "-C", conf, "-bq", RCPT], msg_path, args.cli
        )
        c_spool = fresh_spool(base, f"{tag}-c_cli").removesuffix(".conf")
        # C dma, started by root, runs as user and group mail: its spool is made as Debian makes it.
        shutil.chown(c_spool, "root", "mail")
        os.chmod(c_spool, 0o2770)
        c_dma.configure([f"SPOOLDIR {c_spool}", "DEFER"])
        row["c_cli"] = cli_rate([C_DMA, "-bq", RCPT], msg_path, args.cli)
        log(f"{base} round {r + 1}/{rounds}: " + ", ".join(f"{k} {v:,.0f}/s" for k, v in row.items()))
        results.append(row)
    # Last, since its deletions would slow down every spool placed near them afterwards.
    for r, row in enumerate(results):
        row["batch100_reused"] = reused_rate(base, f"r{r + 1}", args, message)
        log(f"{base} round {r + 1}/{rounds}: batch100_reused {row['batch100_reused']:,.0f}/s")
    return results


class JournaledExt4:
    """A sparse image file formatted by `mkfs.ext4` (with its default journal) and loop-mounted."""

    def __init__(self, work: str) -> None:
        self.image = os.path.join(work, "ext4.img")
        self.mountpoint = os.path.join(work, "ext4")
        self.mounted = False

    def __enter__(self) -> str | None:
        """The mount point, or None when this machine cannot loop-mount (the reason is logged)."""
        os.makedirs(self.mountpoint)
        with open(self.image, "wb") as f:
            f.truncate(LOOP_IMAGE_GIB << 30)
        # -N: every round keeps its files, two inodes per message. The inode tables are written
        # now rather than by the kernel during the run, as on a file system in service.
        for argv in (
            [
                "mkfs.ext4",
                "-q",
                "-F",
                "-N",
                "1000000",
                "-E",
                "lazy_itable_init=0,lazy_journal_init=0",
                self.image,
            ],
            ["mount", "-o", "loop", self.image, self.mountpoint],
        ):
            p = subprocess.run(argv, capture_output=True, text=True, check=False)
            if p.returncode != 0:
                log(f"{' '.join(argv)} failed: {p.stderr.strip()}")
                return None
        self.mounted = True
        return self.mountpoint

    def __exit__(self, *exc: object) -> None:
        if self.mounted:
            subprocess.run(["umount", self.mountpoint], check=False)


def fs_kind(path: str) -> str:
    """`ext4, no journal` and the like, for the file system holding `path`."""
    device, kind, point = "", "?", ""
    with open("/proc/self/mounts") as f:
        for line in f:
            dev, mnt, fstype = line.split()[:3]
            if (path + "/").startswith(mnt.rstrip("/") + "/") and len(mnt) >= len(point):
                device, kind, point = dev, fstype, mnt
    if kind != "ext4":
        return kind
    # A journaled ext4 has a jbd2 directory named after its device (`vda-8`, `loop0-8`).
    name = os.path.basename(os.path.realpath(device))
    jbd2 = os.listdir("/proc/fs/jbd2") if os.path.isdir("/proc/fs/jbd2") else []
    return "ext4, with a journal" if any(e.startswith(name + "-") for e in jbd2) else "ext4, no journal"


def table(title: str, rounds: list[dict[str, float]], args: argparse.Namespace) -> list[str]:
    counts = {"single": args.single, "our_cli": args.cli, "c_cli": args.cli}
    med = {k: statistics.median(r[k] for r in rounds) for k in rounds[0]}
    out = [
        f"### {title}",
        "",
        "| how | messages per round | msg/s (median) | min – max | ÷ C dma CLI |",
        "|---|---:|---:|---:|---:|",
    ]
    for key, label in MODES:
        values = [r[key] for r in rounds]
        out.append(
            f"| {label} | {counts.get(key, args.total)} | {med[key]:,.0f} | {min(values):,.0f} – {max(values):,.0f} | {med[key] / med['c_cli']:.1f}× |"
        )
    best = max(med["batch100"], med["batch1000"])
    verdict = "met" if best >= TARGET else "NOT met"
    out += ["", f"Target ≥ {TARGET:,.0f} msg/s in batch form: **{verdict}** ({best:,.0f} msg/s).", ""]
    return out


def report(
    results: list[tuple[str, list[dict[str, float]]]],
    args: argparse.Namespace,
    started: float,
    about: list[tuple[str, str]],
) -> str:
    out = ["## Submission from a running program (`bench_api.py`)", ""]
    out.append(
        "Written by `python benches/bench_api.py`; 1 KB message, one recipient, DEFER, nothing delivered."
    )
    out.append("")
    out += [f"- **{k}**: {v}" for k, v in about]
    out += [
        "",
        f"Durable messages per second, median of {args.rounds} rounds (min – max); one process submits them all.",
        "",
    ]
    for title, rounds in results:
        out += table(title, rounds, args)
    out.append(
        "Every row is durable when it is counted: `submit` syncs each message (message file, `Q` "
        "file and directory) before it returns; a batch writes its messages without syncing and "
        "makes them all durable with one `syncfs` when the `with` block ends. The command-line "
        "rows include a process start per message. Each mode writes into a fresh spool directory "
        "(placed in an inode group of its own by `chattr +T` on their parent), except the row "
        "that says otherwise, measured after all the others. Without a journal, ext4 will not "
        "reuse an inode freed less than a minute ago (six while its inode table block is not "
        "yet written back, and every new file there dirties it again), and it checks each such "
        "inode before passing over it: for some minutes after thousands of files were deleted "
        "in a group, each new file there costs about 0.5 ms of kernel CPU (`perf`: "
        "`recently_deleted` under `find_inode_bit`). That row shows what a spool being emptied by "
        "a runner at the same rate costs there; deletions made shortly before the run (by other "
        "benchmarks) slow down whichever spools land in their groups, which is why the rows on "
        "that file system vary between runs. A journaled ext4 makes no such check."
    )
    out += ["", f"Total benchmark time: {time.monotonic() - started:.0f} s."]
    return "\n".join(out) + "\n"


def main() -> None:
    start(os.path.abspath(__file__), sys.argv[1:])
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--no-build", action="store_true")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--single", type=int, default=1000, help="messages one by one, per round")
    parser.add_argument("--total", type=int, default=10000, help="messages in batch form, per mode and round")
    parser.add_argument("--cli", type=int, default=300, help="command-line submissions, per agent and round")
    parser.add_argument("--no-results", action="store_true", help="print the report, leave RESULTS.md alone")
    args = parser.parse_args()
    started = time.monotonic()
    about = facts()
    results: list[tuple[str, list[dict[str, float]]]] = []
    work = tempfile.mkdtemp(prefix="dma-bench-api-", dir="/var/tmp")
    os.chmod(work, 0o711)  # C dma, running as mail, goes through it
    try:
        with CDma() as c_dma:
            own = os.path.join(work, "own")
            title = f"This machine's file system: /var/tmp, {fs_kind(work)}"
            results.append((title, measure(own, args.rounds, args, c_dma)))
            with JournaledExt4(work) as mountpoint:
                if mountpoint is None:
                    about.append(
                        (
                            "ext4 with a journal",
                            "not measured: this machine could not loop-mount an image (see the log)",
                        )
                    )
                else:
                    title = f"A loop-mounted {LOOP_IMAGE_GIB} GiB image made by `mkfs.ext4 -N 1000000 -E lazy_itable_init=0`: {fs_kind(mountpoint)}"
                    results.append(
                        (title, measure(os.path.join(mountpoint, "run"), args.rounds, args, c_dma))
                    )
        section = report(results, args, started, about)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    sys.stdout.write(section)
    if not args.no_results:
        write_section("bench_api", section)


if __name__ == "__main__":
    os.makedirs(OUT, exist_ok=True)
    main()
