"""The SMTP transport (`dma._native.Connection.session`) against real servers on loopback: aiosmtpd
with trustme certificates, and raw-socket servers for exact bytes and hostile behaviour."""

from __future__ import annotations

import base64
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from dma import _native
from smtp_servers import LOGIN, PASSWORD, TOKEN, Certs, Peer, RawServer, Recorder, Smtpd, free_port, scripted

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

BODY = b"Subject: test\n\nhello\n"


@pytest.fixture
def msg(tmp_path: Path):
    """Write a spool-style message file (LF line endings) and return its path."""
    count = 0

    def make(body: bytes = BODY) -> str:
        nonlocal count
        count += 1
        path = tmp_path / f"M{count}"
        path.write_bytes(body)
        return str(path)

    return make


def send(port: int, transactions, *, host: str = "mx.test", addresses=("127.0.0.1",), **kw):
    """`tls`: the mode, the policy's other fields beside it; `login`, `secret`, `mechanisms` apart."""
    kw = {
        "connect_timeout": 5.0,
        "command_timeout": 5.0,
        "allow_insecure_auth": False,
        "verbose": False,
        **kw,
    }
    policy = {"verify_cert": False, "ca_file": None, "fingerprint": None, "client_cert": None}
    policy.update((k, kw.pop(k)) for k in list(policy) if k in kw)
    kw["tls"] = {"mode": kw.pop("tls", "none"), **policy}
    kw["credentials"] = None
    if "login" in kw or "secret" in kw:
        kw["credentials"] = (kw.pop("login", None), kw.pop("secret", None), kw.pop("mechanisms", None))
    conn = _native.Connection(host=host, addresses=list(addresses), port=port, helo="client.test", **kw)
    return conn.session(transactions)


def statuses(result) -> list[list[str]]:
    return [[o.status for o in tx] for tx in result.results]


def only(result):
    """The outcome of a single-recipient, single-transaction session."""
    [[outcome]] = result.results
    return outcome


# ---- plain delivery and connecting -----------------------------------------------------------


def test_plain_delivery(msg) -> None:
    with Smtpd() as srv:
        r = send(srv.port, [("from@client.test", ["a@x.test", "b@x.test"], msg())])
    assert statuses(r) == [["sent", "sent"]]
    o = r.results[0][0]
    assert (o.stage, o.code, o.enhanced, o.text) == ("dot", 250, "2.0.0", "queued")
    [m] = srv.handler.messages
    assert m.mail_from == "from@client.test" and m.rcpt_tos == ["a@x.test", "b@x.test"]
    assert m.content == b"Subject: test\r\n\r\nhello\r\n"
    wire = len(m.content)
    assert f"SIZE={wire}" in m.mail_options and "BODY=8BITMIME" not in m.mail_options
    assert r.address == "127.0.0.1" and r.tls_version is None and r.auth_mechanism is None
    assert "SIZE" in r.extensions and "8BITMIME" in r.extensions


def test_ipv6_after_a_refused_address(msg) -> None:
    with Smtpd(host="::1") as srv:
        r = send(srv.port, [("f@c.test", ["a@x.test"], msg())], addresses=["127.0.0.1", "::1"])
    assert only(r).status == "sent"
    assert r.address == "::1"


def test_connection_refused_everywhere_is_temporary(msg) -> None:
    port = free_port()
    r = send(port, [("f@c.test", ["a@x.test"], msg()), ("f@c.test", ["b@x.test", "c@x.test"], msg())])
    assert statuses(r) == [["temporary"], ["temporary", "temporary"]]
    o = r.results[1][1]
    assert (o.stage, o.code) == ("connect", 0) and "127.0.0.1" in o.text
    assert r.address is None


def test_several_transactions_share_one_connection(msg) -> None:
    with Smtpd() as srv:
        r = send(srv.port, [(f"f{i}@c.test", [f"r{i}@x.test"], msg(f"n: {i}\n".encode())) for i in range(3)])
    assert statuses(r) == [["sent"]] * 3
    assert len(srv.handler.messages) == 3
    assert srv.sessions_with_mail == 1
    assert [m.content for m in srv.handler.messages] == [f"n: {i}\r\n".encode() for i in range(3)]


# ---- TLS -----------------------------------------------------------------------------------------


def test_starttls_required_verified(msg, certs: Certs) -> None:
    with Smtpd(tls_context=certs.server_context()) as srv:
        r = send(
            srv.port,
            [("f@c.test", ["a@x.test"], msg())],
            tls="starttls",
            verify_cert=True,
            ca_file=certs.ca_file,
        )
    assert only(r).status == "sent"
    assert r.tls_version in ("TLSv1.3", "TLSv1.2") and r.tls_cipher
    assert r.peer_cert_sha256 == certs.sha256(certs.mx).hex()
    assert srv.handler.ehlo_count == 2  # EHLO again inside TLS
    assert "STARTTLS" not in r.extensions  # the keywords of the second EHLO


def test_a_reconnection_resumes_the_tls_session(msg, certs: Certs) -> None:
    # One client configuration per process: its session cache lets the next connection resume.
    with Smtpd(tls_context=certs.server_context()) as srv:
        kw = {"tls": "starttls", "verify_cert": True, "ca_file": certs.ca_file}
        first = send(srv.port, [("f@c.test", ["a@x.test"], msg())], **kw)
        second = send(srv.port, [("f@c.test", ["b@x.test"], msg())], **kw)
    assert [only(r).status for r in (first, second)] == ["sent", "sent"]
    assert (first.tls_resumed, second.tls_resumed) == (False, True)


def test_starttls_required_but_not_offered_sends_nothing(msg) -> None:
    with Smtpd() as srv:
        r = send(srv.port, [("f@c.test", ["a@x.test"], msg())], tls="starttls")
    o = only(r)
    assert (o.status, o.stage) == ("temporary", "starttls")
    assert srv.handler.mails == []


def test_opportunistic_tls(msg, certs: Certs) -> None:
    with Smtpd(tls_context=certs.server_context()) as srv:
        r = send(srv.port, [("f@c.test", ["a@x.test"], msg())], tls="opportunistic")
    assert only(r).status == "sent" and r.tls_version is not None
    with Smtpd() as srv:
        r = send(srv.port, [("f@c.test", ["a@x.test"], msg())], tls="opportunistic")
    assert only(r).status == "sent" and r.tls_version is None
    assert len(srv.handler.messages) == 1


def test_starttls_refused(msg) -> None:
    script = scripted(ext=("STARTTLS",), replies={"STARTTLS": "454 4.7.0 TLS not available"})
    with RawServer(script) as srv:
        r = send(srv.port, [("f@c.test", ["a@x.test"], msg())], tls="opportunistic")
    assert only(r).status == "sent" and r.tls_version is None
    with RawServer(script) as srv:
        r = send(srv.port, [("f@c.test", ["a@x.test"], msg())], tls="starttls")
    o = only(r)
    assert (o.status, o.stage, o.code) == ("temporary", "starttls", 454)
    assert not any(c.startswith("MAIL") for c in srv.commands)


def test_implicit_tls(msg, certs: Certs) -> None:
    with Smtpd(ssl_context=certs.server_context()) as srv:
        r = send(
            srv.port,
            [("f@c.test", ["a@x.test"], msg())],
            tls="implicit",
            verify_cert=True,
            ca_file=certs.ca_file,
        )
    assert only(r).status == "sent" and r.tls_version is not None
    assert len(srv.handler.messages) == 1


@pytest.mark.parametrize("mode", ["starttls", "implicit"])
def test_certificate_for_another_name_is_refused(msg, certs: Certs, mode: str) -> None:
    ctx = certs.server_context(certs.other)
    kw = {"tls_context": ctx} if mode == "starttls" else {"ssl_context": ctx}
    with Smtpd(**kw) as srv:
        r = send(
            srv.port, [("f@c.test", ["a@x.test"], msg())], tls=mode, verify_cert=True, ca_file=certs.ca_file
        )
    o = only(r)
    assert (o.status, o.stage, o.code) == ("temporary", "tls", 0)
    assert "mx.test" in o.text
    assert srv.handler.mails == []


def test_unverified_tls_accepts_any_name(msg, certs: Certs) -> None:
    with Smtpd(tls_context=certs.server_context(certs.other)) as srv:
        r = send(srv.port, [("f@c.test", ["a@x.test"], msg())], tls="starttls")
    assert only(r).status == "sent"
    assert r.peer_cert_sha256 == certs.sha256(certs.other).hex()


def test_fingerprint(msg, certs: Certs) -> None:
    with Smtpd(tls_context=certs.server_context(certs.other)) as srv:
        good = send(
            srv.port,
            [("f@c.test", ["a@x.test"], msg())],
            tls="starttls",
            fingerprint=certs.sha256(certs.other),
        )
        bad = send(
            srv.port, [("f@c.test", ["a@x.test"], msg())], tls="starttls", fingerprint=certs.sha256(certs.mx)
        )
    assert only(good).status == "sent"
    o = only(bad)
    assert (o.status, o.stage) == ("temporary", "tls") and "fingerprint" in o.text
    assert len(srv.handler.mails) == 1


def test_client_certificate(msg, certs: Certs, tmp_path: Path) -> None:
    with Smtpd(tls_context=certs.server_context(require_client=True)) as srv:
        ok = send(
            srv.port, [("f@c.test", ["a@x.test"], msg())], tls="starttls", client_cert=certs.client_file
        )
        without = send(srv.port, [("f@c.test", ["a@x.test"], msg())], tls="starttls")
    assert only(ok).status == "sent"
    assert only(without).status == "temporary"
    assert len(srv.handler.mails) == 1
    missing = send(
        free_port(),
        [("f@c.test", ["a@x.test"], msg())],
        tls="starttls",
        client_cert=str(tmp_path / "none.pem"),
    )
    o = only(missing)
    assert (o.status, o.stage) == ("temporary", "tls") and "none.pem" in o.text


def test_bytes_after_starttls_reply_are_not_replies(msg, certs: Certs) -> None:
    # A man in the middle appends replies after "220 ready" in clear text; they must not be
    # read as answers to our commands inside TLS.
    junk = b"250-INJECTED\r\n250 OK\r\n250 2.1.0 fake\r\n"
    script = scripted(ext=("STARTTLS",), tls=certs.server_context(), after_starttls=junk)
    with RawServer(script) as srv:
        r = send(srv.port, [("f@c.test", ["a@x.test"], msg())], tls="starttls")
    assert only(r).status == "sent"
    assert "AFTER-TLS" in r.extensions and "INJECTED" not in r.extensions
    assert [c.split(" ")[0] for c in srv.commands] == [
        "EHLO",
        "STARTTLS",
        "EHLO",
        "MAIL",
        "RCPT",
        "DATA",
        "QUIT",
    ]


# ---- AUTH ----------------------------------------------------------------------------------------


def auth_server(certs: Certs, **kw) -> Smtpd:
    return Smtpd(tls_context=certs.server_context(), **kw)


@pytest.mark.parametrize("mechanism", ["PLAIN", "LOGIN", "CRAM-MD5"])
def test_auth_mechanisms(msg, certs: Certs, mechanism: str) -> None:
    with auth_server(certs) as srv:
        r = send(
            srv.port,
            [("f@c.test", ["a@x.test"], msg())],
            tls="starttls",
            login=LOGIN,
            secret=PASSWORD,
            mechanisms=[mechanism],
        )
    assert only(r).status == "sent"
    assert r.auth_mechanism == mechanism
    assert srv.handler.auth_seen == [mechanism]


def test_auth_prefers_cram_md5(msg, certs: Certs) -> None:
    with auth_server(certs) as srv:
        r = send(srv.port, [("f@c.test", ["a@x.test"], msg())], tls="starttls", login=LOGIN, secret=PASSWORD)
    # The server offers CRAM-MD5, LOGIN, PLAIN and XOAUTH2; XOAUTH2 needs an explicit request.
    assert "XOAUTH2" in r.extensions or srv.handler.auth_seen
    assert r.auth_mechanism == "CRAM-MD5" and srv.handler.auth_seen == ["CRAM-MD5"]
    assert only(r).status == "sent"


def test_xoauth2(msg, certs: Certs) -> None:
    with auth_server(certs) as srv:
        ok = send(
            srv.port,
            [("f@c.test", ["a@x.test"], msg())],
            tls="starttls",
            login=LOGIN,
            secret=TOKEN,
            mechanisms=["XOAUTH2"],
        )
        bad = send(
            srv.port,
            [("f@c.test", ["a@x.test"], msg())],
            tls="starttls",
            login=LOGIN,
            secret="expired",
            mechanisms=["XOAUTH2"],
        )
    assert only(ok).status == "sent" and ok.auth_mechanism == "XOAUTH2"
    o = only(bad)
    assert (o.status, o.stage, o.code) == ("temporary", "auth", 535)
    assert len(srv.handler.mails) == 1


def test_wrong_password_is_temporary(msg, certs: Certs) -> None:
    with auth_server(certs) as srv:
        r = send(
            srv.port,
            [("f@c.test", ["a@x.test", "b@x.test"], msg())],
            tls="starttls",
            login=LOGIN,
            secret="wrong",
        )
    assert statuses(r) == [["temporary", "temporary"]]
    o = r.results[0][0]
    assert (o.stage, o.code, o.enhanced) == ("auth", 535, "5.7.8")
    assert srv.handler.mails == []


def test_password_never_sent_without_tls(msg) -> None:
    with Smtpd(auth_require_tls=False) as srv:
        r = send(srv.port, [("f@c.test", ["a@x.test"], msg())], login=LOGIN, secret=PASSWORD)
        insecure = send(
            srv.port,
            [("f@c.test", ["a@x.test"], msg())],
            login=LOGIN,
            secret=PASSWORD,
            allow_insecure_auth=True,
        )
    assert "AUTH" in r.extensions
    assert only(r).status == "sent" and r.auth_mechanism is None
    assert insecure.auth_mechanism == "CRAM-MD5" and only(insecure).status == "sent"
    assert srv.handler.auth_seen == ["CRAM-MD5"]  # only from the session that allowed it


def test_auth_plain_without_initial_response(msg) -> None:
    # Some servers answer AUTH PLAIN <payload> with an empty 334 and want the payload again.
    script = scripted(ext=("AUTH PLAIN",), replies={"AUTH": "334 "})
    with RawServer(script) as srv:
        r = send(
            srv.port,
            [("f@c.test", ["a@x.test"], msg())],
            login=LOGIN,
            secret=PASSWORD,
            allow_insecure_auth=True,
        )
    payload = base64.b64encode(f"\0{LOGIN}\0{PASSWORD}".encode()).decode()
    assert srv.commands[1:4] == [f"AUTH PLAIN {payload}", payload, "MAIL FROM:<f@c.test>"]
    assert r.auth_mechanism == "PLAIN" and only(r).status == "sent"


def test_verbose_transcript_hides_secrets(msg, certs: Certs) -> None:
    secrets = [
        PASSWORD,
        TOKEN,
        base64.b64encode(PASSWORD.encode()).decode(),
        base64.b64encode(f"\0{LOGIN}\0{PASSWORD}".encode()).decode(),
        base64.b64encode(f"user={LOGIN}\x01auth=Bearer {TOKEN}\x01\x01".encode()).decode(),
    ]
    tls = {
        "mode": "starttls",
        "verify_cert": False,
        "ca_file": None,
        "fingerprint": None,
        "client_cert": None,
    }
    with auth_server(certs) as srv:
        script = textwrap.dedent(f"""
            from dma import _native
            for mech, secret in [("PLAIN", {PASSWORD!r}), ("LOGIN", {PASSWORD!r}), ("CRAM-MD5", {PASSWORD!r}),
                                 ("XOAUTH2", {TOKEN!r})]:
                r = _native.Connection(host="mx.test", addresses=["127.0.0.1"], port={srv.port},
                                       helo="client.test", tls={tls!r},
                                       connect_timeout=5.0, command_timeout=5.0, allow_insecure_auth=False,
                                       credentials=({LOGIN!r}, secret, [mech]), verbose=True)
                r = r.session([("f@c.test", ["a@x.test"], {msg()!r})])
                assert r.results[0][0].status == "sent", r.results
            """)
        proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0, proc.stderr
    err = proc.stderr
    assert ">>> MAIL FROM:<f@c.test>" in err and "<<< 250" in err and ">>> ." in err
    assert err.count("<authentication data hidden>") >= 5
    assert proc.stdout == ""
    for secret in secrets:
        assert secret not in err


# ---- ESMTP extensions ----------------------------------------------------------------------------


@pytest.mark.parametrize("pipelining", [True, False])
def test_one_of_three_recipients_refused(msg, pipelining: bool) -> None:
    handler = Recorder(pipelining=pipelining, rcpt_replies={"b@x.test": "550 5.1.1 no such user"})
    with Smtpd(handler) as srv:
        r = send(srv.port, [("f@c.test", ["a@x.test", "b@x.test", "c@x.test"], msg())])
    assert ("PIPELINING" in r.extensions) == pipelining
    assert statuses(r) == [["sent", "permanent", "sent"]]
    o = r.results[0][1]
    assert (o.stage, o.code, o.enhanced, o.text) == ("rcpt", 550, "5.1.1", "no such user")
    assert srv.handler.messages[0].rcpt_tos == ["a@x.test", "c@x.test"]


@pytest.mark.parametrize("pipelining", [True, False])
def test_pipelining_groups_the_envelope(msg, pipelining: bool) -> None:
    ext = ("PIPELINING",) if pipelining else ()
    with RawServer(scripted(ext=ext)) as srv:
        r = send(srv.port, [("f@c.test", ["a@x.test", "b@x.test"], msg())])
    assert statuses(r) == [["sent", "sent"]]
    [peer] = srv.peers
    together = [c for c in peer.chunks if b"MAIL FROM" in c]
    assert len(together) == 1
    grouped = b"RCPT TO:<b@x.test>" in together[0] and b"DATA\r\n" in together[0]
    assert grouped == pipelining


@pytest.mark.parametrize("pipelining", [True, False])
def test_no_recipient_accepted_means_no_data(msg, pipelining: bool) -> None:
    ext = ("PIPELINING",) if pipelining else ()
    script = scripted(ext=ext, replies={"RCPT": "550 5.1.1 unknown", "DATA": "554 5.5.1 no valid recipients"})
    with RawServer(script) as srv:
        r = send(srv.port, [("f@c.test", ["a@x.test", "b@x.test"], msg()), ("f@c.test", ["c@x.test"], msg())])
    assert statuses(r) == [["permanent", "permanent"], ["permanent"]]
    assert all(o.stage == "rcpt" for tx in r.results for o in tx)
    verbs = [c.split(" ")[0] for c in srv.commands]
    assert verbs.count("DATA") == (2 if pipelining else 0)
    assert "RSET" in verbs and srv.peers[0].data == []


def test_pipelined_data_accepted_without_recipients_sends_empty_message(msg) -> None:
    script = scripted(ext=("PIPELINING",), replies={"RCPT": "550 5.1.1 unknown"})
    with RawServer(script) as srv:
        r = send(srv.port, [("f@c.test", ["a@x.test"], msg())])
    assert only(r).status == "permanent"
    assert srv.peers[0].data == [b".\r\n"]  # never the message itself


def test_size_limit(msg) -> None:
    with Smtpd(data_size_limit=100) as srv:
        small = send(srv.port, [("f@c.test", ["a@x.test"], msg(b"x\n" * 10))])
        big = send(srv.port, [("f@c.test", ["a@x.test"], msg(b"x" * 200 + b"\n"))])
    assert only(small).status == "sent"
    assert "SIZE=30" in srv.handler.messages[0].mail_options
    o = only(big)
    assert (o.status, o.stage, o.code) == ("permanent", "size", 0)
    assert len(srv.handler.mails) == 1


def test_8bitmime(msg) -> None:
    with Smtpd() as srv:
        r = send(srv.port, [("f@c.test", ["a@x.test"], msg("Subject: café\n\nnaïve\n".encode()))])
    assert only(r).status == "sent"
    assert "BODY=8BITMIME" in srv.handler.messages[0].mail_options
    assert srv.handler.messages[0].content == "Subject: café\r\n\r\nnaïve\r\n".encode()


def test_smtputf8(msg) -> None:
    with Smtpd(enable_SMTPUTF8=True) as srv:
        r = send(srv.port, [("f@c.test", ["jürgen@x.test"], msg())])
    assert only(r).status == "sent"
    assert "SMTPUTF8" in srv.handler.messages[0].mail_options
    assert srv.handler.messages[0].rcpt_tos == ["jürgen@x.test"]
    with Smtpd(enable_SMTPUTF8=False) as srv:
        r = send(srv.port, [("f@c.test", ["jürgen@x.test"], msg()), ("f@c.test", ["plain@x.test"], msg())])
    assert "SMTPUTF8" not in r.extensions
    assert statuses(r) == [["permanent"], ["sent"]]
    assert r.results[0][0].stage == "mail" and srv.handler.mails == ["f@c.test"]


def test_control_characters_in_addresses_never_reach_the_wire(msg) -> None:
    with Smtpd() as srv:
        r = send(srv.port, [("f@c.test", ["a@x.test\r\nRCPT TO:<evil@x.test>", "b@x.test"], msg())])
    assert statuses(r) == [["permanent", "sent"]]
    assert srv.handler.messages[0].rcpt_tos == ["b@x.test"]


# ---- SMTP error replies ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("reply", "status"), [("451 4.3.0 try later", "temporary"), ("550 5.7.1 go away", "permanent")]
)
def test_mail_refused(msg, reply: str, status: str) -> None:
    with Smtpd(Recorder(mail_reply=reply)) as srv:
        r = send(srv.port, [("f@c.test", ["a@x.test", "b@x.test"], msg())])
    assert statuses(r) == [[status, status]]
    o = r.results[0][0]
    assert (o.stage, o.code) == ("mail", int(reply[:3]))
    assert srv.handler.messages == []


def test_refused_transaction_is_reset_before_the_next(msg) -> None:
    script = scripted(replies={"MAIL bad@c.test": "553 5.1.8 bad sender"})
    with RawServer(script) as srv:
        r = send(srv.port, [("bad@c.test", ["a@x.test"], msg()), ("good@c.test", ["a@x.test"], msg())])
    assert statuses(r) == [["permanent"], ["sent"]]
    verbs = [c.split(" ")[0] for c in srv.commands]
    assert verbs == ["EHLO", "MAIL", "RSET", "MAIL", "RCPT", "DATA", "QUIT"]


def test_rcpt_temporary_failure(msg) -> None:
    with Smtpd(Recorder(rcpt_replies={"b@x.test": "452 4.2.2 mailbox full"})) as srv:
        r = send(srv.port, [("f@c.test", ["a@x.test", "b@x.test"], msg())])
    assert statuses(r) == [["sent", "temporary"]]
    assert r.results[0][1].code == 452


@pytest.mark.parametrize("pipelining", [True, False])
@pytest.mark.parametrize(
    ("reply", "status"), [("451 4.3.0 later", "temporary"), ("554 5.3.0 no", "permanent")]
)
def test_data_command_refused(msg, pipelining: bool, reply: str, status: str) -> None:
    ext = ("PIPELINING",) if pipelining else ()
    with RawServer(scripted(ext=ext, replies={"DATA": reply, "RCPT b@x.test": "550 5.1.1 unknown"})) as srv:
        r = send(srv.port, [("f@c.test", ["a@x.test", "b@x.test"], msg())])
    assert statuses(r) == [[status, "permanent"]]
    assert (r.results[0][0].stage, r.results[0][0].code) == ("data", int(reply[:3]))
    assert r.results[0][1].stage == "rcpt"


@pytest.mark.parametrize(
    ("reply", "status"), [("452 4.3.1 disk full", "temporary"), ("554 5.6.0 bad content", "permanent")]
)
def test_final_dot_refused(msg, reply: str, status: str) -> None:
    with Smtpd(Recorder(dot_reply=reply)) as srv:
        r = send(srv.port, [("f@c.test", ["a@x.test"], msg()), ("f@c.test", ["b@x.test"], msg())])
    assert statuses(r) == [[status], [status]]
    assert all((tx[0].stage, tx[0].code) == ("dot", int(reply[:3])) for tx in r.results)


@pytest.mark.parametrize(
    ("greeting", "status"), [("554 5.7.1 no service", "permanent"), ("421 4.3.2 busy", "temporary")]
)
def test_greeting_refused(msg, greeting: str, status: str) -> None:
    with RawServer(scripted(greeting=greeting)) as srv:
        r = send(srv.port, [("f@c.test", ["a@x.test"], msg())])
    o = only(r)
    assert (o.status, o.stage, o.code) == (status, "greeting", int(greeting[:3]))
    assert not any(c.startswith("MAIL") for c in srv.commands)


def test_helo_fallback(msg) -> None:
    with RawServer(scripted(replies={"EHLO": "502 5.5.1 no EHLO here"})) as srv:
        r = send(srv.port, [("f@c.test", ["a@x.test"], msg())])
    assert only(r).status == "sent" and r.extensions == []
    assert [c.split(" ")[0] for c in srv.commands][:3] == ["EHLO", "HELO", "MAIL"]


def test_ehlo_temporary_failure_is_not_helo(msg) -> None:
    with RawServer(scripted(replies={"EHLO": "451 4.3.0 later"})) as srv:
        r = send(srv.port, [("f@c.test", ["a@x.test"], msg())])
    o = only(r)
    assert (o.status, o.stage, o.code) == ("temporary", "ehlo", 451)
    assert "HELO" not in [c.split(" ")[0] for c in srv.commands]


# ---- hostile and broken servers ------------------------------------------------------------------


def test_connection_dropped_during_data(msg) -> None:
    def drop(peer: Peer) -> None:
        peer.send("220 raw.test")
        while line := peer.readline():
            if line.startswith(b"DATA"):
                peer.send("354 go")
                peer.readline()
                return  # hang up mid-message
            peer.send("250 ok")

    with RawServer(drop) as srv:
        r = send(
            srv.port, [("f@c.test", ["a@x.test"], msg(b"line\n" * 50000)), ("f@c.test", ["b@x.test"], msg())]
        )
    assert statuses(r) == [["temporary"], ["temporary"]]
    assert r.results[0][0].stage in ("data", "dot")


def test_silent_server_times_out(msg) -> None:
    with RawServer(lambda peer: time.sleep(5)) as srv:
        start = time.monotonic()
        r = send(srv.port, [("f@c.test", ["a@x.test"], msg())], command_timeout=0.5)
    assert time.monotonic() - start < 3
    o = only(r)
    assert (o.status, o.stage, o.code) == ("temporary", "greeting", 0) and "timeout" in o.text


def test_endless_greeting(msg) -> None:
    def endless(peer: Peer) -> None:
        while True:
            peer.send(b"220-still greeting you\r\n" * 100)

    with RawServer(endless) as srv:
        r = send(srv.port, [("f@c.test", ["a@x.test"], msg())])
    o = only(r)
    assert (o.status, o.stage) == ("temporary", "greeting") and "too long" in o.text


def test_greeting_line_without_end(msg) -> None:
    with RawServer(lambda peer: peer.send(b"220 " + b"x" * 100_000)) as srv:
        r = send(srv.port, [("f@c.test", ["a@x.test"], msg())])
    o = only(r)
    assert (o.status, o.stage) == ("temporary", "greeting") and "longer than" in o.text


@pytest.mark.parametrize(
    "garbage", [b"hello there\r\n", b"2x0 what\r\n", b"999 nine\r\n", b"220-a\r\n250 b\r\n", b"\xff\xfe\r\n"]
)
def test_garbage_replies(msg, garbage: bytes) -> None:
    with RawServer(lambda peer: (peer.send(garbage), peer.readline())) as srv:
        r = send(srv.port, [("f@c.test", ["a@x.test"], msg())])
    o = only(r)
    assert (o.status, o.stage, o.code) == ("temporary", "greeting", 0) and "malformed" in o.text


def test_garbage_after_ehlo(msg) -> None:
    with RawServer(scripted(replies={"EHLO": "250-fine\r\nxyz oops"})) as srv:
        r = send(srv.port, [("f@c.test", ["a@x.test"], msg())])
    o = only(r)
    assert (o.status, o.stage) == ("temporary", "ehlo")


# ---- DATA bytes ---------------------------------------------------------------------------------


def test_dot_stuffing_and_long_lines_byte_for_byte(msg) -> None:
    long = b"L" * 2100
    body = b".starts\n..two\nmid . dot\n.\n" + long + b"\nCRLF line\r\nlast line without LF"
    expected = (
        b"..starts\r\n...two\r\nmid . dot\r\n..\r\n"
        + long[:998]
        + b"\r\n "
        + long[998:1995]
        + b"\r\n "
        + long[1995:]
        + b"\r\n"
        + b"CRLF line\r\nlast line without LF\r\n.\r\n"
    )
    with RawServer(scripted(ext=("PIPELINING",))) as srv:
        r = send(srv.port, [("f@c.test", ["a@x.test"], msg(body))])
    assert only(r).status == "sent"
    assert srv.peers[0].data == [expected]


def test_large_message_is_streamed(msg) -> None:
    body = b"".join(b"%08d .line of text\n" % i for i in range(200_000))  # ~5 MB
    with RawServer(scripted(ext=("PIPELINING", "SIZE"))) as srv:
        r = send(srv.port, [("f@c.test", ["a@x.test"], msg(body))])
    assert only(r).status == "sent"
    [data] = srv.peers[0].data
    assert data == body.replace(b"\n", b"\r\n") + b".\r\n"
    mail = next(c for c in srv.commands if c.startswith("MAIL"))
    wire_size = len(body) + body.count(b"\n")
    assert mail.endswith(f" SIZE={wire_size}")


# ---- API ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kw",
    [
        {"tls": "ssl"},
        {"fingerprint": b"12345"},
        {"login": "l", "secret": "s", "mechanisms": ["GSSAPI"]},
        {"command_timeout": 0.0},
        {"login": "only"},
    ],
)
def test_bad_arguments(msg, kw: dict) -> None:
    with pytest.raises(ValueError):
        send(25, [("f@c.test", ["a@x.test"], msg())], **kw)
    with pytest.raises(ValueError):
        send(25, [], addresses=["mx.test"])


def test_every_setting_is_required_and_an_unknown_one_is_refused() -> None:
    with pytest.raises(ValueError, match='unknown setting "helo_name"'):
        send(25, [], helo_name="client.test")
    with pytest.raises(ValueError, match="addresses"):
        _native.Connection(host="mx.test")  # every other setting is required too
