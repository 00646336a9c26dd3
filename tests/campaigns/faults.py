"""The fault campaign: real servers on loopback (scripted SMTP servers, TLS with a trustme CA, the
DNS server of tests/servers.py, tmpfs spools) misbehaving in one way each; every case states the
outcome it expects and the campaign checks it.

    .venv/bin/python tests/campaigns/faults.py [--seed N] [--workdir DIR] [--only NAME ...]

prints one line per case, then `fault campaign: cases=N passed=P`. The seed only orders the cases;
the cases themselves are deterministic. Needs root (tmpfs mounts).

Outcomes, observed after `dma -q -D`:
- `deferred`: the entry is still queued, Attempts 1, not failed or held, nothing in the sender's mbox;
- `bounced`: the queue is empty and the sender's mbox holds exactly one RFC 3464 report (multipart/report,
  report-type=delivery-status, a message/delivery-status part with a 5.x.x Status);
- `delivered`: the queue is empty, the server took the message exactly once, no bounce.
"""

from __future__ import annotations

import json
import os
import random
import re
import socket
import struct
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from dma_fixtures import DmaEnv, program
from servers import DnsServer, Zone
from sink import Sink
from smtp_servers import Certs, Peer, RawServer, scripted

from campaigns.common import Result, main_with, parser

SEED = 3464
RCPT = "user@remote.test"
FAST = ("CONNECT_TIMEOUT 1", "TIMEOUT 2", "RETRY_MIN 1s", "RETRY_MAX 2s")
BODY_LINES = 4000  # ~200 kB, so that a reset lands inside DATA


@dataclass
class Case:
    name: str
    expected: str
    run: Callable[[Path], tuple[str, str]]  # -> (outcome, detail)


# ---- helpers ------------------------------------------------------------------------------------


def new_env(work: Path, name: str, port: int | None, *conf: str, spool: Path | None = None) -> DmaEnv:
    env = DmaEnv(work / name)
    env.smarthost = f"SMARTHOST 127.0.0.1\nPORT {port}" if port else ""
    if spool is not None:
        env.spool = spool
    env.write_conf(*FAST, *conf, spool=env.spool)
    return env


def message(tag: str, lines: int = 3) -> bytes:
    body = "".join(f"{i:06d} line of {tag} .\n" for i in range(lines))
    return f"Message-Id: <{tag}@test.example>\nSubject: {tag}\n\n{body}end of {tag}\n".encode()


def submit(env: DmaEnv, tag: str, rcpt: str = RCPT, lines: int = 3) -> subprocess.CompletedProcess[bytes]:
    return env.run(["-C", str(env.conf), "-bq", "-f", "root", rcpt], message(tag, lines))


def queue_run(env: DmaEnv, timeout: float = 60) -> tuple[subprocess.CompletedProcess[bytes], float]:
    t = time.monotonic()
    r = env.run(["-C", str(env.conf), "-q", "-D"], prog="dma", timeout=timeout)
    return r, time.monotonic() - t


def bounces(env: DmaEnv) -> list[bytes]:
    mbox = env.mboxdir / "root"
    if not mbox.exists():
        return []
    parts = re.split(rb"(?m)^From ", mbox.read_bytes())
    return [p for p in parts if p.strip()]


def is_rfc3464(report: bytes) -> bool:
    text = report.decode("utf-8", "replace")
    return (
        re.search(
            r"(?i)content-type:\s*multipart/report;[^\n]*(\n\s[^\n]*)*report-type=\"?delivery-status", text
        )
        is not None
        and re.search(r"(?i)content-type:\s*message/delivery-status", text) is not None
        and re.search(r"(?im)^status:\s*5\.\d+\.\d+", text) is not None
    )


def outcome(env: DmaEnv, received: int | None = None) -> tuple[str, str]:
    """What the spool and the sender's mbox say (see the module's docstring)."""
    entries = env.entries()
    reports = bounces(env)
    states = [(e.attempts, e.state, e.last_error) for e in entries]
    if not entries and len(reports) == 1 and is_rfc3464(reports[0]):
        return "bounced", re.sub(r"\s+", " ", _diagnostic(reports[0]))[:90]
    if len(entries) == 1 and entries[0].attempts == 1 and entries[0].state == "" and not reports:
        return "deferred", entries[0].last_error[:90]
    if not entries and not reports and received == 1:
        return "delivered", ""
    return "other", f"entries={states} bounces={len(reports)} received={received}"


def _diagnostic(report: bytes) -> str:
    found = re.search(rb"(?im)^diagnostic-code:\s*(.*)$", report)
    return found.group(1).decode("utf-8", "replace") if found else ""


def sent_mail(server: RawServer) -> bool:
    """Did a MAIL command (or anything after it) reach the server in clear?"""
    return any(c.upper().startswith(("MAIL", "RCPT", "DATA")) for c in server.commands) or any(
        b"MAIL FROM" in chunk.upper() for p in server.peers for chunk in p.chunks
    )


@contextmanager
def tmpfs(path: Path, size: str) -> Iterator[Path]:
    path.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs", str(path)], check=True)
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def fill(directory: Path, leave: int = 0) -> Path:
    """Fill the file system of `directory` so that `leave` bytes stay free."""
    filler = directory / "filler"
    st = os.statvfs(directory)
    free = st.f_bavail * st.f_frsize
    with open(filler, "ab") as f:
        want = max(free - leave, 0)
        chunk = b"\0" * 65536
        try:
            while want > 0:
                want -= f.write(chunk[: min(len(chunk), want)])
                f.flush()
        except OSError:
            pass
    return filler


def spool_names(env: DmaEnv) -> list[str]:
    return [n for n in env.files() if n.startswith(("Q", "M", "tmp_"))]


# ---- SMTP stages --------------------------------------------------------------------------------


def stage_case(stage: str, code: str) -> Callable[[Path], tuple[str, str]]:
    reply = f"{code} {code[0]}.0.0 {stage.lower()} says {code}"

    def run(work: Path) -> tuple[str, str]:
        if stage == "greeting":
            session = scripted(greeting=reply)
        elif stage == "EHLO":
            session = scripted(replies={"EHLO": reply, "HELO": reply})
        else:
            session = scripted(replies={stage: reply})
        with RawServer(session) as server:
            env = new_env(work, f"{stage}-{code}", server.port)
            assert submit(env, f"{stage}-{code}").returncode == 0
            queue_run(env)
        got, detail = outcome(env, received=0)
        if code not in detail and got in ("deferred", "bounced"):
            detail = f"reply {code} not reported: {detail}"
            got = "other"
        return got, detail

    return run


# ---- connections ----------------------------------------------------------------------------------


def reset_mid_data(work: Path) -> tuple[str, str]:
    """The first connection is reset (RST) after a little of the DATA; the next one accepts."""
    normal = scripted()
    seen = {"n": 0}

    def session(peer: Peer) -> None:
        seen["n"] += 1
        if seen["n"] > 1:
            return normal(peer)
        peer.send("220 reset.test ESMTP")
        while line := peer.readline():
            verb = line.split(b" ", 1)[0].strip().upper()
            peer.commands.append(line.decode().rstrip())
            if verb == b"EHLO":
                peer.send("250-reset.test\r\n250 HELP\r\n")
            elif verb == b"DATA":
                peer.send("354 go ahead")
                for _ in range(50):
                    peer.readline()
                peer.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                peer.sock.close()
                return
            else:
                peer.send("250 ok")

    with RawServer(session) as server:
        env = new_env(work, "reset", server.port)
        assert submit(env, "reset", lines=BODY_LINES).returncode == 0
        queue_run(env)
        first, detail = outcome(env, received=0)
        if first != "deferred":
            return f"first run {first}", detail
        queue_run(env)
        complete = [d for p in server.peers for d in p.data if b"end of reset" in d]
        got, detail2 = outcome(env, received=len(complete))
    return (
        "deferred, then delivered once" if got == "delivered" else f"deferred, then {got}"
    ), detail + detail2


def stall(where: str) -> Callable[[Path], tuple[str, str]]:
    def session(peer: Peer) -> None:
        if where == "greeting":
            peer.readline()  # silent until the client gives up
            return
        peer.send("220 stall.test ESMTP")
        while line := peer.readline():
            verb = line.split(b" ", 1)[0].strip().upper()
            if verb == b"EHLO":
                peer.send("250-stall.test\r\n250 HELP\r\n")
            elif verb == b"DATA":
                peer.send("354 go ahead")
                peer.read_data()
                peer.readline()  # the final dot gets no reply
                return
            else:
                peer.send("250 ok")

    def run(work: Path) -> tuple[str, str]:
        with RawServer(session) as server:
            env = new_env(work, f"stall-{where}", server.port)
            assert submit(env, f"stall-{where}").returncode == 0
            _, took = queue_run(env, timeout=30)
        got, detail = outcome(env, received=0)
        if took > 10:
            return "too slow", f"{took:.1f}s with TIMEOUT 2"
        return got, f"{took:.1f}s: {detail}"

    return run


# ---- TLS ------------------------------------------------------------------------------------------


def tls_case(kind: str, certs: Certs) -> Callable[[Path], tuple[str, str]]:
    def plain_greeting(peer: Peer) -> None:
        peer.send("220 not-tls.test ESMTP")  # where the client expects a TLS handshake
        peer.chunks.append(peer.sock.recv(65536))
        peer.readline()

    def run(work: Path) -> tuple[str, str]:
        right = Certs.sha256(certs.mx).hex()
        wrong = Certs.sha256(certs.other).hex()
        if kind == "handshake":
            session, conf = plain_greeting, ("SECURETRANSFER",)
        elif kind == "wrong-name":
            session = scripted(ext=("STARTTLS",), tls=certs.server_context(certs.other))
            conf = ("SECURETRANSFER", "STARTTLS", "VERIFYCERT", f"CAFILE {certs.ca_file}")
        elif kind == "right-name":
            session = scripted(ext=("STARTTLS",), tls=certs.server_context(certs.mx))
            conf = ("SECURETRANSFER", "STARTTLS", "VERIFYCERT", f"CAFILE {certs.ca_file}")
        elif kind == "wrong-fingerprint":
            session = scripted(ext=("STARTTLS",), tls=certs.server_context(certs.mx))
            conf = ("SECURETRANSFER", "STARTTLS", f"FINGERPRINT {wrong}")
        else:  # right-fingerprint
            session = scripted(ext=("STARTTLS",), tls=certs.server_context(certs.mx))
            conf = ("SECURETRANSFER", "STARTTLS", f"FINGERPRINT {right}")
        with RawServer(session) as server:
            env = new_env(work, f"tls-{kind}", server.port, *conf)
            assert submit(env, f"tls-{kind}").returncode == 0
            queue_run(env)
            received = sum(1 for p in server.peers for d in p.data if f"end of tls-{kind}".encode() in d)
            leaked = sent_mail(server)
        got, detail = outcome(env, received=received)
        if got == "deferred" and leaked:
            return "deferred but MAIL was sent", detail
        return (got + (", nothing sent" if got == "deferred" else "")), detail

    return run


# ---- DNS ------------------------------------------------------------------------------------------


def dns_case(kind: str) -> Callable[[Path], tuple[str, str]]:
    def run(work: Path) -> tuple[str, str]:
        zone = Zone(
            {"exists.test": [("A", "127.0.0.1")]}, servfail={"servfail.test"}, timeout={"timeout.test"}
        )
        with DnsServer(zone) as dns:
            env = new_env(work, f"dns-{kind}", None, dns.conf)
            assert submit(env, f"dns-{kind}", rcpt=f"user@{kind}.test").returncode == 0
            _, took = queue_run(env, timeout=30)
        got, detail = outcome(env, received=0)
        if took > 10:
            return "too slow", f"{took:.1f}s with CONNECT_TIMEOUT 1"
        return got, f"{took:.1f}s: {detail}"

    return run


# ---- the disk -------------------------------------------------------------------------------------


def full_disk_submission(multi: bool) -> Callable[[Path], tuple[str, str]]:
    """`multi`: room for the message and one Q file, not for the other recipients' Q files."""

    def run(work: Path) -> tuple[str, str]:
        with tmpfs(work / ("full-q" if multi else "full-msg"), "1m") as mnt:
            env = new_env(work, "full-q-env" if multi else "full-msg-env", None, spool=mnt / "spool")
            env.spool.mkdir()
            data = message("full", lines=2000 if multi else 60000)  # 60 kB / 1.9 MB
            if multi:
                pages = (len(data) + 600) // 4096 + 1  # the message with our headers, and one Q file
                fill(mnt, leave=(pages + 1) * 4096)
            rcpts = [f"r{i}@remote.test" for i in range(4)] if multi else [RCPT]
            r = env.run(["-C", str(env.conf), "-bq", "-f", "root", *rcpts], data)
            left = spool_names(env)
        if r.returncode == 75 and not left:
            return "refused 75, nothing written", r.stderr.decode().strip()[:90]
        return f"exit {r.returncode}, files {left}", r.stderr.decode().strip()[:90]

    return run


def log_events(logfile: Path) -> list[str]:
    if not logfile.exists():
        return []
    return [json.loads(line).get("event", "") for line in logfile.read_text().splitlines()]


def full_disk_runner(leave: int) -> Callable[[Path], tuple[str, str]]:
    """A 550 on a full spool. With one page left (`leave` 4096) the failure is recorded but its bounce
    cannot be written: the original must be held for the postmaster. With nothing left even the
    failure cannot be recorded: the entry must stay as it was, the runner fail in one line (no
    traceback), and the next run, with room again, bounce it."""

    def run(work: Path) -> tuple[str, str]:
        with (
            RawServer(scripted(replies={"RCPT": "550 5.1.1 no such user"})) as server,
            tmpfs(work / "full-run", "1m") as mnt,
        ):
            logfile = work / "full-run.log"
            env = new_env(work, "full-run-env", server.port, f"LOGFILE {logfile}", spool=mnt / "spool")
            env.spool.mkdir()
            assert submit(env, "full-run").returncode == 0
            filler = fill(mnt, leave=leave)
            r, _ = queue_run(env)
            err = r.stderr.decode("utf-8", "replace")
            entries = [(e.state, e.attempts, e.last_error[:70]) for e in env.entries()]
            reports = len(bounces(env))
            filler.unlink()
            r2, _ = queue_run(env)  # with room again
            after = [(e.state, e.attempts) for e in env.entries()]
            reports_after = len(bounces(env))
            sessions = sum(1 for c in server.commands if c.startswith("EHLO"))
        detail = (
            f"entries={entries} bounces={reports}, with room: entries={after} bounces={reports_after}"
            f", sessions={sessions}"
        )
        if "Traceback" in err:
            detail += f"; runner traceback: {err.strip().splitlines()[-1][:110]}"
        if leave and len(entries) == 1 and entries[0][0] == "held" and not reports and after == [("held", 1)]:
            return "held, not lost", detail
        # The entry is as it was, and with room again the next run gets the same 550 and bounces it.
        if not leave and entries == [("", 0, "")] and not reports and not after and reports_after == 1:
            return ("kept, not lost" + (", traceback" if "Traceback" in err else "")), detail
        second = f"exit {r2.returncode} {r2.stderr.decode()[-200:]!r}"
        return "other", f"{detail}; second run: {second}; log: {log_events(logfile)}"

    return run


def read_only_mid_run(work: Path, messages: int = 200) -> tuple[str, str]:
    """`mount -o remount,ro` of the tmpfs spool while `dma -q -D` delivers many messages; then rw
    again and more runs: nothing lost, duplicates only what was in flight at the remount."""
    sink = Sink().start()
    try:
        with tmpfs(work / "ro", "64m") as mnt:
            env = new_env(work, "ro-env", sink.port, "HOST_CONCURRENCY 2", spool=mnt / "spool")
            env.spool.mkdir()
            mids = [f"<ro-{i}@test.example>" for i in range(messages)]
            for i in range(messages):
                assert submit(env, f"ro-{i}").returncode == 0
            proc = subprocess.Popen(
                [program("dma"), "-C", str(env.conf), "-q", "-D"],
                env=env.env,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
            )
            sink.wait_for(lambda: len(sink.messages()) >= messages // 4, timeout=30, step=0.001)
            at_remount = len(sink.messages())
            tries, mounted_ro, why = 0, False, ""
            deadline = time.monotonic() + 5
            while proc.poll() is None and time.monotonic() < deadline:
                tries += 1
                m = subprocess.run(["mount", "-o", "remount,ro", str(mnt)], capture_output=True, text=True)
                if m.returncode == 0:
                    mounted_ro = True
                    break
                why = m.stderr.strip()
                time.sleep(0.001)
            try:
                proc.wait(60)
                hung = False
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
                hung = True
            assert proc.stderr is not None
            err = proc.stderr.read().decode("utf-8", "replace")
            proc.stderr.close()
            during = len(sink.messages())
            subprocess.run(["mount", "-o", "remount,rw", str(mnt)], check=True)
            runs = 0
            while env.entries() and runs < 5:
                runs += 1
                queue_run(env)
            left = [(e.id, e.state, e.last_error[:60]) for e in env.entries()]
    finally:
        sink.stop()
    counts = Counter(a.message_id for a in sink.messages())
    lost = [m for m in mids if counts[m] == 0]
    duplicated = sum(n - 1 for n in counts.values() if n > 1)
    detail = (
        f"remount ro {'after ' + str(tries) + ' tries' if mounted_ro else 'refused: ' + why} at "
        f"{at_remount}/{messages} sent, {during} by the runner's exit{' (hung, killed)' if hung else ''}, "
        f"then {runs} runs: lost={len(lost)} duplicated={duplicated} left={left[:3]} "
        f"runner said: {err.strip().splitlines()[-1][:80] if err.strip() else '-'}"
    )
    if not mounted_ro:
        return "remount refused", detail
    if not lost and not left and not hung and duplicated <= 2:
        return "nothing lost, duplicates <= in flight", detail
    return "other", detail


# ---- the campaign -------------------------------------------------------------------------------


def cases(certs: Certs, quick: bool = False) -> list[Case]:
    table = []
    for stage in ("greeting", "EHLO", "MAIL", "RCPT", "DATA", "DOT"):
        for code, expected in (("451", "deferred"), ("554", "bounced")):
            if stage == "greeting" and code == "451":
                code = "421"
            table.append(Case(f"{stage} {code}", expected, stage_case(stage, code)))
    table += [
        Case("reset mid-DATA", "deferred, then delivered once", reset_mid_data),
        Case("stall: no greeting", "deferred", stall("greeting")),
        Case("stall: no reply to the final dot", "deferred", stall("dot")),
        Case("TLS handshake failure", "deferred, nothing sent", tls_case("handshake", certs)),
        Case(
            "VERIFYCERT, certificate for another name",
            "deferred, nothing sent",
            tls_case("wrong-name", certs),
        ),
        Case("VERIFYCERT, right name (control)", "delivered", tls_case("right-name", certs)),
        Case(
            "FINGERPRINT of another certificate",
            "deferred, nothing sent",
            tls_case("wrong-fingerprint", certs),
        ),
        Case("FINGERPRINT right (control)", "delivered", tls_case("right-fingerprint", certs)),
        Case("DNS SERVFAIL", "deferred", dns_case("servfail")),
        Case("DNS timeout", "deferred", dns_case("timeout")),
        Case("DNS NXDOMAIN", "bounced", dns_case("nxdomain")),
        Case("full disk: submission too big", "refused 75, nothing written", full_disk_submission(False)),
        Case("full disk: room for 1 of 4 Q files", "refused 75, nothing written", full_disk_submission(True)),
        Case("full disk: runner cannot write a bounce", "held, not lost", full_disk_runner(4096)),
        Case(
            "full disk: runner cannot record anything",
            "kept, not lost",
            full_disk_runner(0),
        ),
        Case(
            "spool remounted read-only mid-run",
            "nothing lost, duplicates <= in flight",
            (lambda w: read_only_mid_run(w, 60)) if quick else read_only_mid_run,
        ),
    ]
    return table


def run(
    work: Path,
    seed: int = SEED,
    only: list[str] | None = None,
    quick: bool = False,
    log: Any = print,
    exclude: list[str] | None = None,
) -> Result:
    started = time.monotonic()
    certs = Certs.create(work)
    table = [
        c
        for c in cases(certs, quick)
        if (not only or any(o.lower() in c.name.lower() for o in only))
        and not any(x.lower() in c.name.lower() for x in exclude or ())
    ]
    random.Random(seed).shuffle(table)
    res = Result()
    passed = 0
    for n, case in enumerate(table):
        t = time.monotonic()
        case_dir = work / f"case{n:02d}"
        case_dir.mkdir()
        try:
            got, detail = case.run(case_dir)
        except Exception as e:  # a case that breaks is a failed case, the others still run
            got, detail = "error", f"{type(e).__name__}: {e}"
        ok = got == case.expected
        passed += ok
        took = time.monotonic() - t
        mark = "ok  " if ok else "FAIL"
        line = f"{mark} {case.name}: expected {case.expected!r}, got {got!r} ({took:.1f}s) {detail}"
        res.details.append(line)
        if log:
            log("  " + line)
        res.check(ok, f"{case.name}: expected {case.expected!r}, got {got!r}: {detail}")
    res.line = f"fault campaign: cases={len(table)} passed={passed}"
    res.details.append(f"seed={seed} elapsed={time.monotonic() - started:.1f}s")
    return res


def main() -> int:
    p = parser(__doc__, SEED)
    p.add_argument("--only", nargs="*", help="run the cases whose name contains one of these")
    args = p.parse_args()
    return main_with(run, args, only=args.only, log=None)


if __name__ == "__main__":
    sys.exit(main())
