"""Remote delivery end to end: the real `sendmail -D` and `dma -q -D` programs, through the queue
runner and the Rust SMTP transport, to aiosmtpd servers on loopback (tests/servers.py), with a
trustme CA, auth.conf, and the test's own DNS server for smarthost names.

MX delivery always uses port 25: those tests live in test_direct_mx.py (private network namespace).
"""

from __future__ import annotations

import base64
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from dma.errors import EX_TEMPFAIL, EX_UNAVAILABLE
from dma_fixtures import DmaEnv
from servers import DnsServer, Pki, ScriptedServer, SmtpSink, Zone, free_port

SENDER = "sender@client.test"  # remote: its bounces go out through the smarthost too
PASSWORD = "s3cret pass:with|odd chars"
MSG = b"Subject: remote test\n\nhello over SMTP\n.leading dot\n"


class Remote(DmaEnv):
    """A DmaEnv whose dma.conf relays to a smarthost, plus a CA and an auth.conf."""

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.smarthost = ""  # relay_to() names the smarthost (the shared fixture may set a default)
        self.pki = Pki(root)
        self.authconf = root / "auth.conf"
        self.authconf.write_text(f"joe|localhost:{PASSWORD}\njoe|relay.test:{PASSWORD}\n")

    def relay_to(self, host: str, port: int, *extra: str) -> None:
        self.write_conf(
            f"SMARTHOST {host}",
            f"PORT {port}",
            f"AUTHPATH {self.authconf}",
            f"CAFILE {self.pki.cafile}",
            "CONNECT_TIMEOUT 5",
            "TIMEOUT 10",
            *extra,
        )

    def send(self, *rcpts: str, args: tuple[str, ...] = (), msg: bytes = MSG):  # type: ignore[no-untyped-def]
        return self.run(["-D", *args, "-f", SENDER, *rcpts], msg)


@pytest.fixture
def remote(tmp_path: Path) -> Remote:
    return Remote(tmp_path)


@pytest.fixture
def sinks() -> Iterator[list[SmtpSink]]:
    """Started sinks are stopped at the end of the test."""
    started: list[SmtpSink] = []
    yield started
    for s in started:
        s.stop()


def sink(sinks: list[SmtpSink], remote: Remote, host: str = "127.0.0.1", **kw: object) -> SmtpSink:
    kw.setdefault("pki", remote.pki)
    s = SmtpSink(host, **kw).start()  # type: ignore[arg-type]
    sinks.append(s)
    return s


def body_of(content: bytes) -> bytes:
    return content.replace(b"\r\n", b"\n").split(b"\n\n", 1)[1]


# ---- TLS and AUTH ------------------------------------------------------------------------------


def test_starttls_auth_verifycert(remote: Remote, sinks: list[SmtpSink]) -> None:
    s = sink(sinks, remote, tls="starttls", users={"joe": PASSWORD})
    remote.relay_to("localhost", s.port, "SECURETRANSFER", "STARTTLS", "VERIFYCERT")
    r = remote.send("you@remote.test")
    assert r.returncode == 0, r.stderr
    assert len(s.messages) == 1
    m = s.messages[0]
    assert (m.mail_from, m.rcpt_tos, m.login, m.tls) == (
        SENDER,
        ["you@remote.test"],
        "joe",
        True,
    )
    assert body_of(m.content) == b"hello over SMTP\n.leading dot\n"
    assert m.content.startswith(b"Received: ")
    assert remote.entries() == []
    assert [n for n in remote.files() if n[0] in "QM"] == []


def test_implicit_tls_with_auth(remote: Remote, sinks: list[SmtpSink]) -> None:
    s = sink(sinks, remote, tls="implicit", users={"joe": PASSWORD})
    remote.relay_to("localhost", s.port, "SECURETRANSFER", "VERIFYCERT")
    r = remote.send("you@remote.test")
    assert r.returncode == 0, r.stderr
    assert [(m.login, m.tls) for m in s.messages] == [("joe", True)]
    assert remote.entries() == []


def test_smarthost_name_through_dns_server_ipv6_refused_then_ipv4(
    remote: Remote, sinks: list[SmtpSink]
) -> None:
    # relay.test has AAAA ::1 (nothing listens on that port there) and A 127.0.0.1 (the sink):
    # the session moves on to the next address of the host.
    s = sink(sinks, remote, tls="starttls", users={"joe": PASSWORD})
    zone = Zone({"relay.test": [("AAAA", "::1"), ("A", "127.0.0.1")]})
    with DnsServer(zone) as dns:
        remote.relay_to("relay.test", s.port, dns.conf, "SECURETRANSFER", "STARTTLS", "VERIFYCERT")
        r = remote.send("you@remote.test")
        assert r.returncode == 0, r.stderr
        assert {q[0] for q in dns.queries} == {"relay.test"}
    assert [(m.login, m.tls) for m in s.messages] == [("joe", True)]


def test_smarthost_on_ipv6_loopback(remote: Remote, sinks: list[SmtpSink]) -> None:
    # (auth.conf cannot name an IPv6 literal host: `login|::1:secret` splits at the first colon)
    s = sink(sinks, remote, host="::1", tls="starttls", users={"joe": PASSWORD})
    remote.relay_to("::1", s.port, "SECURETRANSFER", "STARTTLS", "VERIFYCERT")
    r = remote.send("you@remote.test")
    assert r.returncode == 0, r.stderr
    assert [(m.rcpt_tos, m.login, m.tls) for m in s.messages] == [(["you@remote.test"], None, True)]


def test_certificate_from_another_ca_is_temporary(
    remote: Remote, sinks: list[SmtpSink], tmp_path: Path
) -> None:
    other = tmp_path / "other"
    other.mkdir()
    s = sink(sinks, remote, tls="starttls", pki=Pki(other), users={"joe": PASSWORD})
    remote.relay_to("localhost", s.port, "SECURETRANSFER", "STARTTLS", "VERIFYCERT")
    r = remote.send("you@remote.test")
    assert r.returncode == EX_TEMPFAIL, r.stderr
    assert s.messages == [] and s.auth_attempts == []
    [entry] = remote.entries()
    assert entry.attempts == 1 and entry.state == ""


def test_fingerprint_pins_the_certificate(remote: Remote, sinks: list[SmtpSink], tmp_path: Path) -> None:
    other = tmp_path / "other"
    other.mkdir()
    # no CAFILE trust needed: the pin is what counts
    s = sink(sinks, remote, tls="implicit", pki=Pki(other))
    remote.relay_to("localhost", s.port, "SECURETRANSFER", f"FINGERPRINT {s.pki.fingerprint()}")  # type: ignore[union-attr]
    r = remote.send("you@remote.test")
    assert r.returncode == 0, r.stderr
    assert len(s.messages) == 1
    remote.relay_to("localhost", s.port, "SECURETRANSFER", f"FINGERPRINT {remote.pki.fingerprint()}")
    r = remote.send("you@remote.test")
    assert r.returncode == EX_TEMPFAIL, r.stderr
    assert len(s.messages) == 1
    assert len(remote.entries()) == 1


class ClientCertPki(Pki):
    """A server that asks every client for a certificate from its own CA and refuses without one."""

    def server_context(self) -> object:
        import ssl

        ctx = super().server_context()
        ctx.verify_mode = ssl.CERT_REQUIRED
        ctx.load_verify_locations(cafile=str(self.cafile))
        return ctx


def test_client_certificate_from_certfile(remote: Remote, sinks: list[SmtpSink], tmp_path: Path) -> None:
    (tmp_path / "server").mkdir()
    pki = ClientCertPki(tmp_path / "server")
    client = pki.ca.issue_cert("client.test")
    certfile = tmp_path / "client.pem"  # chain and key in one file, as CERTFILE takes them
    certfile.write_bytes(b"".join(p.bytes() for p in client.cert_chain_pems) + client.private_key_pem.bytes())
    s = sink(sinks, remote, tls="implicit", pki=pki)
    remote.relay_to("localhost", s.port, "SECURETRANSFER", "VERIFYCERT", f"CAFILE {pki.cafile}")
    r = remote.send("you@remote.test")
    assert r.returncode == EX_TEMPFAIL, r.stderr  # no client certificate: the handshake fails
    assert s.messages == []
    remote.relay_to(
        "localhost", s.port, "SECURETRANSFER", "VERIFYCERT", f"CAFILE {pki.cafile}", f"CERTFILE {certfile}"
    )
    r = remote.send("you@remote.test")
    assert r.returncode == 0, r.stderr
    assert len(s.messages) == 1 and s.messages[0].tls


def test_starttls_required_but_not_offered_is_temporary(remote: Remote, sinks: list[SmtpSink]) -> None:
    s = sink(sinks, remote, tls=None)
    remote.relay_to("localhost", s.port, "SECURETRANSFER", "STARTTLS")
    r = remote.send("you@remote.test")
    assert r.returncode == EX_TEMPFAIL, r.stderr
    assert s.messages == []
    assert len(remote.entries()) == 1


def test_opportunistic_tls_falls_back_without_sending_the_password(
    remote: Remote, sinks: list[SmtpSink]
) -> None:
    # C dma's hole (behaviour 4.8): after the plaintext fallback it sent AUTH LOGIN in the clear.
    s = sink(sinks, remote, tls=None, users={"joe": PASSWORD})
    remote.relay_to("localhost", s.port, "SECURETRANSFER", "STARTTLS", "OPPORTUNISTIC_TLS")
    r = remote.send("you@remote.test", args=("-v",))
    assert s.auth_attempts == []
    assert PASSWORD.encode() not in r.stderr
    # without INSECURE: delivered in plain text, unauthenticated (docs/configuration.md)
    assert r.returncode == 0, r.stderr
    assert [(m.login, m.tls) for m in s.messages] == [(None, False)]
    assert b"AUTH" not in r.stderr.replace(b"250-AUTH", b"")


def test_insecure_allows_auth_without_tls(remote: Remote, sinks: list[SmtpSink]) -> None:
    s = sink(sinks, remote, tls=None, users={"joe": PASSWORD})
    remote.relay_to("localhost", s.port, "INSECURE")
    r = remote.send("you@remote.test")
    assert r.returncode == 0, r.stderr
    assert [(m.login, m.tls) for m in s.messages] == [("joe", False)]


def test_no_auth_over_plain_text_without_insecure(remote: Remote, sinks: list[SmtpSink]) -> None:
    s = sink(sinks, remote, tls=None, users={"joe": PASSWORD})
    remote.relay_to("localhost", s.port)
    r = remote.send("you@remote.test")
    assert s.auth_attempts == []
    # either sent unauthenticated (as C dma) or deferred; never the password in the clear
    assert r.returncode in (0, EX_TEMPFAIL), r.stderr


def test_verbose_prints_the_dialogue_but_never_the_password(remote: Remote, sinks: list[SmtpSink]) -> None:
    s = sink(sinks, remote, tls="starttls", users={"joe": PASSWORD})
    remote.relay_to("localhost", s.port, "SECURETRANSFER", "STARTTLS", "VERIFYCERT")
    r = remote.send("you@remote.test", args=("-v",))
    assert r.returncode == 0, r.stderr
    err = r.stderr
    for expected in (
        b"EHLO mail.example",
        b"STARTTLS",
        b"MAIL FROM:<sender@client.test>",
        b"RCPT TO:<you@remote.test>",
    ):
        assert expected in err, err
    assert b"250" in err and b"220" in err
    assert b"AUTH" in err
    secrets = [
        PASSWORD.encode(),
        base64.b64encode(PASSWORD.encode()),
        base64.b64encode(b"\0joe\0" + PASSWORD.encode()),
        base64.b64encode(b"joe\0joe\0" + PASSWORD.encode()),
    ]
    for secret in secrets:
        assert secret not in err, secret
    # ... nor in the message or the spool
    assert len(s.messages) == 1
    assert PASSWORD.encode() not in s.messages[0].content


def test_wrong_password_is_temporary_and_keeps_the_entry(remote: Remote, sinks: list[SmtpSink]) -> None:
    s = sink(sinks, remote, tls="starttls", users={"joe": "another password"})
    remote.relay_to("localhost", s.port, "SECURETRANSFER", "STARTTLS", "VERIFYCERT")
    r = remote.send("you@remote.test")
    assert r.returncode == EX_TEMPFAIL, r.stderr
    assert s.messages == []
    assert [a[1:] for a in s.auth_attempts][:1] == [("joe", False)]
    [entry] = remote.entries()
    assert entry.state == "" and entry.attempts == 1
    assert entry.next_attempt > time.time()
    assert "535" in entry.last_error or "auth" in entry.last_error.lower(), entry.last_error
    assert PASSWORD not in entry.last_error


# ---- per-recipient results --------------------------------------------------------------------


def test_550_for_one_of_three_recipients(remote: Remote, sinks: list[SmtpSink]) -> None:
    s = sink(sinks, remote, rcpt_replies={"b@remote.test": "550 5.1.1 <b@remote.test>: no such user"})
    remote.relay_to("127.0.0.1", s.port)
    r = remote.send("a@remote.test", "b@remote.test", "c@remote.test")
    assert r.returncode == EX_UNAVAILABLE, r.stderr
    assert b"550" in r.stderr and b"b@remote.test" in r.stderr
    assert len(s.messages) == 1
    assert sorted(s.messages[0].rcpt_tos) == ["a@remote.test", "c@remote.test"]
    # Nothing is lost: the failed recipient's entry has become a bounce to the sender, queued
    # from the null sender and naming the recipient and the server's reply.
    [bounce] = remote.entries()
    assert (bounce.sender, bounce.recipient) == ("", SENDER)
    report = remote.message()
    assert b"b@remote.test" in report and b"550 5.1.1" in report
    assert b"a@remote.test" not in report.split(b"\n\n", 1)[1].split(b"Content-Type: message/")[0]
    r = remote.run(["-q", "-D"], prog="dma")
    assert r.returncode == 0, r.stderr
    assert [(m.mail_from, m.rcpt_tos) for m in s.messages[1:]] == [("<>", [SENDER])]
    assert b"550 5.1.1" in s.messages[1].content
    assert remote.entries() == []


def test_550_kept_in_the_queue_when_no_bounce_can_be_made(remote: Remote, sinks: list[SmtpSink]) -> None:
    # A sender in our own MAILNAME domain that is no local user, and no postmaster alias: the
    # bounce cannot be queued, so the failed entry stays (held), with the 550 in Last-Error.
    s = sink(sinks, remote, rcpt_replies={"b@remote.test": "550 5.1.1 <b@remote.test>: no such user"})
    remote.relay_to("127.0.0.1", s.port)
    r = remote.run(["-D", "-f", "nobody-here@mail.example", "a@remote.test", "b@remote.test"], MSG)
    assert r.returncode == EX_UNAVAILABLE, r.stderr
    assert [sorted(m.rcpt_tos) for m in s.messages] == [["a@remote.test"]]
    [entry] = remote.entries()
    assert entry.recipient == "b@remote.test"
    assert entry.state in ("failed", "held"), entry.state
    assert "550" in entry.last_error, entry.last_error
    assert body_of(remote.message()) == body_of(MSG)
    [fields] = remote.q_files().values()
    assert "550" in fields.get("Last-Error", ""), fields
    # a final entry is not retried by a queue run
    r = remote.run(["-q", "-D"], prog="dma")
    assert r.returncode == 0, r.stderr
    assert len(s.messages) == 1 and s.connections == 1
    assert len(remote.entries()) == 1


def test_451_defers_with_attempts_and_next_attempt(remote: Remote, sinks: list[SmtpSink]) -> None:
    s = sink(sinks, remote, data_reply="451 4.3.0 try again later")
    remote.relay_to("127.0.0.1", s.port)
    before = time.time()
    r = remote.send("you@remote.test")
    assert r.returncode == EX_TEMPFAIL, r.stderr
    assert s.messages == []
    [entry] = remote.entries()
    assert entry.state == "" and entry.attempts == 1
    assert entry.next_attempt > before
    assert "451" in entry.last_error, entry.last_error
    [fields] = remote.q_files().values()
    assert fields.get("Attempts") == "1", fields
    assert int(fields["Next-Attempt"]) > before, fields
    # the server recovers: `dma -q -D` forces the deferred entry out now
    s.data_reply = None
    r = remote.run(["-q", "-D"], prog="dma")
    assert r.returncode == 0, r.stderr
    assert [m.rcpt_tos for m in s.messages] == [["you@remote.test"]]
    assert remote.entries() == []


def test_connection_refused_is_temporary(remote: Remote) -> None:
    remote.relay_to("127.0.0.1", free_port())
    r = remote.send("you@remote.test")
    assert r.returncode == EX_TEMPFAIL, r.stderr
    [entry] = remote.entries()
    assert entry.attempts == 1 and entry.state == ""


def test_421_greeting_is_temporary(remote: Remote) -> None:
    with ScriptedServer(greeting="421 4.3.2 too busy") as busy:
        remote.relay_to("127.0.0.1", busy.port)
        r = remote.send("you@remote.test")
        assert r.returncode == EX_TEMPFAIL, r.stderr
        assert busy.connections >= 1
    [entry] = remote.entries()
    assert "421" in entry.last_error, entry.last_error


def test_554_greeting_is_permanent(remote: Remote) -> None:
    with ScriptedServer(greeting="554 5.7.1 go away") as hostile:
        remote.relay_to("127.0.0.1", hostile.port)
        r = remote.send("you@remote.test")
        assert r.returncode == EX_UNAVAILABLE, r.stderr
    # the 554 is in the bounce queued for the sender
    [bounce] = remote.entries()
    assert (bounce.sender, bounce.recipient) == ("", SENDER)
    assert b"554 5.7.1" in remote.message()


# ---- the queue runner shares connections -----------------------------------------------------


@pytest.mark.parametrize("host_concurrency", [1, 2])
def test_queue_run_shares_connections(remote: Remote, sinks: list[SmtpSink], host_concurrency: int) -> None:
    s = sink(sinks, remote, tls="starttls", users={"joe": PASSWORD})
    remote.relay_to(
        "localhost",
        s.port,
        "SECURETRANSFER",
        "STARTTLS",
        "VERIFYCERT",
        f"HOST_CONCURRENCY {host_concurrency}",
    )
    for i in range(6):
        r = remote.run(["-bq", "-f", SENDER, f"r{i}@one.test", f"r{i}@two.test"], MSG)
        assert r.returncode == 0, r.stderr
    assert len(remote.entries()) == 12
    r = remote.run(["-q", "-D"], prog="dma")
    assert r.returncode == 0, r.stderr
    # HOST_CONCURRENCY sessions to the smarthost, each carrying its share of the messages
    assert s.connections == host_concurrency
    assert len(s.auth_attempts) == host_concurrency
    assert len(s.messages) == 6
    # one transaction per message, both recipients (different domains, same smarthost) in it
    assert sorted(sorted(m.rcpt_tos) for m in s.messages) == [
        [f"r{i}@one.test", f"r{i}@two.test"] for i in range(6)
    ]
    assert {m.login for m in s.messages} == {"joe"}
    assert remote.entries() == []


def test_queue_run_without_due_entries_does_not_connect(remote: Remote, sinks: list[SmtpSink]) -> None:
    s = sink(sinks, remote)
    remote.relay_to("127.0.0.1", s.port)
    r = remote.run(["-q", "-D"], prog="dma")
    assert r.returncode == 0, r.stderr
    assert s.connections == 0


# ---- more of the dialogue ------------------------------------------------------------------------


def test_auth_login_in_verbose_mode_hides_both_credentials(remote: Remote, sinks: list[SmtpSink]) -> None:
    s = sink(sinks, remote, tls="starttls", users={"joe": PASSWORD}, auth_mechanisms=["LOGIN"])
    remote.relay_to("localhost", s.port, "SECURETRANSFER", "STARTTLS", "VERIFYCERT")
    r = remote.send("you@remote.test", args=("-v",))
    assert r.returncode == 0, r.stderr
    assert [a[:2] for a in s.auth_attempts] == [("LOGIN", "joe")]
    assert [m.login for m in s.messages] == ["joe"]
    for secret in (PASSWORD.encode(), base64.b64encode(PASSWORD.encode())):
        assert secret not in r.stderr, r.stderr


def test_rejected_data_fails_one_message_and_the_session_goes_on(
    remote: Remote, sinks: list[SmtpSink]
) -> None:
    # Three messages in one session; the server refuses the second at the final dot.
    s = sink(sinks, remote, data_replies={"bad@remote.test": "554 5.6.0 content rejected"})
    remote.relay_to("127.0.0.1", s.port, "HOST_CONCURRENCY 1")
    for rcpt in ("good1@remote.test", "bad@remote.test", "good2@remote.test"):
        r = remote.run(["-bq", "-f", SENDER, rcpt], MSG)
        assert r.returncode == 0, r.stderr
    r = remote.run(["-q", "-D"], prog="dma")
    assert r.returncode == 0, r.stderr
    first = [m for m in s.messages if m.mail_from == SENDER]
    assert sorted(rc for m in first for rc in m.rcpt_tos) == ["good1@remote.test", "good2@remote.test"]
    assert first[0].peer == first[1].peer  # one connection, after the rejected transaction too
    # the refused one came back as a bounce to the sender, delivered in the same run or queued
    rest = [(e.sender, e.recipient) for e in remote.entries()]
    bounced = [m for m in s.messages if m.mail_from == "<>"]
    assert rest == [("", SENDER)] or (rest == [] and len(bounced) == 1), rest
    assert s.connections == 1  # the bounce, too, went over the cached connection


def test_silent_server_times_out_as_temporary(remote: Remote) -> None:
    with ScriptedServer(greeting=None) as silent:
        remote.relay_to("127.0.0.1", silent.port)
        remote.write_conf(
            "SMARTHOST 127.0.0.1",
            f"PORT {silent.port}",
            "TIMEOUT 1",
        )
        start = time.monotonic()
        r = remote.send("you@remote.test")
        elapsed = time.monotonic() - start
    assert r.returncode == EX_TEMPFAIL, r.stderr
    assert elapsed < 10, elapsed
    [entry] = remote.entries()
    assert entry.attempts == 1 and entry.state == ""


def test_421_greeting_on_one_address_moves_to_the_next_address(remote: Remote, sinks: list[SmtpSink]) -> None:
    # relay.test: [::1] answers 421 at the greeting, 127.0.0.1 works. C dma tries every
    # (host, address) entry in turn on temporary failures (behaviour 4.7).
    s = sink(sinks, remote)
    with ScriptedServer("::1", s.port, greeting="421 4.3.2 busy") as busy:
        zone = Zone({"relay.test": [("AAAA", "::1"), ("A", "127.0.0.1")]})
        with DnsServer(zone) as dns:
            remote.relay_to("relay.test", s.port, dns.conf)
            r = remote.send("you@remote.test")
        assert busy.connections == 1
    assert r.returncode == 0, r.stderr
    assert [m.rcpt_tos for m in s.messages] == [["you@remote.test"]]


def test_452_for_one_recipient_defers_only_that_one(remote: Remote, sinks: list[SmtpSink]) -> None:
    s = sink(sinks, remote, rcpt_replies={"later@remote.test": "452 4.5.3 too many recipients"})
    remote.relay_to("127.0.0.1", s.port)
    r = remote.send("now@remote.test", "later@remote.test")
    assert r.returncode == EX_TEMPFAIL, r.stderr
    assert [m.rcpt_tos for m in s.messages] == [["now@remote.test"]]
    [entry] = remote.entries()
    assert (entry.recipient, entry.attempts, entry.state) == ("later@remote.test", 1, "")
    assert "452" in entry.last_error
    s.rcpt_replies.clear()
    r = remote.run(["-q", "-D"], prog="dma")
    assert r.returncode == 0, r.stderr
    assert [m.rcpt_tos for m in s.messages] == [["now@remote.test"], ["later@remote.test"]]
    assert remote.entries() == []
