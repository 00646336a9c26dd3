"""Smoke suite for an installed dma: the programs a user runs, end to end, with nothing mocked.

`tests/wheels/run.sh` runs it against each release wheel inside a Debian userland of the wheel's
own architecture and glibc (bullseye x86-64; aarch64 under qemu-user); the normal suite runs it
against the development build. A submission, `mailq`, a delivery over STARTTLS + AUTH to a loopback
server, local mbox and Maildir delivery, a bounce, and `dma doctor`.
"""

from __future__ import annotations

import mailbox
import os
from pathlib import Path

import pytest
from dma_fixtures import ME, DmaEnv
from servers import Pki, SmtpSink

PASSWORD = "smoke pass:word"
MSG = b"Subject: smoke\n\nhello from the smoke suite\n"


@pytest.fixture
def relay(dma_env: DmaEnv, tmp_path: Path):  # type: ignore[no-untyped-def]
    """A STARTTLS + AUTH sink on loopback, and dma_env's config relaying to it."""
    pki = Pki(tmp_path)
    auth = tmp_path / "auth.conf"
    auth.write_text(f"joe|localhost:{PASSWORD}\n")
    auth.chmod(0o600)
    sink = SmtpSink("127.0.0.1", tls="starttls", pki=pki, users={"joe": PASSWORD}).start()
    dma_env.smarthost = ""
    dma_env.write_conf(
        f"SMARTHOST localhost\nPORT {sink.port}",
        f"AUTHPATH {auth}",
        f"CAFILE {pki.cafile}",
        "SECURETRANSFER\nSTARTTLS\nVERIFYCERT",
        "CONNECT_TIMEOUT 10\nTIMEOUT 30",
    )
    yield sink
    sink.stop()


def test_submit_then_mailq_then_queue_run_over_starttls_auth(dma_env: DmaEnv, relay: SmtpSink) -> None:
    r = dma_env.run(["-bq", "-f", "me@client.test", "you@remote.test"], MSG)
    assert r.returncode == 0, r.stderr
    q = dma_env.run([], prog="mailq")
    assert q.returncode == 0, q.stderr
    assert b"you@remote.test" in q.stdout and b"me@client.test" in q.stdout
    r = dma_env.run(["-q", "-D"], prog="dma")
    assert r.returncode == 0, r.stderr
    [m] = relay.messages
    assert (m.mail_from, m.rcpt_tos, m.login, m.tls) == ("me@client.test", ["you@remote.test"], "joe", True)
    assert m.content.replace(b"\r\n", b"\n").endswith(b"\n\nhello from the smoke suite\n")
    assert dma_env.entries() == []
    assert dma_env.run([], prog="mailq").stdout == b"Mail queue is empty\n"


def test_local_mbox_delivery(dma_env: DmaEnv) -> None:
    r = dma_env.run(["-D", "-f", "me@client.test", ME], MSG)
    assert r.returncode == 0, r.stderr
    mbox = dma_env.mbox(ME)
    assert mbox.startswith(b"From me@client.test ")
    assert mbox.endswith(b"\n\nhello from the smoke suite\n\n")


def test_local_maildir_delivery(dma_env: DmaEnv, tmp_path: Path) -> None:
    (tmp_path / "maildirs").mkdir()  # dma makes the Maildir itself, not the folders above it
    dma_env.write_conf(f"MAILDIR {tmp_path}/maildirs/%u")
    r = dma_env.run(["-D", ME], MSG)
    assert r.returncode == 0, r.stderr
    box = mailbox.Maildir(str(tmp_path / "maildirs" / ME), create=False)
    [msg] = list(box)
    assert msg["Subject"] == "smoke" and msg.get_payload() == "hello from the smoke suite\n"
    assert not os.path.exists(dma_env.mboxdir / ME)


def test_rejected_recipient_bounces_to_the_local_sender(dma_env: DmaEnv, relay: SmtpSink) -> None:
    relay.rcpt_replies["nobody@remote.test"] = "550 5.1.1 <nobody@remote.test>: no such user"
    r = dma_env.run(["-D", "-f", ME, "nobody@remote.test"], MSG)
    assert r.returncode == 69, r.stderr  # EX_UNAVAILABLE: a permanent failure, bounced
    assert relay.messages == []
    [bounce] = dma_env.entries()  # queued from the null sender; the queue run delivers it
    assert (bounce.sender, bounce.recipient) == ("", ME)
    assert dma_env.run(["-q", "-D"], prog="dma").returncode == 0
    mbox = dma_env.mbox(ME)
    assert mbox.startswith(b"From MAILER-DAEMON ")
    assert b"nobody@remote.test" in mbox and b"550 5.1.1" in mbox
    assert dma_env.entries() == []


def test_doctor_passes_against_the_relay(dma_env: DmaEnv, relay: SmtpSink) -> None:
    r = dma_env.run(["doctor"], prog="dma")
    out = r.stdout.decode()
    assert r.returncode == 0, out + r.stderr.decode()
    assert "FAIL" not in out
    assert "(after STARTTLS)" in out and "AUTH" in out
    assert relay.messages == []
