# ruff: noqa: E501, RUF001, RUF002
"""SMTP transport: one message on one connection, and 1,000 messages over one connection.

Run as root:  python benches/bench_transport.py [--no-build] [--runs N]

(a) One 1 KB message, one fresh connection each time, on loopback: ours (`_native.Connection.session`
    called in a loop from Python, no process start), C dma (`dma -D -q` delivering one queued
    message, process start included; also shown minus the median of `dma -bp`), msmtp (minus the
    median of `msmtp --version`). Against Postfix's smtp-sink and against a plain aiosmtpd sink.
(b) 1,000 × 1 KB over ONE connection to smtp-sink: ours (one `Connection.session` call carrying 1,000
    transactions) against `minimal_client` below (plain sockets, TCP_NODELAY, MAIL+RCPT+DATA in one
    write, the dot-stuffed body and "." in one write): the ideal to compare to.

Prints a Markdown table and writes the `bench_transport` section of benches/RESULTS.md.
"""

from __future__ import annotations

import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import benchlib as b

RCPT = "root@example.com"
SENDER = "bench@example.com"


def plain_connection(port: int) -> Any:
    """A connection to the loopback sink without TLS or AUTH, the settings the runner passes."""
    from dma import _native

    tls: Any = {
        "mode": "none",
        "verify_cert": False,
        "ca_file": None,
        "fingerprint": None,
        "client_cert": None,
    }
    return _native.Connection(
        host="127.0.0.1",
        addresses=["127.0.0.1"],
        port=port,
        helo="bench.example.com",
        tls=tls,
        connect_timeout=30.0,
        command_timeout=300.0,
        credentials=None,
        allow_insecure_auth=False,
        verbose=False,
    )


def percentile(xs: list[float], p: float) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, int(p * len(s)))]


def time_ours(port: int, msg: str, runs: int) -> list[float]:
    times = []
    for _ in range(runs + 10):
        t = time.perf_counter()
        r = plain_connection(port).session([(SENDER, [RCPT], msg)])
        times.append(time.perf_counter() - t)
        assert r.results[0][0].status == "sent", r.results
    return times[10:]


def time_cmd(argv: list[str], runs: int, stdin: str | None = None, before=None) -> list[float]:  # type: ignore[no-untyped-def]
    """Wall time of argv from fork to exit, as seen from here (the same harness for every command)."""
    times = []
    for i in range(runs + 5):
        if before:
            before()
        with open(stdin or os.devnull, "rb") as f:
            t = time.perf_counter()
            p = subprocess.run(argv, stdin=f, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
            dt = time.perf_counter() - t
        if p.returncode != 0:
            raise SystemExit(f"{argv} failed: {p.stderr.decode(errors='replace')}")
        if i >= 5:
            times.append(dt)
    return times


# ---------------------------------------------------------------------------------------------
# The minimal client for (b)


def read_replies(sock: socket.socket, buf: bytearray, n: int) -> None:
    """Read `n` complete replies (final lines "DDD "), raising on anything but 2xx/3xx."""
    while n:
        i = buf.find(b"\r\n")
        if i < 0:
            chunk = sock.recv(65536)
            if not chunk:
                raise ConnectionError("server closed")
            buf += chunk
            continue
        line = bytes(buf[:i])
        del buf[: i + 2]
        if len(line) >= 4 and line[3:4] == b"-":
            continue
        if line[:1] not in (b"2", b"3"):
            raise RuntimeError(line)
        n -= 1


def minimal_client(port: int, body: bytes, count: int) -> float:
    """`count` messages over one connection; returns seconds from connect to QUIT's reply."""
    data = body.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
    data = b"\r\n".join(b"." + line if line.startswith(b".") else line for line in data.split(b"\r\n"))
    if not data.endswith(b"\r\n"):
        data += b"\r\n"
    payload = data + b".\r\n"
    envelope = f"MAIL FROM:<{SENDER}> SIZE={len(data)}\r\nRCPT TO:<{RCPT}>\r\nDATA\r\n".encode()
    t = time.perf_counter()
    sock = socket.create_connection(("127.0.0.1", port))
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    buf = bytearray()
    read_replies(sock, buf, 1)
    sock.sendall(b"EHLO bench.example.com\r\n")
    read_replies(sock, buf, 1)
    for _ in range(count):
        sock.sendall(envelope)
        read_replies(sock, buf, 3)
        sock.sendall(payload)
        read_replies(sock, buf, 1)
    sock.sendall(b"QUIT\r\n")
    read_replies(sock, buf, 1)
    dt = time.perf_counter() - t
    sock.close()
    return dt


def ours_many(port: int, msg: str, count: int) -> float:
    t = time.perf_counter()
    r = plain_connection(port).session([(SENDER, [RCPT], msg)] * count)
    dt = time.perf_counter() - t
    sent = sum(1 for tx in r.results for o in tx if o.status == "sent")
    assert sent == count, (sent, r.results[:3])
    return dt


# ---------------------------------------------------------------------------------------------


def main() -> int:
    argv = sys.argv[1:]
    b.start(os.path.abspath(__file__), argv)
    runs = int(argv[argv.index("--runs") + 1]) if "--runs" in argv else 200
    many = 1000
    reps_b = 7
    started = time.monotonic()
    info = b.facts()
    msg = os.path.join(b.OUT, "msg-1k.eml")
    b.write_message(msg, 1024)
    with open(msg, "rb") as f:
        body = f.read()
    work = tempfile.mkdtemp(prefix="dma-bench-transport-", dir="/var/tmp")
    rows_a: list[tuple[str, str, list[float], float | None]] = []
    rows_b: list[tuple[str, list[float]]] = []
    sessions_b: dict[str, int] = {}
    try:
        with b.CDma() as cdma:
            for sink_cls in (b.SmtpSink, b.AioSink):
                with sink_cls() as sink:
                    sname = sink.name
                    b.log(f"(a) against {sname} on port {sink.port}")
                    start = sink.count
                    ours = time_ours(sink.port, msg, runs)
                    cdma.configure(
                        ["SMARTHOST 127.0.0.1", f"PORT {sink.port}", "MAILNAME /etc/mailname", "DEFER"]
                    )

                    def queue_one() -> None:
                        with open(msg, "rb") as f:
                            subprocess.run([b.C_DMA, "-bq", RCPT], stdin=f, check=True)

                    c_runs = max(50, runs // 2)
                    c_dma = time_cmd([b.C_DMA, "-D", "-q"], c_runs, before=queue_one)
                    c_bp = time_cmd([b.C_DMA, "-bp"], c_runs)
                    msmtp_argv = [
                        b.MSMTP,
                        "--host=127.0.0.1",
                        f"--port={sink.port}",
                        f"--from={SENDER}",
                        RCPT,
                    ]
                    msm = time_cmd(msmtp_argv, c_runs, stdin=msg)
                    msm_v = time_cmd([b.MSMTP, "--version"], c_runs)
                    expect = start + (runs + 10) + (c_runs + 5) + (c_runs + 5)
                    if not sink.wait_for(expect, 30):
                        raise SystemExit(
                            f"{sname}: got {sink.count - start} messages, expected {expect - start}"
                        )
                    cdma.clean_spool()
                    rows_a += [
                        ("ours `_native.smtp_session` (in-process)", sname, ours, None),
                        ("C dma `dma -D -q` (process start included)", sname, c_dma, statistics.median(c_bp)),
                        ("msmtp (process start included)", sname, msm, statistics.median(msm_v)),
                    ]
            with b.SmtpSink() as sink:
                b.log(f"(b) {many} messages over one connection to {sink.name}, {reps_b} times each")
                for label, fn in (
                    (
                        "minimal client (Python sockets, pipelined, TCP_NODELAY)",
                        lambda: minimal_client(sink.port, body, many),
                    ),
                    (
                        "ours: one `_native.smtp_session` with 1,000 transactions",
                        lambda: ours_many(sink.port, msg, many),
                    ),
                ):
                    s0, m0 = sink.sessions, sink.count
                    times = []
                    for _ in range(reps_b):
                        times.append(fn())
                    sink.wait_for(m0 + reps_b * many, 10)
                    time.sleep(0.5)  # smtp-sink counts a session when it ends
                    rows_b.append((label, times))
                    sessions_b[label] = sink.sessions - s0
                    assert sink.count - m0 == reps_b * many, sink.count - m0
    finally:
        b.clean_dir(work)
        os.rmdir(work)

    ours_med = {s: statistics.median(t) for (lbl, s, t, _) in rows_a if lbl.startswith("ours")}
    lines = ["## SMTP transport (`bench_transport.py`)", ""]
    lines.append("Written by `python benches/bench_transport.py`; see benches/README.md.")
    lines.append("")
    lines += [f"- **{k}**: {v}" for k, v in info]
    lines += [
        "",
        f"### (a) One 1 KB message on one new connection, loopback ({runs} runs ours, {max(50, runs // 2)} runs others; medians)",
        "",
    ]
    lines.append("| agent | sink | median (ms) | p10 / p90 (ms) | minus start-up (ms) | ÷ ours |")
    lines.append("|---|---|---:|---:|---:|---:|")
    summary_a = []
    for label, sname, t, startup in rows_a:
        med = statistics.median(t) * 1e3
        net = med - startup * 1e3 if startup is not None else med
        ratio = net / (ours_med[sname] * 1e3)
        su = f"{net:.2f} (start-up {startup * 1e3:.2f})" if startup is not None else "–"
        lines.append(
            f"| {label} | {sname} | {med:.2f} | {percentile(t, 0.1) * 1e3:.2f} / {percentile(t, 0.9) * 1e3:.2f} | {su} | {ratio:.1f}× |"
        )
        if label.startswith("ours"):
            summary_a.append(f"{med:.2f} ms against {sname}")
    lines += [
        "",
        "Ours is the whole session (connect, greeting, EHLO, MAIL/RCPT/DATA pipelined, body, QUIT's reply) timed",
        "around one `_native.smtp_session` call. C dma: one message queued with `dma -bq` (DEFER), then `dma -D -q`",
        "timed from fork to exit; start-up = median of `dma -bp` on an empty queue with the same harness. msmtp:",
        "`msmtp --host=127.0.0.1 --port=P --from=... rcpt < msg`; start-up = median of `msmtp --version`.",
        'The "÷ ours" column compares the start-up-corrected times. A ~40 ms median for C dma or msmtp is',
        "the Nagle/delayed-ACK stall: they write the body in small writes without TCP_NODELAY.",
        "",
        f"Target: ours < 2 ms: {'**met**' if all(v < 0.002 for v in ours_med.values()) else '**MISSED**'} ({'; '.join(summary_a)}).",
        "",
        f"### (b) {many} × 1 KB over ONE connection to Postfix smtp-sink ({reps_b} runs each)",
        "",
        "| client | median (s) | messages/s (median) | best messages/s | connections | % of minimal client |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    ideal = many / statistics.median(rows_b[0][1])
    ours_rate = ideal
    for label, t in rows_b:
        rate = many / statistics.median(t)
        if label.startswith("ours"):
            ours_rate = rate
        lines.append(
            f"| {label} | {statistics.median(t):.3f} | {rate:,.0f} | {many / min(t):,.0f} | {sessions_b[label] // reps_b} per run | {100 * rate / ideal:.0f}% |"
        )
    pct = 100 * ours_rate / ideal
    lines += [
        "",
        'Both do the same round trips per message (MAIL+RCPT+DATA in one write, then body+"." in one write).',
        f"Target: ours ≥ 90% of the minimal client: {'**met**' if pct >= 90 else '**MISSED**'} ({pct:.0f}%).",
        "",
        f"Total time: {time.monotonic() - started:.0f} s.",
    ]
    text = "\n".join(lines) + "\n"
    sys.stdout.write(text)
    b.write_section("bench_transport", text)
    with open(os.path.join(b.OUT, "transport.json"), "w") as f:
        import json

        json.dump(
            {
                "a": [(lbl, s, statistics.median(t), st) for lbl, s, t, st in rows_a],
                "b": [(lbl, many / statistics.median(t)) for lbl, t in rows_b],
            },
            f,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
