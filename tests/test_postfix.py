"""dma against a production MTA: a real Postfix (Debian's package, unpacked into /opt/postfix-root
by .ci/run) as a relay on a loopback port that passes mail on to an aiosmtpd sink, and Postfix's
`smtp-sink` as a fast sink for a 100-message queue run.

Postfix runs with its own config and queue directories (`postfix -c DIR start`), never the
system's. If Postfix is not installed the tests fail and say how to install it.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from dma.errors import EX_UNAVAILABLE
from dma_fixtures import DmaEnv
from servers import Pki, Postfix, PostfixSmtpSink, SmtpSink

SENDER = "sender@client.test"
MSG = (
    b"Subject: through postfix\n"
    b"\n"
    b"first line\n"
    b".a line starting with a dot\n"
    b"..two dots\n"
    b".\n"
    b"after a lone dot\n"
    b"caf\xc3\xa9 8-bit text\n"
)


class Relay:
    def __init__(self, root: Path) -> None:
        root.mkdir(parents=True, exist_ok=True)
        self.pki = Pki(root)
        self.sink = SmtpSink("127.0.0.1").start()
        self.postfix = Postfix(
            root / "postfix",
            f"127.0.0.1:{self.sink.port}",
            pki=self.pki,
            extra=(
                "smtpd_recipient_restrictions = check_recipient_access"
                " inline:{ {refused@remote.test = 550 5.1.1 no such user here} }, permit_mynetworks, reject",
            ),
        )
        try:
            self.postfix.start()
        except BaseException:
            self.sink.stop()
            raise

    def wait_for(self, count: int, timeout: float = 15) -> list:
        deadline = time.monotonic() + timeout
        while len(self.sink.messages) < count and time.monotonic() < deadline:
            time.sleep(0.05)
        assert len(self.sink.messages) >= count, self.postfix.log()[-3000:]
        return self.sink.messages

    def smtpd_sessions(self) -> list[str]:
        """Postfix smtpd's `disconnect from` lines of sessions that sent mail (one per client
        connection, with command counts). Postfix logs asynchronously: wait a little for them."""
        time.sleep(0.3)
        return [
            line
            for line in self.postfix.log().splitlines()
            if "postfix/smtpd" in line and "disconnect from" in line and " mail=" in line
        ]

    def close(self) -> None:
        try:
            self.postfix.stop()
        finally:
            self.sink.stop()


@pytest.fixture(scope="module")
def relay(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Relay]:
    r = Relay(tmp_path_factory.mktemp("postfix"))
    yield r
    r.close()


@pytest.fixture
def dma_to_postfix(tmp_path: Path, relay: Relay) -> DmaEnv:
    relay.sink.messages.clear()
    env = DmaEnv(tmp_path)
    env.smarthost = ""  # ours below (the shared fixture may set a default)
    env.write_conf(
        "SMARTHOST localhost",
        f"PORT {relay.postfix.port}",
        "SECURETRANSFER",
        "STARTTLS",
        "VERIFYCERT",
        f"CAFILE {relay.pki.cafile}",
        "HOST_CONCURRENCY 1",
    )
    return env


def test_relay_through_postfix_with_starttls(dma_to_postfix: DmaEnv, relay: Relay) -> None:
    before = len(relay.smtpd_sessions())
    r = dma_to_postfix.run(["-D", "-oi", "-f", SENDER, "you@remote.test"], MSG)  # -oi: "." is text
    assert r.returncode == 0, r.stderr
    assert dma_to_postfix.entries() == []
    [m] = relay.wait_for(1)
    assert (m.mail_from, m.rcpt_tos) == (SENDER, ["you@remote.test"])
    text = m.content.replace(b"\r\n", b"\n")
    headers, body = text.split(b"\n\n", 1)
    # Postfix's Received first (it saw dma come in over TLS), then dma's own
    received = re.findall(rb"^Received: .*(?:\n\t.*)*", headers, re.M)
    assert len(received) == 2, headers
    assert b"by postfix.test (Postfix) with ESMTPS" in received[0], received[0]
    assert b"(using TLS" in received[0]
    assert b"by mail.example (dma" in received[1], received[1]
    assert body == MSG.split(b"\n\n", 1)[1]
    # one session: EHLO, STARTTLS, EHLO, MAIL, RCPT, DATA, QUIT
    [session] = relay.smtpd_sessions()[before:]
    assert "starttls=1" in session and "mail=1" in session and "quit=1" in session, session


def test_postfix_rejects_one_recipient(dma_to_postfix: DmaEnv, relay: Relay) -> None:
    r = dma_to_postfix.run(["-D", "-f", SENDER, "a@remote.test", "refused@remote.test", "b@remote.test"], MSG)
    assert r.returncode == EX_UNAVAILABLE, r.stderr
    [m] = relay.wait_for(1)
    assert sorted(m.rcpt_tos) == ["a@remote.test", "b@remote.test"]
    # the refused recipient is not lost: a bounce to the sender is queued with Postfix's reply
    [bounce] = dma_to_postfix.entries()
    assert (bounce.sender, bounce.recipient) == ("", SENDER)
    report = dma_to_postfix.message()
    assert b"refused@remote.test" in report and b"550 5.1.1" in report


def test_queued_messages_share_one_postfix_connection(dma_to_postfix: DmaEnv, relay: Relay) -> None:
    for i in range(5):
        r = dma_to_postfix.run(["-bq", "-f", SENDER, f"r{i}@remote.test"], MSG)
        assert r.returncode == 0, r.stderr
    before = len(relay.smtpd_sessions())
    r = dma_to_postfix.run(["-q", "-D"], prog="dma")
    assert r.returncode == 0, r.stderr
    messages = relay.wait_for(5)
    assert sorted(r for m in messages for r in m.rcpt_tos) == [f"r{i}@remote.test" for i in range(5)]
    [session] = relay.smtpd_sessions()[before:]
    assert "mail=5" in session and "rcpt=5" in session and "data=5" in session, session
    assert dma_to_postfix.entries() == []


# ---- smtp-sink ---------------------------------------------------------------------------------


def test_hundred_queued_messages_to_smtp_sink_over_one_connection(tmp_path: Path) -> None:
    env = DmaEnv(tmp_path)
    env.smarthost = ""
    with PostfixSmtpSink(tmp_path) as sink:
        env.write_conf("SMARTHOST 127.0.0.1", f"PORT {sink.port}", "HOST_CONCURRENCY 1")
        for i in range(100):
            r = env.run(["-bq", "-f", SENDER, f"user{i}@remote.test"], MSG)
            assert r.returncode == 0, r.stderr
        assert len(env.entries()) == 100
        r = env.run(["-q", "-D"], prog="dma")
        assert r.returncode == 0, r.stderr
        assert env.entries() == []
        deadline = time.monotonic() + 5
        while "disconnect" not in sink.commands() and time.monotonic() < deadline:
            time.sleep(0.05)
        commands = sink.commands()
    assert sum(c.startswith("connect ") for c in commands) == 1, commands[:20]
    assert sum(c.lower().startswith("ehlo ") for c in commands) == 1
    assert sum(c.upper().startswith("MAIL FROM:") for c in commands) == 100
    assert sorted(c[8:] for c in commands if c.upper().startswith("RCPT TO:")) == sorted(
        f"<user{i}@remote.test>" for i in range(100)
    )
    assert commands.count(".") == 100
    assert "disconnect" in commands
