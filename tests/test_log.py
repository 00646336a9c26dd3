"""Logs: a syslog line to the mail facility per delivery attempt and outcome (tagged as `-L`
says), the same as JSON lines in LOGFILE, and never a password."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

from dma.mail.log import json_line
from dma_fixtures import DmaEnv
from smtp_servers import LOGIN, PASSWORD, Certs, Smtpd


def smarthost_with_auth(dma_env: DmaEnv, certs: Certs, server: Smtpd, logfile: str) -> None:
    auth = dma_env.root / "auth.conf"
    auth.write_text(f"{LOGIN}|127.0.0.1:{PASSWORD}\n")
    auth.chmod(0o600)
    dma_env.smarthost = (
        f"SMARTHOST 127.0.0.1\nPORT {server.port}\nSECURETRANSFER\nSTARTTLS\nVERIFYCERT\n"
        f"CAFILE {certs.ca_file}\nAUTHPATH {auth}\nLOGFILE {logfile}"
    )
    dma_env.write_conf()


def test_json_lines_for_attempts_and_outcomes(dma_env: DmaEnv, certs: Certs) -> None:
    logfile = dma_env.root / "dma.log"
    with Smtpd(tls_context=certs.server_context(), require_starttls=True, auth_require_tls=True) as server:
        server.handler.rcpt_replies["bad@remote.test"] = "550 5.1.1 no such user"
        smarthost_with_auth(dma_env, certs, server, str(logfile))
        run = dma_env.run(["-D", "-L", "mytag", "good@remote.test", "bad@remote.test"], b"Subject: s\n\nx\n")
    assert run.returncode == 69, run.stderr
    records = [json.loads(line) for line in logfile.read_text().splitlines()]
    events = [r["event"] for r in records]
    assert events[0] == "queued" and "attempt" in events and "delivered" in events and "failed" in events, (
        events
    )
    attempt = next(r for r in records if r["event"] == "attempt")
    assert attempt["host"] == "127.0.0.1" and attempt["port"] == server.port
    assert attempt["tls"].startswith("TLSv1") and attempt["auth"] in ("PLAIN", "LOGIN", "CRAM-MD5")
    assert all(r["tag"] == "mytag" for r in records)
    failed = next(r for r in records if r["event"] == "failed")
    assert failed["to"] == "bad@remote.test" and "550" in failed["detail"]
    delivered = next(r for r in records if r["event"] == "delivered")
    assert delivered["to"] == "good@remote.test" and delivered["level"] == "info"
    text = logfile.read_text()
    assert PASSWORD not in text


def test_json_line_escapes_everything() -> None:
    line = json_line({"a": 'q"\\\n\x01é', "n": 3, "none": None})
    assert line.endswith("\n") and "\n" not in line[:-1]
    assert json.loads(line) == {"a": 'q"\\\n\x01é', "n": 3, "none": None}


def test_syslog_lines_go_to_the_mail_facility_with_the_tag(dma_env: DmaEnv, tmp_path: Path) -> None:
    # syslog(3) always writes to /dev/log: listen there inside a private mount namespace, where /dev
    # is an empty tmpfs, so the machine's own /dev/log is never touched.
    dma_env.write_conf()
    listener = textwrap.dedent(
        f"""
        import os, socket, subprocess, sys
        s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        s.bind("/dev/log")
        s.settimeout(5)
        env = dict(os.environ, DMA_CONF={str(dma_env.conf)!r}, DMA_STATE_DIR={str(dma_env.state)!r})
        done = subprocess.run([{sys.executable!r}, "-m", "dma.cli", "-L", "tagged", "-D", "root"],
                              input=b"Subject: s\\n\\nx\\n", env=env, capture_output=True)
        assert done.returncode == 0, done.stderr
        s.settimeout(0.5)
        try:
            while True:
                print(s.recv(4096).decode())
        except socket.timeout:
            pass
        """
    )
    script = tmp_path / "listen.py"
    script.write_text(listener)
    run = subprocess.run(
        [
            "unshare",
            "--mount",
            "--propagation",
            "private",
            "sh",
            "-c",
            f"mount -t tmpfs tmpfs /dev && exec {sys.executable} {script}",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert run.returncode == 0, run.stderr
    lines = [line for line in run.stdout.splitlines() if line]
    delivered = [line for line in lines if "delivered to root" in line]
    assert delivered, lines
    # <priority>: facility mail (2) * 8 + info (6) = 22; the ident is the -L tag with our pid.
    assert delivered[0].startswith("<22>") and "tagged[" in delivered[0], delivered


def test_every_level_the_code_logs_at_has_a_syslog_priority() -> None:
    # An unknown level falls back to info: a warning would reach syslog as routine news.
    import re

    from dma.mail import log

    source = "".join(p.read_text() for p in (Path(log.__file__).parent.parent).rglob("*.py"))
    levels = set(re.findall(r'(?:\.event\(|level=)"([a-z]+)"', source))
    assert {"warning", "crit"} <= levels
    assert levels <= set(log._PRIORITIES), levels - set(log._PRIORITIES)


def test_a_logfile_that_fails_does_not_fail_the_mail(dma_env: DmaEnv) -> None:
    """The mail is queued before its log line is written: a full disk under LOGFILE must not turn
    that into an error exit, after which the caller would send the message a second time."""
    dma_env.write_conf("LOGFILE /dev/full")
    run = dma_env.run(["-bq", "someone@remote.test"], b"Subject: s\n\nx\n")
    assert (run.returncode, run.stderr) == (0, b"")
    assert dma_env.recipients() == ["someone@remote.test"]
