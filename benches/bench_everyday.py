# ruff: noqa: E501, RUF001
"""The everyday path: N sequential `sendmail` calls, each delivered at once (no DEFER), side by
side for our dma (pip's installed `sendmail` script), C dma, nullmailer and msmtp, plus 8 programs
calling `sendmail` at once.

Run as root:  python benches/bench_everyday.py [--no-build] [--quick]

For each agent and case: messages per second until the sink has them all, connections used, CPU
seconds per 1,000 messages summed over every process of the agent (a cpuacct cgroup that each call,
and nullmailer-send, is born in: the runner a call forks, and C dma's delivery children, are
counted, the sink is not), submit latency (median; p99), and the time from `sendmail` returning to
the sink's 250 for that message (median, p99; 0 when the agent delivers before it returns). Ours
also runs with `-bq` (queue only), the reference for what delivery adds, in alternating rounds.
Writes the `bench_everyday` section of RESULTS.md.
"""

from __future__ import annotations

import contextlib
import os
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Iterator

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import benchlib as b

SENDER = "bench@example.com"
RCPT = "someone@example.net"
CGROUP = "/sys/fs/cgroup/cpuacct"
PARALLEL = 8
TIMEOUT = 300.0
FLOOR_CALLS = 200
DELIVERED, QUEUED = "ours (pip's `sendmail`)", "ours, `-bq` (queue only)"


class Timed(b.AioSink):
    """The aiosmtpd sink, with the time each message was accepted (it prints after every one)."""

    def __init__(self, **kw: object) -> None:
        self.accepted: list[float] = []
        super().__init__(**kw)  # type: ignore[arg-type]

    def _update(self, count: int, sessions: int) -> None:
        now = time.perf_counter()
        self.accepted += [now] * (count - len(self.accepted))
        super()._update(count, sessions)


def move_to(cgroup: str) -> None:
    """Move this process, every thread of it, into `cgroup`."""
    with open(os.path.join(cgroup, "cgroup.procs"), "w") as f:
        f.write(str(os.getpid()))


class Cgroup:
    """A cpuacct cgroup (v1) for one agent's processes. The harness joins it while it starts them, so
    that they are born in it, and its own CPU meanwhile is taken off: moving each call in instead
    (a write to cgroup.procs) stalls every fork and thread start on the machine while it lasts, our
    runner's among them, which no caller of `sendmail` does to it (it cost us 30 % against `-bq`)."""

    def __init__(self, name: str) -> None:
        self.path = os.path.join(CGROUP, f"dma-bench-{os.getpid()}-{name}")
        os.mkdir(self.path)
        self.harness = 0.0

    @contextlib.contextmanager
    def joined(self) -> Iterator[None]:
        move_to(self.path)
        before = time.process_time()
        try:
            yield
        finally:
            self.harness += time.process_time() - before
            move_to(CGROUP)

    def drain(self, timeout: float = 30.0) -> None:
        """Wait for every process in the group to exit (our runner lingers)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with open(os.path.join(self.path, "cgroup.procs")) as f:
                if not f.read().split():
                    return
            time.sleep(0.1)

    def cpu_seconds(self) -> float:
        with open(os.path.join(self.path, "cpuacct.usage")) as f:
            return int(f.read()) / 1e9 - self.harness

    def remove(self) -> None:
        self.drain(10)
        with contextlib.suppress(OSError):
            os.rmdir(self.path)


def pct(xs: list[float], p: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(p * len(xs)))] if xs else float("nan")


class Run:
    """One agent in one case; ours is measured in several rounds, summed here."""

    def __init__(self, case: str, agent: str) -> None:
        self.case, self.agent = case, agent
        self.msgs, self.seconds, self.cpu = 0, 0.0, 0.0
        self.sessions = 0
        self.latency: list[float] = []
        self.delay: list[float] = []
        self.rounds: list[tuple[float, float]] = []  # per measurement: seconds, median latency
        self.note = ""

    def row(self) -> str:
        def ms(x: float) -> str:
            return f"{x * 1000:.1f}"

        rate = self.msgs / self.seconds if self.seconds else float("nan")
        cpu = self.cpu / self.msgs * 1000 if self.msgs else float("nan")
        lat = (
            f"{ms(statistics.median(self.latency))} / {ms(pct(self.latency, 0.99))}" if self.latency else "–"
        )
        delay = f"{ms(statistics.median(self.delay))} / {ms(pct(self.delay, 0.99))}" if self.delay else "–"
        return (
            f"| {self.case} | {self.agent} | {rate:.0f} | {self.sessions} | {cpu:.1f} "
            f"| {lat} | {delay} | {self.note} |"
        )


def ratios(delivered: Run, queued: Run) -> str:
    """A row of the delivery ÷ `-bq` table: time and median submit latency, round by round."""

    def spread(xs: list[float]) -> str:
        return f"{statistics.median(xs):.3f} ({min(xs):.3f}–{max(xs):.3f})"

    pairs = list(zip(delivered.rounds, queued.rounds, strict=False))
    if not pairs:
        return f"| {delivered.case} | 0 | – | – |"
    took = [d[0] / q[0] for d, q in pairs]
    latency = [d[1] / q[1] for d, q in pairs]
    return f"| {delivered.case} | {len(pairs)} | {spread(took)} | {spread(latency)} |"


def measure(
    run: Run,
    n: int,
    sink: Timed,
    call: list[str],
    msg: str,
    env: dict[str, str],
    group: Cgroup,
    *,
    parallel: int = 1,
    delivered: bool = True,
) -> None:
    """`n` calls of `call` (in `parallel` programs at once), each with the message on stdin."""
    returned: list[float] = [0.0] * n
    lock = threading.Lock()
    next_i = [0]

    def program() -> None:
        while True:
            with lock:
                i = next_i[0]
                next_i[0] += 1
            if i >= n:
                return
            with open(msg, "rb") as f:
                t0 = time.perf_counter()
                subprocess.run(call, stdin=f, env=env, check=True)
                returned[i] = time.perf_counter()
                run.latency.append(returned[i] - t0)

    threads = [threading.Thread(target=program) for _ in range(parallel)]
    with group.joined():
        start = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    latency = statistics.median(run.latency[-n:])
    if not delivered:  # queue only: the time of the calls themselves
        run.msgs += n
        run.seconds += max(returned) - start
        run.rounds.append((max(returned) - start, latency))
        run.note = "queued only, nothing delivered"
        return
    if not sink.wait_for(n, TIMEOUT):
        run.note = f"only {sink.count} of {n} within {TIMEOUT:.0f} s"
    end = sink.accepted[-1] if sink.accepted else time.perf_counter()
    run.msgs += len(sink.accepted)
    run.seconds += end - start
    run.rounds.append((end - start, latency))
    run.sessions = max(run.sessions, sink.sessions)
    if parallel == 1:
        # Sequential calls: the k-th message accepted is the k-th submitted.
        run.delay += [max(0.0, a - r) for a, r in zip(sink.accepted, returned, strict=False)]


def main() -> int:
    b.start(__file__, sys.argv[1:])
    quick = "--quick" in sys.argv
    sizes = [200] if quick else [200, 1000]
    work = b.tls_workdir("everyday")
    auth_conf = os.path.join(work, "auth.conf")
    msg = os.path.join(work, "msg")
    b.write_message(msg, 1024, RCPT)
    nm_msg = os.path.join(work, "nm_msg")
    with open(msg, "rb") as f, open(nm_msg, "wb") as out:
        out.write(f"{SENDER}\n{RCPT}\n\n".encode() + f.read())
    sendmail = os.path.join(b.VENV, "bin", "sendmail")
    runs: dict[tuple[str, str], Run] = {}
    cases = [(f"{n} × 1 KB, {mode}", n, mode, 1) for mode in ("plain", "STARTTLS + AUTH") for n in sizes]
    cases.append((f"{PARALLEL} programs × 25, plain", PARALLEL * 25, "plain", PARALLEL))
    env = {k: v for k, v in os.environ.items() if not k.startswith("DMA_")}
    floor = Cgroup("floor")  # what starting Python costs, in the same accounting
    with floor.joined():
        for _ in range(FLOOR_CALLS):
            subprocess.run([b.VPY, "-I", "-S", "-c", "pass"], check=True)
    floor_ms = floor.cpu_seconds() / FLOOR_CALLS * 1000
    floor.remove()
    try:
        with b.CDma() if os.path.exists(b.C_DMA) else contextlib.nullcontext() as cdma:
            for case, n, mode, parallel in cases:
                tls = mode != "plain"

                agents: list[tuple[str, list[str], dict[str, str], object]] = []
                # --- ours, immediate delivery, and queue only (-bq)
                spool = os.path.join(work, "spool")
                os.makedirs(spool, exist_ok=True)
                conf = os.path.join(work, "dma.conf")
                ours_env = dict(env, DMA_CONF=conf)
                ours = [
                    (label, [sendmail, *extra, "-f", SENDER, RCPT], ours_env, "ours")
                    for label, extra in ((DELIVERED, []), (QUEUED, ["-bq"]))
                ]
                # Delivery's share is a few per cent, inside what one run moves: rounds, the two
                # in alternating order (ABBA), compared round by round.
                for r in range(max(2, 1200 // n)):
                    agents += ours if r % 2 == 0 else ours[::-1]
                agents.append(("C dma 0.13", [b.C_DMA, "-f", SENDER, RCPT], env, "c"))
                agents.append(("msmtp 1.8", [b.MSMTP], env, "msmtp"))
                agents.append(("nullmailer 2.2", [], env, "nullmailer"))
                for label, call, agent_env, kind in agents:
                    if (case, label) not in runs:
                        runs[case, label] = Run(case, label)
                    run = runs[case, label]
                    missing = {"c": b.C_DMA, "msmtp": b.MSMTP}.get(str(kind))
                    if missing and not os.path.exists(missing):
                        run.note = f"not run: {missing} is not installed"
                        continue
                    group = Cgroup(str(kind).replace(" ", ""))
                    s = Timed(tls_dir=work if tls else None, auth=tls)
                    b.log(f"{case}: {label}")
                    try:
                        if kind == "ours":
                            lines = [
                                f"SPOOLDIR {spool}",
                                "SMARTHOST 127.0.0.1",
                                f"PORT {s.port}",
                                "MAILNAME bench.example.com",
                            ]
                            if tls:
                                lines += [
                                    "SECURETRANSFER",
                                    "STARTTLS",
                                    f"AUTHPATH {auth_conf}",
                                    f"CAFILE {work}/ca.pem",
                                    "VERIFYCERT",
                                ]
                            with open(conf, "w") as f:
                                f.write("\n".join(lines) + "\n")
                            measure(
                                run,
                                n,
                                s,
                                call,
                                msg,
                                agent_env,
                                group,
                                parallel=parallel,
                                delivered="-bq" not in call,
                            )
                            group.drain()
                            b.clean_dir(spool)
                        elif kind == "c":
                            c_lines = ["SMARTHOST 127.0.0.1", f"PORT {s.port}", "MAILNAME /etc/mailname"]
                            if tls:
                                c_lines += ["SECURETRANSFER", "STARTTLS", f"AUTHPATH {auth_conf}"]
                            assert cdma is not None
                            cdma.configure(c_lines)
                            before = b.c_dma_pids()
                            measure(run, n, s, call, msg, agent_env, group, parallel=parallel)
                            group.drain(10)
                            if b.kill_new_c_dma(before):
                                run.note += " C dma processes still retrying, killed"
                            cdma.clean_spool()
                        elif kind == "msmtp":
                            margv = b.msmtp_argv(s.port, SENDER, tls, f"{work}/ca.pem")
                            measure(run, n, s, [*margv, RCPT], msg, agent_env, group, parallel=parallel)
                        else:
                            with b.Nullmailer() as nm:
                                remote = f"127.0.0.1 smtp --port={s.port}"
                                if tls:
                                    remote += (
                                        f" --starttls --x509cafile={work}/ca.pem --user=bench --pass=secret"
                                    )
                                nm.configure(remote)
                                log = os.path.join(b.OUT, "nullmailer-send.log")
                                with open(log, "ab") as out, group.joined():
                                    nm.send = subprocess.Popen(
                                        [os.path.join(nm.root, "usr/sbin/nullmailer-send")],
                                        stdout=out,
                                        stderr=out,
                                    )
                                # Its `sendmail` execs a compiled-in /usr/sbin/nullmailer-queue, absent
                                # here: call nullmailer-queue itself (envelope lines, blank line, message).
                                queue = os.path.join(nm.root, "usr/sbin/nullmailer-queue")
                                measure(run, n, s, [queue], nm_msg, agent_env, group, parallel=parallel)
                                nm.stop_send()
                        run.cpu += group.cpu_seconds()
                    except (OSError, RuntimeError, subprocess.CalledProcessError) as e:
                        run.note = f"not run: {e}"
                    finally:
                        s.stop()
                        group.remove()
                    b.log(f"  {run.row()}")
    finally:
        b.clean_dir(work)
        os.rmdir(work)
    try:
        facts = b.facts()
    except (OSError, subprocess.CalledProcessError) as e:  # C dma or msmtp missing
        facts = [("facts", f"incomplete: {e}")]
    lines = [
        "## The everyday path: one `sendmail` per message, delivered at once (`bench_everyday.py`)",
        "",
        *(f"- {k}: {v}" for k, v in facts),
        "",
        "Sink: aiosmtpd on loopback (STARTTLS and AUTH required in the STARTTLS rows). Ours: pip's",
        "installed `sendmail` script, default `LINGER`, `VERIFYCERT` with STARTTLS. CPU: a cpuacct",
        "cgroup around every process of the agent (for ours the runner the first call forks; for C dma",
        "its delivery children; for nullmailer `nullmailer-queue` and `nullmailer-send`), which the",
        "harness joins to start the calls, its own CPU taken off; no call is moved into it, as a caller",
        "of `sendmail` does not (a move stalls every fork and thread start meanwhile). Rate: messages",
        "÷ time from the first call to the sink's last 250. Delay: from a call returning to the sink's",
        "250 for that message (0 if the agent delivered before returning). The floor: a bare",
        f"`python -I -S -c pass` took {floor_ms:.1f} ms of CPU per call, in the same accounting.",
        "",
        "| case | agent | msg/s | connections | CPU s / 1,000 msgs | submit ms median / p99 | returned → 250 ms median / p99 | note |",
        "|---|---|---:|---:|---:|---:|---:|---|",
        *(r.row() for r in runs.values()),
        "",
        "Ours ran with and without delivery in rounds, in alternating order (ABBA), and its rows sum",
        "them. What delivery adds, round by round (median of the rounds, and their range): the time",
        "until the sink has every message ÷ the time of the same calls with `-bq`, and the median",
        "submit latency ÷ `-bq`'s.",
        "",
        "| case | rounds | time ÷ `-bq`'s | submit latency ÷ `-bq`'s |",
        "|---|---:|---:|---:|",
        *(ratios(runs[case, DELIVERED], runs[case, QUEUED]) for case, *_ in cases),
    ]
    text = "\n".join(lines)
    print(text)
    b.write_section("bench_everyday", text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
