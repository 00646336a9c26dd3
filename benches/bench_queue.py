# ruff: noqa: E501, RUF001, RUF002, B007, B023
"""Queue flush: N queued messages delivered to a sink on loopback, per agent, in one run.

Run as root:  python benches/bench_queue.py [--no-build] [--quick]

For each case, each agent gets N messages queued without delivery, then its queue run is timed
until the sink has counted all N:

- ours: `dma -C conf -bq rcpt` N times (4 at a time), then `dma -C conf -q -D` (foreground runner);
  CONCURRENCY/HOST_CONCURRENCY defaults (8/2), and HOST_CONCURRENCY 4;
- C dma 0.13: `dma -bq` with DEFER, then `dma -q` (it forks one process per queued message);
- nullmailer 2.2 (unpacked, see benchlib.Nullmailer): `nullmailer-queue` N times, then start
  `nullmailer-send` and stop it once the sink has everything;
- msmtp: no queue; the time of N sequential `msmtp` invocations (not a queue flush).

Cases: 1,000 × 1 KB with STARTTLS and AUTH required (aiosmtpd sink, trustme certificate),
1,000 × 1 KB plain to Postfix's smtp-sink, and 100 × 1 MiB plain to smtp-sink. During the
STARTTLS+AUTH 1,000-message flush, /proc is sampled every 20 ms: VmRSS summed over the agent's
processes, the largest process and the most processes alive at once.

Prints Markdown tables, writes the `bench_queue` section of benches/RESULTS.md and
benches/out/queue.json (read by plot.py).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import benchlib as b

RCPT = "root@example.com"
SENDER = "bench@example.com"
TIMEOUT = 90.0
MIB = 1024 * 1024


class Run:
    def __init__(
        self, case: str, agent: str, n: int, seconds: float | None, sessions: int, note: str = ""
    ) -> None:
        self.case, self.agent, self.n, self.seconds, self.sessions, self.note = (
            case,
            agent,
            n,
            seconds,
            sessions,
            note,
        )
        self.rss: tuple[int, int, int] | None = None

    @property
    def rate(self) -> float:
        return self.n / self.seconds if self.seconds else 0.0


exit_times: dict[int, float] = {}


def flush(
    sink: b.Sink, n: int, start_cmd, sampler_match=None
) -> tuple[float | None, int, tuple[int, int, int] | None, subprocess.Popen | None]:  # type: ignore[no-untyped-def]
    """Start the flush and time it until the sink has `n` more messages."""
    m0, s0 = sink.count, sink.sessions
    sampler = b.RssSampler(sampler_match) if sampler_match else None
    if sampler:
        sampler.__enter__()
    t = time.perf_counter()
    proc = start_cmd()
    ok = sink.wait_for(m0 + n, TIMEOUT)
    dt = time.perf_counter() - t
    if sampler:
        sampler.__exit__()
    if isinstance(proc, subprocess.Popen):
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            pass
        exit_times[id(proc)] = time.perf_counter() - t
    time.sleep(0.3)  # smtp-sink counts a session when it ends
    rss = (sampler.peak_sum_kib, sampler.peak_one_kib, sampler.peak_procs) if sampler else None
    global partial
    partial = None
    if not ok:
        got = sink.count - m0
        b.log(f"timeout: sink has {got} of {n}")
        partial = (got, sink.last - t)
    return (dt if ok else None), sink.sessions - s0, rss, proc


partial: tuple[int, float] | None = None


def main() -> int:
    argv = sys.argv[1:]
    b.start(os.path.abspath(__file__), argv)
    quick = "--quick" in argv
    started = time.monotonic()
    info = b.facts()
    work = b.tls_workdir("queue")
    auth_conf = os.path.join(work, "auth.conf")
    spool = os.path.join(work, "spool")
    os.mkdir(spool, 0o700)
    os.mkdir(os.path.join(work, "mail"), 0o700)
    launcher = os.path.join(work, "dma")
    subprocess.run(
        [
            b.VPY,
            "-c",
            f"from dma.admin.install import script, write_atomically; write_atomically({launcher!r}, script('dma'), 0o755)",
        ],
        check=True,
    )
    msg1k = os.path.join(b.OUT, "msg-1k.eml")
    b.write_message(msg1k, 1024)
    msg1m = os.path.join(b.OUT, "msg-1m.eml")
    b.write_message(msg1m, MIB)
    n_small = 200 if quick else 1000
    cases = [
        ("tls", f"{n_small} × 1 KB, STARTTLS + AUTH, aiosmtpd sink", n_small, msg1k),
        ("plain", f"{n_small} × 1 KB, plain SMTP, Postfix smtp-sink", n_small, msg1k),
        ("big", "100 × 1 MiB, plain SMTP, Postfix smtp-sink", 20 if quick else 100, msg1m),
    ]
    runs: list[Run] = []
    nm_note = ""
    py_exe = os.path.realpath(b.VPY)
    try:
        with b.CDma() as cdma:
            for key, title, n, msg in cases:
                tls = key == "tls"
                sink: b.Sink = b.AioSink(tls_dir=work, auth=True) if tls else b.SmtpSink()
                with sink:
                    b.log(f"case {title}: sink on port {sink.port}")
                    # --- ours
                    for hc, verify in ((2, True), (4, True), (2, False)) if tls else ((2, False), (4, False)):
                        conf = os.path.join(work, "dma.conf")
                        lines = [
                            f"SPOOLDIR {spool}",
                            f"MBOXDIR {work}/mail",
                            "SMARTHOST 127.0.0.1",
                            f"PORT {sink.port}",
                            f"HOST_CONCURRENCY {hc}",
                        ]
                        if tls:
                            lines += [
                                "SECURETRANSFER",
                                "STARTTLS",
                                f"AUTHPATH {auth_conf}",
                                f"CAFILE {work}/ca.pem",
                            ]
                            lines += ["VERIFYCERT"] if verify else []
                        with open(conf, "w") as f:
                            f.write("\n".join(lines) + "\n")

                        def submit(_: int, conf: str = conf, msg: str = msg) -> None:
                            with open(msg, "rb") as f:
                                subprocess.run([launcher, "-C", conf, "-bq", RCPT], stdin=f, check=True)

                        b.log(f"ours HOST_CONCURRENCY {hc}: queueing {n}")
                        with ThreadPoolExecutor(4) as pool:
                            list(pool.map(submit, range(n)))
                        match = (
                            b.Match({"dma"}, exe_prefix=py_exe, cmd_has=conf)
                            if tls and hc == 2 and verify
                            else None
                        )
                        dt, sess, rss, proc = flush(
                            sink,
                            n,
                            lambda conf=conf: subprocess.Popen([launcher, "-C", conf, "-q", "-D"]),
                            match,
                        )
                        label = f"ours, HOST_CONCURRENCY {hc}" + (
                            ", VERIFYCERT" if tls and verify else ", no VERIFYCERT" if tls else ""
                        )
                        r = Run(key, label, n, dt, sess)
                        if proc is not None:
                            r.note = f"runner exited after {exit_times[id(proc)]:.2f} s (queue emptied)"
                        r.rss = rss
                        runs.append(r)
                        left = len([x for x in os.listdir(spool) if x.startswith("Q")])
                        if left:
                            r.note += f"; {left} entries left in the queue"
                        b.clean_dir(spool)
                        b.log(f"  {label}: {dt} s, {sess} connections, rss {rss}")

                    # --- C dma
                    c_lines = ["SMARTHOST 127.0.0.1", f"PORT {sink.port}", "MAILNAME /etc/mailname", "DEFER"]
                    if tls:
                        c_lines += ["SECURETRANSFER", "STARTTLS", f"AUTHPATH {auth_conf}"]
                    cdma.configure(c_lines)

                    def c_submit(_: int, msg: str = msg) -> None:
                        with open(msg, "rb") as f:
                            subprocess.run([b.C_DMA, "-bq", RCPT], stdin=f, check=True)

                    b.log(f"C dma: queueing {n}")
                    with ThreadPoolExecutor(4) as pool:
                        list(pool.map(c_submit, range(n)))
                    match = b.Match({"dma"}, exe_prefix=b.C_DMA) if tls else None
                    c_before = b.c_dma_pids()
                    dt, sess, rss, _ = flush(sink, n, lambda: subprocess.Popen([b.C_DMA, "-q"]), match)
                    r = Run(key, "C dma 0.13 (`dma -q`)", n, dt, sess)
                    if partial:
                        got, last = partial
                        r.n, r.seconds = got, last
                        r.note = f"only {got} of {n} within {TIMEOUT:.0f} s (rate = {got} / time of the last one); "
                    r.rss = rss
                    runs.append(r)
                    time.sleep(1)
                    if cdma.queued():
                        r.note += f"{cdma.queued()} still queued, {len(b.c_dma_pids() - c_before)} C dma processes still alive (retrying), killed"
                    b.kill_new_c_dma(c_before)
                    cdma.clean_spool()
                    b.log(f"  C dma: {dt} s, {sess} connections, rss {rss}")

                    # --- nullmailer
                    try:
                        with b.Nullmailer() as nm:
                            remote = f"127.0.0.1 smtp --port={sink.port}"
                            if tls:
                                remote += f" --starttls --x509cafile={work}/ca.pem --user=bench --pass=secret"
                            nm.configure(remote)
                            with open(msg, "rb") as f:
                                data = f.read()
                            b.log(f"nullmailer: queueing {n}")
                            with ThreadPoolExecutor(4) as pool:
                                list(pool.map(lambda _: nm.queue(data, SENDER, RCPT), range(n)))
                            match = b.Match({"nullmailer-send", "smtp"}, exe_prefix=nm.root) if tls else None

                            def nm_start(nm: b.Nullmailer = nm) -> None:
                                nm.start_send(os.path.join(b.OUT, "nullmailer-send.log"))

                            dt, sess, rss, _ = flush(sink, n, nm_start, match)
                            nm.stop_send()
                            r = Run(key, "nullmailer 2.2 (`nullmailer-send`)", n, dt, sess)
                            r.rss = rss
                            runs.append(r)
                            b.log(f"  nullmailer: {dt} s, {sess} connections, rss {rss}")
                    except RuntimeError as e:
                        nm_note = f"nullmailer not run: {e}"
                        b.log(nm_note)

                    # --- msmtp: N invocations in a row
                    margv = b.msmtp_argv(sink.port, SENDER, tls, f"{work}/ca.pem")
                    margv.append(RCPT)

                    def msmtp_loop(margv: list[str] = margv, msg: str = msg, n: int = n) -> None:
                        for _ in range(n):
                            with open(msg, "rb") as f:
                                subprocess.run(margv, stdin=f, check=True)

                    match = b.Match({"msmtp"}, exe_prefix=b.MSMTP) if tls else None
                    b.log("msmtp loop")
                    dt, sess, rss, _ = flush(sink, n, msmtp_loop, match)
                    r = Run(key, "msmtp 1.8 (N invocations in a row, no queue)", n, dt, sess)
                    r.rss = rss
                    runs.append(r)
                    b.log(f"  msmtp: {dt} s, {sess} connections, rss {rss}")
    finally:
        b.clean_dir(work)
        os.rmdir(work)

    # ---------------------------------------------------------------------------------------------
    with open(os.path.join(b.OUT, "queue.json"), "w") as f:
        json.dump(
            {"cases": [(k, t, n) for k, t, n, _ in cases], "runs": [r.__dict__ for r in runs]}, f, indent=1
        )
    lines = [
        "## Queue flush (`bench_queue.py`)",
        "",
        "Written by `python benches/bench_queue.py`; see benches/README.md.",
        "",
    ]
    lines += [f"- **{k}**: {v}" for k, v in info]
    lines.append(
        "- **nullmailer**: "
        + (
            nm_note
            or "Debian `nullmailer` 2.2-4, unpacked with `dpkg-deb -x` (not installed); its compiled-in /etc/nullmailer, /var/spool/nullmailer and /usr/lib/nullmailer (symlink) created for the run and removed after"
        )
    )
    lines.append("")
    summary = []
    for key, title, n, _ in cases:
        rows = [r for r in runs if r.case == key]
        c = next((r for r in rows if r.agent.startswith("C dma")), None)
        lines += [f"### {title}", ""]
        lines.append("| agent | flush (s) | messages/s | ÷ C dma | connections | note |")
        lines.append("|---|---:|---:|---:|---:|---|")
        for r in rows:
            ratio = f"{r.rate / c.rate:.2f}×" if c and c.rate and r.rate else "–"
            secs = f"{r.seconds:.2f}" if r.seconds else "timeout"
            lines.append(f"| {r.agent} | {secs} | {r.rate:,.0f} | {ratio} | {r.sessions} | {r.note} |")
        lines.append("")
        ours = next((r for r in rows if r.agent.startswith("ours, HOST_CONCURRENCY 2")), None)
        if ours and c and c.rate:
            want = 3.0 if key == "tls" else 1.0 if key == "big" else None
            if want:
                got = ours.rate / c.rate
                summary.append(
                    f"- {title}: ours (defaults) ÷ C dma = **{got:.2f}×** (target ≥ {want:g}×): {'**met**' if got >= want else '**MISSED**'}"
                )
    rss_rows = [r for r in runs if r.rss]
    lines += [
        f"### Peak memory during the {n_small}-message STARTTLS + AUTH flush (/proc sampled every 20 ms)",
        "",
    ]
    lines.append(
        "| agent | peak RSS summed over its processes (MiB) | largest process (MiB) | most processes at once |"
    )
    lines.append("|---|---:|---:|---:|")
    for r in rss_rows:
        assert r.rss
        lines.append(f"| {r.agent} | {r.rss[0] / 1024:.1f} | {r.rss[1] / 1024:.1f} | {r.rss[2]} |")
    ours_rss = next((r for r in rss_rows if r.agent.startswith("ours")), None)
    if ours_rss and ours_rss.rss:
        summary.append(
            f"- Peak RSS summed, ours: **{ours_rss.rss[0] / 1024:.1f} MiB** (target < 64 MiB): {'**met**' if ours_rss.rss[0] < 64 * 1024 else '**MISSED**'}"
        )
    lines += [
        "",
        "### Summary",
        "",
        *summary,
        "",
        "Flush time runs from starting the queue run to the sink counting the N-th message (for msmtp: N",
        'sequential invocations, process starts included; msmtp has no queue). "connections" is what the sink',
        "counted. Our runner is `dma -C conf -q -D` (foreground); C dma's `dma -q` forks one process (and one",
        "connection) per queued message. Our TLS config: `SECURETRANSFER`, `STARTTLS`, `AUTHPATH`, `CAFILE` and",
        "`VERIFYCERT` (or without it); C dma 0.13 has no certificate verification; nullmailer and msmtp verify",
        "against the trustme CA. The aiosmtpd sink is a single Python process and shares the machine's 2 cores",
        "with the agent under test.",
        "",
        f"Total time: {time.monotonic() - started:.0f} s.",
    ]
    text = "\n".join(lines) + "\n"
    sys.stdout.write(text)
    b.write_section("bench_queue", text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
