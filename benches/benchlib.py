# ruff: noqa: B007
"""Shared pieces of bench_transport.py and bench_queue.py: build, sinks, C dma's config swap,
the /proc RSS sampler and the RESULTS.md section writer.

Everything listens on 127.0.0.1 only, on ports the kernel picks free for us.
"""

from __future__ import annotations

import contextlib
import datetime
import glob
import os
import platform
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

BENCHES = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(BENCHES)
OUT = os.path.join(BENCHES, "out")
VENV = os.path.join(OUT, "venv")
VPY = os.path.join(VENV, "bin", "python")
RESULTS = os.path.join(BENCHES, "RESULTS.md")
BUILD_INFO = os.path.join(OUT, "build-info.txt")

C_DMA = "/usr/sbin/dma"
C_CONF = "/etc/dma/dma.conf"
C_SPOOL = "/var/spool/dma"
MSMTP = "/usr/bin/msmtp"

os.environ.pop("PYTHONDONTWRITEBYTECODE", None)


def log(text: str) -> None:
    sys.stderr.write(f"[bench] {text}\n")
    sys.stderr.flush()


def sh(args: list[str]) -> str:
    return subprocess.run(args, check=True, capture_output=True, text=True).stdout.strip()


# ---------------------------------------------------------------------------------------------
# Build, and running the rest of a script inside the venv (it imports dma._native, aiosmtpd, trustme)


def build(skip: bool) -> None:
    if skip and os.path.exists(VPY):
        log("--no-build: using the existing benches/out/venv")
        return
    if not os.path.exists(VPY):
        # The interpreter that runs this script, resolved past pyenv's shims.
        subprocess.run([sys.executable, "-m", "venv", VENV], check=True)
    env = dict(os.environ, CARGO_TARGET_DIR=os.path.join(OUT, "target"))
    log("pip install (maturin release build, .pyc compiled); this takes ~30 s the first time")
    subprocess.run(
        [VPY, "-m", "pip", "install", "-q", "--force-reinstall", "--no-deps", ROOT],
        check=True,
        env=env,
    )
    # Dependencies (dnspython) only once; --no-deps above keeps a reinstall quick.
    subprocess.run([VPY, "-m", "pip", "install", "-q", ROOT], check=True, env=env)
    with open(BUILD_INFO, "w") as f:
        f.write(git_state() + "\n")


def git_state() -> str:
    try:
        head = sh(["git", "-C", ROOT, "rev-parse", "--short", "HEAD"])
        paths = ["python", "rust", "Cargo.toml", "Cargo.lock", "pyproject.toml"]
        dirty = sh(["git", "-C", ROOT, "status", "--porcelain", "--untracked-files=no", "--", *paths])
    except (OSError, subprocess.CalledProcessError):
        return "?"
    return head + (" (python/ or rust/ had uncommitted changes)" if dirty else "")


def build_and_reexec(script: str, argv: list[str]) -> None:
    """Outside the venv: build (unless --no-build), install the benchmark's own dependencies, then
    re-run `script` with the venv's interpreter. Inside the venv: return."""
    if os.path.realpath(sys.prefix) == os.path.realpath(VENV):
        return
    build("--no-build" in argv)
    need = [
        m
        for m in ("aiosmtpd", "trustme", "matplotlib")
        if subprocess.run([VPY, "-c", f"import {m}"], capture_output=True).returncode
    ]
    if need:
        log(f"pip install {' '.join(need)} into benches/out/venv")
        subprocess.run([VPY, "-m", "pip", "install", "-q", *need], check=True)
    os.execv(VPY, [VPY, script, *argv])


def start(script: str, argv: list[str]) -> None:
    """A benchmark's start: as root (it swaps C dma's /etc/dma/dma.conf for the run, which it
    restores), inside the venv, and with a SIGTERM that still runs the restoring code."""
    if os.geteuid() != 0:
        sys.stderr.write("run as root: C dma's /etc/dma/dma.conf is swapped for the run\n")
        raise SystemExit(2)
    build_and_reexec(script, argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))


def git_head() -> str:
    try:
        with open(BUILD_INFO) as f:
            return f.read().strip()
    except OSError:
        return "?"


def facts() -> list[tuple[str, str]]:
    cpu = ""
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    with open("/proc/loadavg") as f:
        load = " ".join(f.read().split()[:3])
    c_version = sh(["dpkg-query", "-W", "-f", "${Version}", "dma"])
    msmtp_version = sh([MSMTP, "--version"]).splitlines()[0]
    return [
        ("date", datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")),
        ("machine", f"`nproc` = {os.cpu_count()}, {cpu}, {platform.machine()}, Linux {platform.release()}"),
        ("load average at start", load),
        (
            "our dma",
            f"`pip install {ROOT}` (release), built at git {git_head()}; Python {platform.python_version()}",
        ),
        ("C dma", f"Debian `dma` {c_version}"),
        ("msmtp", msmtp_version),
    ]


# ---------------------------------------------------------------------------------------------
# Results: each script owns one marked section of RESULTS.md


def write_section(name: str, text: str) -> None:
    begin, end = f"<!-- BEGIN {name} -->", f"<!-- END {name} -->"
    block = f"{begin}\n{text.rstrip()}\n{end}\n"
    try:
        with open(RESULTS) as f:
            old = f.read()
    except FileNotFoundError:
        old = ""
    if begin in old and end in old:
        head, rest = old.split(begin, 1)
        tail = rest.split(end, 1)[1].lstrip("\n")
        new = head + block + tail
    else:
        new = old.rstrip("\n") + ("\n\n" if old else "") + block
    with open(RESULTS, "w") as f:
        f.write(new)
    log(f"wrote the `{name}` section of {RESULTS}")


def marked_sections(text: str) -> str:
    """The marked sections in `text` (for bench_submit.py, which rewrites the rest of the file)."""
    return "".join(
        m.group(0) + "\n" for m in re.finditer(r"<!-- BEGIN (\S+) -->.*?<!-- END \1 -->", text, re.S)
    )


# ---------------------------------------------------------------------------------------------
# Messages


def write_message(path: str, size: int, rcpt: str = "root@example.com") -> None:
    """A text message of exactly `size` bytes, ~75-character lines, LF endings."""
    if os.path.exists(path) and os.path.getsize(path) == size:
        return
    head = f"From: root\nTo: {rcpt}\nSubject: bench {size} bytes\n\n"
    line = "The quick brown fox jumps over the lazy dog, then queues itself for later.\n"
    body_len = size - len(head)
    body = (line * (body_len // len(line) + 1))[: body_len - 1] + "\n"
    data = (head + body).encode()
    assert len(data) == size
    with open(path, "wb") as f:
        f.write(data)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# ---------------------------------------------------------------------------------------------
# Sinks


def unpacked(package: str, program: str) -> str:
    """benches/out/PACKAGE-root holding `program`, from `apt-get download` and `dpkg-deb -x`: a
    package side by side with the others, never installed."""
    root = os.path.join(OUT, f"{package}-root")
    if not os.path.exists(os.path.join(root, program)):
        pkgs = os.path.join(OUT, "pkgs")
        os.makedirs(pkgs, exist_ok=True)
        log(f"apt-get download {package}; dpkg-deb -x into benches/out/{package}-root")
        subprocess.run(["apt-get", "download", package], cwd=pkgs, check=True, capture_output=True)
        deb = sorted(glob.glob(os.path.join(pkgs, f"{package}_*.deb")))[-1]
        subprocess.run(["dpkg-deb", "-x", deb, root], check=True)
    return root


def postfix_root() -> str:
    """A tree with Postfix's smtp-sink: /opt/postfix-root if someone unpacked it there (the tests
    do), else benches/out/postfix-root."""
    if os.path.exists("/opt/postfix-root/usr/sbin/smtp-sink"):
        return "/opt/postfix-root"
    return unpacked("postfix", "usr/sbin/smtp-sink")


def msmtp_argv(port: int, sender: str, tls: bool, ca: str) -> list[str]:
    """msmtp to 127.0.0.1:port; with `tls`, STARTTLS trusting `ca` and AUTH as bench/secret."""
    argv = [MSMTP, "--host=127.0.0.1", f"--port={port}", f"--from={sender}"]
    if tls:
        argv += [
            "--tls=on",
            "--tls-starttls=on",
            f"--tls-trust-file={ca}",
            "--auth=on",
            "--user=bench",
            "--passwordeval=echo secret",
        ]
    return argv


class Sink:
    """A sink process on 127.0.0.1:port; `count` follows its message counter, `sessions` its connections."""

    name = "sink"

    def __init__(self) -> None:
        self.port = free_port()
        self.count = 0
        self.sessions = 0
        self.last = 0.0
        self.proc: subprocess.Popen[bytes] | None = None
        self.cond = threading.Condition()

    def _update(self, count: int, sessions: int) -> None:
        with self.cond:
            if count != self.count:
                self.last = time.perf_counter()
            self.count, self.sessions = count, sessions
            self.cond.notify_all()

    def wait_for(self, n: int, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        with self.cond:
            while self.count < n:
                left = deadline - time.monotonic()
                if left <= 0 or (self.proc and self.proc.poll() is not None):
                    return False
                self.cond.wait(min(left, 0.5))
        return True

    def wait_listening(self) -> None:
        for _ in range(200):
            with (
                contextlib.suppress(OSError),
                socket.create_connection(("127.0.0.1", self.port), timeout=1) as s,
            ):
                s.recv(100)
                return
            time.sleep(0.05)
        raise SystemExit(f"{self.name} did not start on port {self.port}")

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def __enter__(self) -> Sink:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


class SmtpSink(Sink):
    """Postfix's smtp-sink (C, event-driven, pipelining): `-c` prints `sess=N quit=N mesg=N` as it goes."""

    name = "Postfix smtp-sink"

    def __init__(self) -> None:
        super().__init__()
        root = postfix_root()
        self.root = root
        self.binary = os.path.join(root, "usr/sbin/smtp-sink")
        env = dict(os.environ, LD_LIBRARY_PATH=os.path.join(root, "usr/lib/postfix"))
        # -m: C dma opens ~1,000 connections at once; default is 256 (the rest wait in the backlog).
        self.argv = [self.binary, "-u", "nobody", "-c", "-m", "2000", f"127.0.0.1:{self.port}", "2000"]
        self.proc = subprocess.Popen(self.argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env)
        threading.Thread(target=self._read, daemon=True).start()
        self.wait_listening()

    def _read(self) -> None:
        assert self.proc and self.proc.stdout
        buf = b""
        pat = re.compile(rb"sess=(\d+) quit=\d+ mesg=(\d+)")
        while True:
            chunk = os.read(self.proc.stdout.fileno(), 65536)
            if not chunk:
                return
            buf = (buf + chunk)[-200:]
            last = None
            for last in pat.finditer(buf):
                pass
            if last:
                self._update(int(last.group(2)), int(last.group(1)))


class AioSink(Sink):
    """benches/aiosink.py: aiosmtpd, optionally STARTTLS required + AUTH required (any password)."""

    name = "aiosmtpd sink"

    def __init__(self, *, tls_dir: str | None = None, auth: bool = False) -> None:
        super().__init__()
        self.argv = [VPY, os.path.join(BENCHES, "aiosink.py"), str(self.port)]
        if tls_dir:
            self.argv += ["--tls", tls_dir]
            self.name += " (STARTTLS required"
            self.name += ", AUTH required)" if auth else ")"
        if auth:
            self.argv.append("--auth")
        self.proc = subprocess.Popen(self.argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        threading.Thread(target=self._read, daemon=True).start()
        self.wait_listening()

    def _read(self) -> None:
        assert self.proc and self.proc.stdout
        for line in self.proc.stdout:
            parts = line.split()
            if len(parts) == 2:
                self._update(int(parts[1]), int(parts[0]))


def make_certs(directory: str) -> None:
    """A trustme CA and a certificate for 127.0.0.1 and localhost: ca.pem, cert.pem, key.pem."""
    import trustme

    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1", "localhost")
    ca.cert_pem.write_to_path(os.path.join(directory, "ca.pem"))
    cert.private_key_pem.write_to_path(os.path.join(directory, "key.pem"))
    cert.cert_chain_pems[0].write_to_path(os.path.join(directory, "cert.pem"))
    for name in ("ca.pem", "cert.pem", "key.pem"):
        os.chmod(os.path.join(directory, name), 0o644)


def tls_workdir(name: str) -> str:
    """A fresh directory in /var/tmp with make_certs' files and an auth.conf (bench|127.0.0.1:secret)
    that C dma, running as user mail, can read."""
    work = tempfile.mkdtemp(prefix=f"dma-bench-{name}-", dir="/var/tmp")
    os.chmod(work, 0o755)
    make_certs(work)
    auth_conf = os.path.join(work, "auth.conf")
    with open(auth_conf, "w") as f:
        f.write("bench|127.0.0.1:secret\n")
    os.chmod(auth_conf, 0o644)
    return work


# ---------------------------------------------------------------------------------------------
# C dma: /etc/dma/dma.conf swapped for a run (0.13 reads nothing else), spool cleaned afterwards


class CDma:
    def __init__(self) -> None:
        self.original: bytes | None = None
        self.before: set[str] = set()

    def __enter__(self) -> CDma:
        import grp

        st = os.stat(C_SPOOL)
        if not (st.st_gid == grp.getgrnam("mail").gr_gid and st.st_mode & 0o020):
            raise SystemExit(f"{C_SPOOL} is not group-writable by mail: C dma could not queue")
        self.before = set(os.listdir(C_SPOOL))
        with open(C_CONF, "rb") as f:
            self.original = f.read()
        return self

    def configure(self, lines: list[str]) -> None:
        """Rewrite the config in place (it keeps owner root:mail and mode 0640)."""
        text = (
            "# Written by dma's benches/ for the length of a run; restored after.\n" + "\n".join(lines) + "\n"
        )
        with open(C_CONF, "w") as f:
            f.write(text)

    def clean_spool(self) -> int:
        n = 0
        for name in os.listdir(C_SPOOL):
            if name not in self.before:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(os.path.join(C_SPOOL, name))
                    n += 1
        return n

    def queued(self) -> int:
        return sum(1 for n in os.listdir(C_SPOOL) if n.startswith("Q") and n not in self.before)

    def __exit__(self, *exc: object) -> None:
        if self.original is not None:
            with open(C_CONF, "wb") as f:
                f.write(self.original)
        n = self.clean_spool()
        log(f"restored {C_CONF}; removed {n} files from {C_SPOOL}")


def kill_new_c_dma(before: set[int]) -> int:
    """Kill C dma processes that appeared since `before` (its `-q` children retry in the background)."""
    killed = 0
    for pid in c_dma_pids() - before:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, 9)
            killed += 1
    return killed


def c_dma_pids() -> set[int]:
    pids = set()
    for name in os.listdir("/proc"):
        if name.isdigit():
            with contextlib.suppress(OSError):
                if os.readlink(f"/proc/{name}/exe") == C_DMA:
                    pids.add(int(name))
    return pids


def clean_dir(path: str) -> None:
    for name in os.listdir(path):
        p = os.path.join(path, name)
        if os.path.isdir(p) and not os.path.islink(p):
            shutil.rmtree(p)
        else:
            os.unlink(p)


# ---------------------------------------------------------------------------------------------
# Peak RSS summed over an agent's processes, sampled from /proc


class RssSampler:
    """Every `interval` s: sum VmRSS over the processes `match(comm, exe, cmdline)` accepts; keep
    the peak sum, the peak single process and the most processes alive at once."""

    def __init__(self, match, interval: float = 0.02) -> None:  # type: ignore[no-untyped-def]
        self.match = match
        self.interval = interval
        self.peak_sum_kib = 0
        self.peak_one_kib = 0
        self.peak_procs = 0
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._me = os.getpid()

    def _run(self) -> None:
        while not self._stop.is_set():
            self.sample()
            self._stop.wait(self.interval)

    def sample(self) -> None:
        total = procs = 0
        for entry in os.scandir("/proc"):
            name = entry.name
            if not name.isdigit() or int(name) == self._me:
                continue
            try:
                with open(f"/proc/{name}/stat", "rb") as f:
                    stat = f.read()
                comm = stat[stat.index(b"(") + 1 : stat.rindex(b")")].decode(errors="replace")
                if not self.match.comm_ok(comm):
                    continue
                exe = os.readlink(f"/proc/{name}/exe")
                with open(f"/proc/{name}/cmdline", "rb") as f:
                    cmdline = f.read().replace(b"\0", b" ").decode(errors="replace")
                if not self.match(comm, exe, cmdline):
                    continue
                rss = 0
                with open(f"/proc/{name}/status", "rb") as f:
                    for line in f:
                        if line.startswith(b"VmRSS:"):
                            rss = int(line.split()[1])
                            break
            except (OSError, ValueError):
                continue
            total += rss
            procs += 1
            self.peak_one_kib = max(self.peak_one_kib, rss)
        self.samples += 1
        self.peak_sum_kib = max(self.peak_sum_kib, total)
        self.peak_procs = max(self.peak_procs, procs)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


class Match:
    """Which processes belong to an agent: by comm (cheap, checked first), then exe/cmdline."""

    def __init__(self, comms: set[str], exe_prefix: str | None = None, cmd_has: str | None = None) -> None:
        self.comms = comms
        self.exe_prefix = exe_prefix
        self.cmd_has = cmd_has

    def comm_ok(self, comm: str) -> bool:
        return not self.comms or comm in self.comms

    def __call__(self, comm: str, exe: str, cmdline: str) -> bool:
        if self.exe_prefix and not exe.startswith(self.exe_prefix):
            return False
        return not (self.cmd_has and self.cmd_has not in cmdline)


# ---------------------------------------------------------------------------------------------
# nullmailer, unpacked from `apt-get download nullmailer` (the package conflicts with dma)


NM_PATHS = ("/etc/nullmailer", "/var/spool/nullmailer", "/usr/lib/nullmailer")


class Nullmailer:
    """nullmailer 2.2 side by side with dma, without installing the package.

    Its binaries have /etc/nullmailer, /var/spool/nullmailer and /usr/lib/nullmailer (protocol
    modules) compiled in (`strings`), with no option to move them. None of the three exists on this
    machine, so for the length of a run we create them (the last one a symlink into the unpacked
    tree) and remove them afterwards. If any of them already exists we refuse to touch it.
    """

    def __init__(self) -> None:
        self.root = unpacked("nullmailer", "usr/sbin/nullmailer-send")
        self.created: list[str] = []
        self.send: subprocess.Popen[bytes] | None = None

    def available(self) -> str | None:
        busy = [p for p in NM_PATHS if os.path.lexists(p)]
        return f"{', '.join(busy)} already exist(s)" if busy else None

    def __enter__(self) -> Nullmailer:
        why = self.available()
        if why:
            raise RuntimeError(why)
        os.symlink(os.path.join(self.root, "usr/lib/nullmailer"), "/usr/lib/nullmailer")
        self.created.append("/usr/lib/nullmailer")
        os.mkdir("/etc/nullmailer", 0o755)
        self.created.append("/etc/nullmailer")
        os.mkdir("/var/spool/nullmailer", 0o755)
        self.created.append("/var/spool/nullmailer")
        for d in ("queue", "tmp", "failed"):
            os.mkdir(f"/var/spool/nullmailer/{d}", 0o750)
        os.mkfifo("/var/spool/nullmailer/trigger", 0o622)
        # As the package's postinst does: the programs switch to user mail.
        import pwd

        mail = pwd.getpwnam("mail")
        for p in ("", "/queue", "/tmp", "/failed", "/trigger"):
            os.chown(f"/var/spool/nullmailer{p}", mail.pw_uid, mail.pw_gid)
        with open("/etc/nullmailer/me", "w") as f:
            f.write("bench.example.com\n")
        return self

    def configure(self, remote: str) -> None:
        with open("/etc/nullmailer/remotes", "w") as f:
            f.write(remote + "\n")
        os.chmod("/etc/nullmailer/remotes", 0o600)

    def queue(self, msg: bytes, sender: str, rcpt: str) -> None:
        envelope = f"{sender}\n{rcpt}\n\n".encode()
        subprocess.run(
            [os.path.join(self.root, "usr/sbin/nullmailer-queue")],
            input=envelope + msg,
            check=True,
            capture_output=True,
        )

    def queued(self) -> int:
        return len(os.listdir("/var/spool/nullmailer/queue"))

    def start_send(self, logfile: str) -> None:
        with open(logfile, "ab") as out:
            self.send = subprocess.Popen(
                [os.path.join(self.root, "usr/sbin/nullmailer-send")], stdout=out, stderr=out
            )

    def stop_send(self) -> None:
        if self.send and self.send.poll() is None:
            self.send.terminate()
            try:
                self.send.wait(5)
            except subprocess.TimeoutExpired:
                self.send.kill()
                self.send.wait()
        self.send = None

    def __exit__(self, *exc: object) -> None:
        self.stop_send()
        for p in reversed(self.created):
            if os.path.islink(p):
                os.unlink(p)
            else:
                shutil.rmtree(p, ignore_errors=True)
        log(f"removed {', '.join(self.created)}")
