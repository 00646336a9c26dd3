# ruff: noqa: E501, RUF001
"""Submission latency, `mailq` latency and peak memory: our dma against C dma, in one run.

Run as root from anywhere:  python benches/bench_submit.py [--runs N] [--no-build]

It builds the project in release mode into benches/out/venv (pip runs maturin, which builds in
release mode, and compiles the .pyc files), writes the launcher that `dma install` writes, points
C dma (which reads only /etc/dma/dma.conf) at its default spool with DEFER for the length of the
run, and prints a Markdown report that it also writes to benches/RESULTS.md. On the way out it
restores /etc/dma/dma.conf and removes every queue file that the run created.

Nothing is delivered: every submission uses `-bq` and both configurations say DEFER.
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any

from benchlib import (
    BUILD_INFO,
    C_CONF,
    C_DMA,
    C_SPOOL,
    OUT,
    RESULTS,
    ROOT,
    VENV,
    VPY,
    CDma,
    build,
    clean_dir,
    log,
    sh,
    write_message,
)

HYPERFINE = "/usr/bin/hyperfine"
TIME = "/usr/bin/time"
RCPT = "root@example.com"

MIB = 1024 * 1024
BIG_SIZE = 100 * MIB
RSS_TARGET_KIB = 32 * 1024
LAUNCHER_TARGET = 1.5

# pip must write .pyc files, and the runs must be able to use them: this environment sets
# PYTHONDONTWRITEBYTECODE=1, which only stops writing, but we drop it for the install and the runs.
os.environ.pop("PYTHONDONTWRITEBYTECODE", None)


# ---------------------------------------------------------------------------------------------
# Inputs


def write_big(path: str, long_lines: bool) -> None:
    """100 MiB of ~80-character text lines; with `long_lines`, one 1 MiB line and a 4 KB line every ~80 KB."""
    if os.path.exists(path) and os.path.getsize(path) == BIG_SIZE:
        return
    log(f"generating {os.path.basename(path)}")
    head = f"From: root\nTo: {RCPT}\nSubject: bench 100 MiB\n\n".encode()
    lines = [
        f"{i:06d} lorem ipsum dolor sit amet, consectetur adipiscing elit, sed do eiusmod\n"
        for i in range(1000)
    ]
    block = "".join(lines).encode()  # ~80 KB of 80-character lines
    long_block = block + b"L" * 4000 + b"\n"
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        f.write(head)
        written = len(head)
        if long_lines:
            one = b"X" * MIB + b"\n"
            f.write(one)
            written += len(one)
        chunk = long_block if long_lines else block
        while written + len(chunk) < BIG_SIZE:
            f.write(chunk)
            written += len(chunk)
        rest = BIG_SIZE - written
        while rest > 80:
            f.write(b"z" * 79 + b"\n")
            rest -= 80
        f.write(b"z" * (rest - 1) + b"\n")
    os.replace(tmp, path)


# ---------------------------------------------------------------------------------------------
# Measurements


class Row:
    def __init__(self, label: str, command: str, result: dict[str, Any]) -> None:
        self.label = label
        self.command = command
        times = [float(t) for t in result["times"]]
        self.mean = float(result["mean"]) * 1e3
        self.stddev = float(result["stddev"] or 0) * 1e3
        self.median = statistics.median(times) * 1e3
        self.min = min(times) * 1e3
        self.user = float(result["user"]) * 1e3
        self.system = float(result["system"]) * 1e3
        self.runs = len(times)


def hyperfine(name: str, commands: list[tuple[str, str]], runs: int, *, shell: bool) -> tuple[list[Row], str]:
    """Time `commands` (label, command text) with hyperfine; returns the rows and the command line.

    hyperfine 1.15 (Debian) has no --input and gives commands /dev/null as standard input. Commands that
    need a message therefore run as `exec CMD < FILE` in /bin/sh (`shell`): hyperfine measures the
    shell's own start-up and subtracts it, and `exec` keeps the shell from lingering. The others run
    without a shell (`-N`), which is more precise.
    """
    out = os.path.join(OUT, f"hyperfine-{name}.json")
    args = [HYPERFINE, *(["--shell", "/bin/sh"] if shell else ["-N"]), "--warmup", "10", "--runs", str(runs)]
    args += ["--style", "basic", "--export-json", out]
    base = shlex.join(args)
    for label, cmd in commands:
        args += ["--command-name", label, cmd]
    log(f"hyperfine {name}: {len(commands)} commands x {runs} runs")
    subprocess.run(args, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    with open(out) as f:
        results = json.load(f)["results"]
    rows = [Row(label, cmd, r) for (label, cmd), r in zip(commands, results, strict=True)]
    return rows, base + " --command-name LABEL 'CMD' ..."


def spawn_rusage(argv: list[str], stdin_path: str) -> tuple[float, int]:
    """Run argv with stdin from a file; returns (wall seconds, peak RSS in KiB) of that process.

    Peak RSS comes from /usr/bin/time (`%M`, the child's ru_maxrss). Linux carries ru_maxrss across
    execve, so the process must be started by something small: forked from this Python process, every
    child would report at least this process's own RSS (~19 MiB). /usr/bin/time's floor is ~1 MiB.
    """
    fd, rss_file = tempfile.mkstemp(prefix="dma-bench-rss-")
    os.close(fd)
    try:
        with open(stdin_path, "rb") as stdin:
            t0 = time.perf_counter()
            p = subprocess.run(
                [TIME, "-f", "%M", "-o", rss_file, *argv],
                stdin=stdin,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                check=False,
            )
            wall = time.perf_counter() - t0
        if p.returncode != 0:
            err = p.stderr.decode(errors="replace").strip()
            raise SystemExit(f"{shlex.join(argv)} < {stdin_path} failed ({p.returncode}): {err}")
        with open(rss_file) as f:
            maxrss = int(f.read().split()[-1])
    finally:
        os.unlink(rss_file)
    return wall, maxrss


class MemRow:
    def __init__(
        self, label: str, argv: list[str], stdin_path: str, rss: list[int], walls: list[float]
    ) -> None:
        self.label = label
        self.command = f"{shlex.join(argv)} < {stdin_path}"
        self.size = os.path.getsize(stdin_path)
        self.rss_kib = max(rss)
        self.wall = statistics.median(walls)


def measure_memory(
    label: str, argv: list[str], stdin_path: str, reps: int, clean: Callable[[], object]
) -> MemRow:
    rss: list[int] = []
    walls: list[float] = []
    for _ in range(reps):
        wall, maxrss = spawn_rusage(argv, stdin_path)
        rss.append(maxrss)
        walls.append(wall)
        clean()
    log(f"memory {label}: {max(rss)} KiB, {statistics.median(walls):.3f} s")
    return MemRow(label, argv, stdin_path, rss, walls)


# ---------------------------------------------------------------------------------------------
# Report


def facts() -> list[tuple[str, str]]:
    cpu = ""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    try:
        with open(BUILD_INFO) as f:
            head = f.read().strip()
    except OSError:
        head = "?"
    c_version = sh(["dpkg-query", "-W", "-f", "${Version}", "dma"]) if shutil.which("dpkg-query") else "?"
    with open("/proc/loadavg") as f:
        load = " ".join(f.read().split()[:3])
    return [
        ("date", datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")),
        (
            "machine",
            f"`nproc` = {os.cpu_count()} ({len(os.sched_getaffinity(0))} usable), {cpu}, {platform.machine()}, Linux {platform.release()}",
        ),
        ("load average at start", load),
        (
            "python",
            f"{sh([VPY, '-c', 'import sys; print(sys.version.split()[0])'])} (`{os.path.realpath(VPY)}`, venv `benches/out/venv`)",
        ),
        (
            "our dma",
            f"`pip install {ROOT}`, built at git {head}: maturin release profile (thin LTO), .pyc precompiled by pip; `PYTHONDONTWRITEBYTECODE` unset for the install and every run",
        ),
        ("C dma", f"Debian `dma` {c_version} (`{C_DMA}`, setgid mail; run by root it switches to user mail)"),
        ("hyperfine", sh([HYPERFINE, "--version"])),
    ]


def fmt_ms(x: float) -> str:
    return f"{x:.2f}"


def latency_table(rows: list[Row], bare: Row, c_dma: Row) -> list[str]:
    out = [
        "| what | mean ± σ (ms) | median (ms) | min (ms) | user / sys (ms) | ÷ bare `-I -S` | ÷ C dma |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        out.append(
            f"| {r.label} | {fmt_ms(r.mean)} ± {fmt_ms(r.stddev)} | {fmt_ms(r.median)} | {fmt_ms(r.min)} | "
            f"{r.user:.1f} / {r.system:.1f} | {r.median / bare.median:.2f} | {r.median / c_dma.median:.1f} |"
        )
    return out


def commands_list(rows: list[Row]) -> list[str]:
    return [f"- {r.label}: `{r.command}`" for r in rows]


def verdict(ok: bool) -> str:
    return "**met**" if ok else "**MISSED**"


# ---------------------------------------------------------------------------------------------


def main() -> int:
    runs = 300
    skip_build = False
    argv = sys.argv[1:]
    while argv:
        a = argv.pop(0)
        if a == "--runs":
            runs = int(argv.pop(0))
        elif a == "--no-build":
            skip_build = True
        else:
            sys.stderr.write(f"usage: {sys.argv[0]} [--runs N] [--no-build]\n")
            return 2
    if os.geteuid() != 0:
        sys.stderr.write(
            "run as root: the benchmark rewrites /etc/dma/dma.conf for C dma for the length of the run\n"
        )
        return 2
    for tool in (HYPERFINE, TIME, C_DMA):
        if not os.path.exists(tool):
            sys.stderr.write(f"missing {tool}\n")
            return 2

    # A SIGTERM must still restore C dma's configuration.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    started = time.monotonic()
    os.makedirs(OUT, exist_ok=True)
    build(skip_build)
    info = facts()

    # Our configuration: a spool on the same file system as C dma's (/var), DEFER.
    work = tempfile.mkdtemp(prefix="dma-bench-", dir="/var/tmp")
    try:
        spool = os.path.join(work, "spool")
        os.mkdir(spool, 0o700)
        os.mkdir(os.path.join(work, "mail"), 0o700)
        conf = os.path.join(work, "dma.conf")
        with open(conf, "w") as f:
            f.write(f"SPOOLDIR {spool}\nMBOXDIR {work}/mail\nDEFER\n")
        launcher = os.path.join(work, "sendmail")
        subprocess.run(
            [
                VPY,
                "-c",
                f"from dma.admin.install import script, write_atomically; write_atomically({launcher!r}, script('sendmail'), 0o755)",
            ],
            check=True,
        )
        with open(launcher) as f:
            shebang = f.readline().strip()
        script = os.path.join(VENV, "bin", "sendmail")

        msg1k = os.path.join(OUT, "msg-1k.eml")
        write_message(msg1k, 1024, RCPT)
        big_long = os.path.join(OUT, "msg-100m-long-lines.eml")
        big_short = os.path.join(OUT, "msg-100m-short-lines.eml")
        write_big(big_long, long_lines=True)
        write_big(big_short, long_lines=False)

        ours_q = f"-C {conf} -bq {RCPT}"
        ours_p = f"-C {conf} -bp"
        with CDma() as cdma:
            cdma.configure([f"SPOOLDIR {C_SPOOL}", "DEFER"])
            # 3. mailq on an empty queue first, while both spools are empty.
            mailq_cmds = [
                ("bare interpreter `python -I -S -c pass`", f"{VPY} -I -S -c pass"),
                ("bare interpreter `python -c pass`", f"{VPY} -c pass"),
                ("ours, launcher `sendmail -bp`", f"{launcher} {ours_p}"),
                ("ours, pip console script `sendmail -bp`", f"{script} {ours_p}"),
                ("C dma `dma -bp`", f"{C_DMA} -bp"),
                ("`/bin/true` (floor)", "/bin/true"),
            ]
            mailq_rows, hf_mailq = hyperfine("mailq", mailq_cmds, runs, shell=False)

            # 1. Submission of 1 KB, queue only.
            submit_cmds = [
                ("bare interpreter `python -I -S -c pass`", f"exec {VPY} -I -S -c pass < {msg1k}"),
                ("bare interpreter `python -c pass`", f"exec {VPY} -c pass < {msg1k}"),
                ("ours, launcher `sendmail -bq`", f"exec {launcher} {ours_q} < {msg1k}"),
                ("ours, pip console script `sendmail -bq`", f"exec {script} {ours_q} < {msg1k}"),
                ("C dma `dma -bq`", f"exec {C_DMA} -bq {RCPT} < {msg1k}"),
                ("`/bin/true` (floor, checks the shell correction)", f"exec /bin/true < {msg1k}"),
            ]
            submit_rows, hf_submit = hyperfine("submit", submit_cmds, runs, shell=True)
            c_before = len(cdma.before)
            queued_ours = len(os.listdir(spool))
            clean_dir(spool)
            queued_c = cdma.clean_spool()

            # 2. Memory and throughput of a 100 MiB submission, 3 times each.
            def clean_ours() -> None:
                clean_dir(spool)

            mem_rows = [
                measure_memory(
                    "`/bin/true` (floor: /usr/bin/time's own RSS)", ["/bin/true"], msg1k, 3, lambda: None
                ),
                measure_memory(
                    "bare interpreter `python -I -S -c pass`",
                    [VPY, "-I", "-S", "-c", "pass"],
                    msg1k,
                    3,
                    lambda: None,
                ),
                measure_memory("ours, launcher, 1 KB", [launcher, *ours_q.split()], msg1k, 3, clean_ours),
                measure_memory("C dma, 1 KB", [C_DMA, "-bq", RCPT], msg1k, 3, cdma.clean_spool),
                measure_memory(
                    "ours, launcher, 100 MiB with long lines",
                    [launcher, *ours_q.split()],
                    big_long,
                    3,
                    clean_ours,
                ),
                measure_memory(
                    "ours, launcher, 100 MiB short lines",
                    [launcher, *ours_q.split()],
                    big_short,
                    3,
                    clean_ours,
                ),
                measure_memory(
                    "ours, pip console script, 100 MiB short lines",
                    [script, *ours_q.split()],
                    big_short,
                    3,
                    clean_ours,
                ),
                measure_memory(
                    "C dma, 100 MiB short lines", [C_DMA, "-bq", RCPT], big_short, 3, cdma.clean_spool
                ),
            ]
    finally:
        shutil.rmtree(work, ignore_errors=True)

    # Report.
    s = {r.label: r for r in submit_rows}
    q = {r.label: r for r in mailq_rows}
    bare_s, c_s = submit_rows[0], s["C dma `dma -bq`"]
    bare_q, c_q = mailq_rows[0], q["C dma `dma -bp`"]
    launch_ratio = s["ours, launcher `sendmail -bq`"].median / bare_s.median
    big_ours = [m for m in mem_rows if m.label.startswith("ours") and m.size == BIG_SIZE]
    worst_rss = max(m.rss_kib for m in big_ours)

    lines = ["# dma benchmark results", ""]
    lines.append(
        "Written by `python benches/bench_submit.py`; see benches/README.md for what each number means."
    )
    lines.append("")
    for k, v in info:
        lines.append(f"- **{k}**: {v}")
    lines.append(
        f"- **launcher** written by `dma.admin.install.write_atomically(path, script('sendmail'), 0o755)`: shebang `{shebang}`"
    )
    lines.append(
        f"- **our config**: `SPOOLDIR <tmp>/spool`, `MBOXDIR <tmp>/mail`, `DEFER` (tmp under /var/tmp, same ext4 file system as {C_SPOOL})"
    )
    lines.append(
        f"- **C dma config** for the run: `SPOOLDIR {C_SPOOL}`, `DEFER` in {C_CONF} (original restored afterwards)"
    )
    lines += ["", "## Summary", ""]
    lines.append(
        f"- Submission, launcher ÷ bare `python -I -S -c pass` (medians): **{launch_ratio:.2f}** (target ≤ {LAUNCHER_TARGET}): {verdict(launch_ratio <= LAUNCHER_TARGET)}"
    )
    lines.append(
        f"- Submission, launcher ÷ C dma: **{s['ours, launcher `sendmail -bq`'].median / c_s.median:.1f}×**; console script ÷ C dma: **{s['ours, pip console script `sendmail -bq`'].median / c_s.median:.1f}×**"
    )
    lines.append(
        f"- Peak RSS submitting 100 MiB: **{worst_rss / 1024:.1f} MiB** (target < 32 MiB): {verdict(worst_rss < RSS_TARGET_KIB)}"
    )
    lines += ["", f"## 1. Submission latency, 1 KB message, queue only (`-bq`, DEFER), {runs} runs each", ""]
    lines += latency_table(submit_rows, bare_s, c_s)
    lines += [
        "",
        f"Ratios are of medians. The run queued {queued_ours} files in our spool and {queued_c} in C dma's; all removed.",
        "",
    ]
    lines += [f"## 2. `mailq` (`-bp`) latency on an empty queue, {runs} runs each", ""]
    if c_before:
        lines += [
            f"**Not empty**: {C_SPOOL} held {c_before} files before the run, so C dma's queue was not empty.",
            "",
        ]
    lines += latency_table(mailq_rows, bare_q, c_q)
    lines += ["", "## 3. Peak memory and throughput (`-bq`), 3 runs each", ""]
    lines.append("| what | input | peak RSS (MiB) | wall, median (s) | throughput (MB/s) |")
    lines.append("|---|---:|---:|---:|---:|")
    for m in mem_rows:
        size = f"{m.size // MIB} MiB" if m.size >= MIB else f"{m.size} B"
        thr = f"{m.size / m.wall / 1e6:.0f}" if m.size >= MIB else "–"
        lines.append(f"| {m.label} | {size} | {m.rss_kib / 1024:.1f} | {m.wall:.3f} | {thr} |")
    lines += [
        "",
        "Peak RSS is `%M` of `/usr/bin/time` (ru_maxrss of the submitting process; Linux keeps it across",
        "exec, hence the ~1 MiB floor of /usr/bin/time itself). C dma refuses lines",
        "over 997 bytes, so it gets the short-lines file only (~80-character lines); the long-lines file adds",
        "a 1 MiB line and a 4,000-byte line every ~80 KB. Wall time includes process start and every fsync.",
        "",
        "## Exact commands",
        "",
        f"hyperfine, submission: `{hf_submit}` (`/bin/sh` start-up is measured and subtracted by hyperfine).",
        "",
        f"hyperfine, mailq: `{hf_mailq}`.",
        "",
        "Submission:",
        "",
        *commands_list(submit_rows),
        "",
        "mailq:",
        "",
        *commands_list(mailq_rows),
        "",
        "Memory:",
        "",
        *[f"- {m.label}: `{m.command}`" for m in mem_rows],
        "",
        f"Total benchmark time: {time.monotonic() - started:.0f} s.",
        "",
    ]
    text = "\n".join(lines)
    # Keep the sections other scripts own (bench_transport.py, bench_queue.py).
    from benchlib import marked_sections

    try:
        with open(RESULTS) as f:
            kept = marked_sections(f.read())
    except FileNotFoundError:
        kept = ""
    with open(RESULTS, "w") as f:
        f.write(text + ("\n" + kept if kept else ""))
    sys.stdout.write(text)
    log(f"wrote {RESULTS}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
