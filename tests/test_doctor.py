"""`dma doctor`: the real program against its own config files and real servers on loopback."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from dma_fixtures import DmaEnv
from servers import DnsServer, Zone
from smtp_servers import LOGIN, PASSWORD, Certs, RawServer, Smtpd, scripted

SECRET_PARTS = (PASSWORD, "Pa55word")


def doctor(env: DmaEnv, *args: str) -> subprocess.CompletedProcess[bytes]:
    result = env.run(["doctor", *args], prog="dma")
    for part in SECRET_PARTS:
        assert part.encode() not in result.stdout + result.stderr, "the password was printed"
    return result


def lines(result: subprocess.CompletedProcess[bytes], status: str, topic: str) -> list[str]:
    """The text of the `status topic` lines of the report."""
    out = result.stdout.decode()
    prefix = f"{status:<4}  {topic:<9} "
    return [line[len(prefix) :] for line in out.splitlines() if line.startswith(prefix)]


def relay_to(env: DmaEnv, port: int, certs: Certs, *extra: str, password: str = PASSWORD) -> None:
    auth = env.root / "auth.conf"
    auth.write_text(f"{LOGIN}|127.0.0.1:{password}\n")
    auth.chmod(0o600)
    env.smarthost = f"SMARTHOST 127.0.0.1\nPORT {port}"
    env.write_conf(
        "SECURETRANSFER",
        "STARTTLS",
        f"AUTHPATH {auth}",
        f"CAFILE {certs.ca_file}",
        "CONNECT_TIMEOUT 5",
        "TIMEOUT 10",
        *extra,
    )


def auth_conf(env: DmaEnv, password: str, *conf: str, mode: int = 0o600) -> Path:
    """An auth.conf with `password` for relay.test, named in dma.conf (with `conf`)."""
    auth = env.root / "auth.conf"
    auth.write_text(f"{LOGIN}|relay.test:{password}\n")
    auth.chmod(mode)
    env.write_conf(f"AUTHPATH {auth}", *conf)
    return auth


# ---- SMTP -----------------------------------------------------------------------------------------


def test_starttls_auth_all_pass_and_nothing_is_sent(dma_env: DmaEnv, certs: Certs) -> None:
    with Smtpd(tls_context=certs.server_context()) as server:
        relay_to(dma_env, server.port, certs, "VERIFYCERT")
        r = doctor(dma_env)
        handler = server.handler
    out = r.stdout.decode()
    assert r.returncode == 0, out
    assert "FAIL" not in out
    assert lines(r, "PASS", "connect") == [f"127.0.0.1 [127.0.0.1] port {server.port}"]
    [tls] = lines(r, "PASS", "tls")
    assert tls.startswith("TLSv1.") and tls.endswith("(after STARTTLS)")
    [ehlo] = lines(r, "INFO", "ehlo")
    assert "8BITMIME" in ehlo.split(", ") and "AUTH" in ehlo.split(", ")
    leaf = Certs.sha256(certs.mx).hex()
    assert lines(r, "INFO", "cert") == [f"SHA-256 {leaf}"]
    assert f"dma.conf: FINGERPRINT {leaf}" in out
    assert lines(r, "PASS", "cert") == ["chain and host name verified (VERIFYCERT)"]
    assert lines(r, "PASS", "auth")[-1] == f"AUTH CRAM-MD5 as {LOGIN} accepted"
    assert handler.auth_seen == ["CRAM-MD5"]
    # Connected, authenticated, and sent no mail.
    assert handler.mails == [] and handler.messages == []


def test_pinned_fingerprint_matches(dma_env: DmaEnv, certs: Certs) -> None:
    leaf = Certs.sha256(certs.mx).hex()
    with Smtpd(tls_context=certs.server_context()) as server:
        relay_to(dma_env, server.port, certs, f"FINGERPRINT {leaf.upper()}")
        r = doctor(dma_env)
    assert r.returncode == 0, r.stdout.decode()
    assert lines(r, "PASS", "cert") == ["matches FINGERPRINT"]


def test_session_commands_are_ehlo_starttls_auth_quit(dma_env: DmaEnv, certs: Certs) -> None:
    session = scripted(
        ext=("STARTTLS",),
        tls=certs.server_context(),
        tls_ext=("AUTH PLAIN",),
        replies={"AUTH": "235 2.7.0 ok"},
    )
    with RawServer(session) as server:
        relay_to(dma_env, server.port, certs, "INSECURE")
        r = doctor(dma_env)
    assert r.returncode == 0, r.stdout.decode()
    verbs = [c.split(" ")[0] for c in server.commands]
    assert verbs == ["EHLO", "STARTTLS", "EHLO", "AUTH", "QUIT"]
    assert server.commands[3].startswith("AUTH PLAIN ")
    assert lines(r, "PASS", "auth") == [f"AUTH PLAIN as {LOGIN} accepted"]
    # Neither VERIFYCERT nor FINGERPRINT: said so.
    assert lines(r, "WARN", "cert")[0].startswith("not verified")


def test_wrong_password_fails_at_auth(dma_env: DmaEnv, certs: Certs) -> None:
    with Smtpd(tls_context=certs.server_context()) as server:
        relay_to(dma_env, server.port, certs, "VERIFYCERT", password="wrong-Pa55word")
        r = doctor(dma_env)
        handler = server.handler
    assert r.returncode == 1, r.stdout.decode()
    [failure] = lines(r, "FAIL", "auth")
    assert failure.startswith("127.0.0.1 [127.0.0.1] said at auth: 535 ")
    assert "AUTH CRAM-MD5 failed" in failure
    assert not lines(r, "PASS", "auth")
    assert handler.mails == []
    assert b"wrong-" not in r.stdout + r.stderr


def test_wrong_fingerprint_fails_and_shows_the_real_one(dma_env: DmaEnv, certs: Certs) -> None:
    leaf = Certs.sha256(certs.mx).hex()
    with Smtpd(tls_context=certs.server_context()) as server:
        relay_to(dma_env, server.port, certs, f"FINGERPRINT {'ab' * 32}")
        r = doctor(dma_env)
        handler = server.handler
    out = r.stdout.decode()
    assert r.returncode == 1, out
    [failure] = lines(r, "FAIL", "tls")
    assert "fingerprint mismatch" in failure
    # A second handshake without checks (and without credentials) shows the presented certificate.
    assert lines(r, "INFO", "cert") == [f"SHA-256 {leaf}"]
    assert lines(r, "FAIL", "cert") == [f"does not match FINGERPRINT {'ab' * 32}"]
    assert not lines(r, "PASS", "auth")
    assert handler.auth_seen == [] and handler.mails == []


def test_a_refused_chain_still_shows_the_presented_certificate(dma_env: DmaEnv, certs: Certs) -> None:
    other = Certs.sha256(certs.other).hex()
    with Smtpd(tls_context=certs.server_context(certs.other)) as server:
        relay_to(dma_env, server.port, certs, "VERIFYCERT")
        r = doctor(dma_env)
        handler = server.handler
    assert r.returncode == 1
    [failure] = lines(r, "FAIL", "tls")
    assert "127.0.0.1" in failure
    assert lines(r, "INFO", "cert") == [f"SHA-256 {other}"]
    assert not lines(r, "PASS", "cert") and not lines(r, "PASS", "tls")
    assert handler.auth_seen == [] and handler.mails == []


def test_connection_refused_is_a_fail_line(dma_env: DmaEnv) -> None:
    r = doctor(dma_env)  # dma_env's smarthost refuses connections
    assert r.returncode == 1
    [failure] = lines(r, "FAIL", "connect")
    assert "Connection refused" in failure


def test_verbose_shows_the_dialogue_without_the_password(dma_env: DmaEnv, certs: Certs) -> None:
    with Smtpd(tls_context=certs.server_context()) as server:
        relay_to(dma_env, server.port, certs, "VERIFYCERT")
        r = doctor(dma_env, "-v")  # doctor() checks stdout and stderr for the password
    err = r.stderr.decode()
    assert r.returncode == 0, err
    assert ">>> STARTTLS" in err and ">>> AUTH CRAM-MD5" in err and ">>> QUIT" in err
    assert "MAIL FROM" not in err


# ---- configuration files -------------------------------------------------------------------------


def test_broken_config_exits_78(dma_env: DmaEnv) -> None:
    dma_env.write_conf("PORT smtp")
    r = doctor(dma_env)
    assert r.returncode == 78
    [failure] = lines(r, "FAIL", "config")
    assert failure == f"{dma_env.conf}: can not be used"
    assert "PORT: `smtp' is not a port number" in r.stdout.decode()


def test_config_paths_mode_and_directories(dma_env: DmaEnv, tmp_path: Path) -> None:
    other = tmp_path / "other.conf"
    dma_env.write_conf(path=other, spool=tmp_path / "missing-spool")
    r = doctor(dma_env, "-n", "-C", str(other))
    assert lines(r, "PASS", "config") == [f"{other} loaded (system mode: running as root)"]
    assert lines(r, "FAIL", "spool") == [f"{tmp_path / 'missing-spool'} does not exist"]
    assert lines(r, "PASS", "mailbox") == [f"{dma_env.mboxdir} exists and is writable"]
    assert r.returncode == 1


def test_unsupported_alias_destination_fails(dma_env: DmaEnv) -> None:
    dma_env.aliases.write_text("postmaster: root\nbin: |/usr/bin/logger\n")
    r = doctor(dma_env, "-n")
    assert lines(r, "FAIL", "aliases") == [
        f"{dma_env.aliases}:2: bin: `|/usr/bin/logger': command destinations are not supported"
    ]
    assert r.returncode == 78


def test_aliases_syntax_error_fails(dma_env: DmaEnv) -> None:
    dma_env.aliases.write_text("postmaster root\n")
    r = doctor(dma_env, "-n")
    [failure] = lines(r, "FAIL", "aliases")
    assert failure.startswith(f"{dma_env.aliases}:1: postmaster: syntax error")
    assert r.returncode == 78


def test_world_readable_auth_conf_warns(dma_env: DmaEnv) -> None:
    auth = auth_conf(dma_env, PASSWORD, "VERIFYCERT", mode=0o644)
    r = doctor(dma_env, "-n")
    assert lines(r, "PASS", "auth.conf") == [f"{auth} readable: credentials for 1 host(s)"]
    assert lines(r, "WARN", "auth.conf") == [f"{auth} has mode 0644: readable by group or others"]
    assert f"fix: chmod 600 {auth}" in r.stdout.decode()
    assert r.returncode == 0  # a warning is not a failure
    auth.chmod(0o600)
    assert lines(doctor(dma_env, "-n"), "WARN", "auth.conf") == []


@pytest.mark.parametrize(
    "extra,status,code",
    [
        ((), "FAIL", 1),
        (("VERIFYCERT",), None, 0),
        (("FINGERPRINT " + "ab" * 32,), None, 0),
        (("INSECURE",), "WARN", 0),
    ],
)
def test_auth_without_a_checked_certificate_fails_unless_insecure(
    dma_env: DmaEnv, extra: tuple[str, ...], status: str | None, code: int
) -> None:
    auth_conf(dma_env, PASSWORD, *extra)
    r = doctor(dma_env, "-n")
    found = [s for s in ("FAIL", "WARN") for text in lines(r, s, "auth.conf") if "man in the middle" in text]
    assert found == ([status] if status else []), r.stdout.decode()
    assert r.returncode == code


def test_auth_conf_owned_by_another_user_warns(dma_env: DmaEnv) -> None:
    import os

    auth = auth_conf(dma_env, PASSWORD)
    os.chown(auth, 65534, 65534)
    r = doctor(dma_env, "-n")
    assert lines(r, "WARN", "auth.conf") == [f"{auth} is owned by uid 65534, not by the queue runner's uid 0"]


def test_broken_oauth2_credential_exits_78(dma_env: DmaEnv) -> None:
    """An OAuth2 credential file is configuration too: a broken one is exit 78, as dma.conf is."""
    cred = dma_env.root / "oauth"
    cred.write_text("provider google\nclient_id x\nrefresh_token {credential}rt\nbogus 1\n")
    cred.chmod(0o600)
    auth_conf(dma_env, f"{{oauth2}}{cred}", "VERIFYCERT")
    r = doctor(dma_env, "-n")
    assert lines(r, "FAIL", "oauth2") == [f"{LOGIN}|relay.test: {cred}:4: bogus: unknown key"]
    assert r.returncode == 78


def test_missing_auth_conf_fails(dma_env: DmaEnv) -> None:
    dma_env.write_conf(f"AUTHPATH {dma_env.root / 'nope.conf'}")
    r = doctor(dma_env, "-n")
    [failure] = lines(r, "FAIL", "auth.conf")
    assert "can not open auth file" in failure
    assert r.returncode == 1


# ---- routes ---------------------------------------------------------------------------------------


def test_route_of_a_local_alias_and_a_remote_address(dma_env: DmaEnv) -> None:
    dma_env.aliases.write_text("postmaster: root, boss@remote.test\n")
    r = doctor(dma_env, "-n", "postmaster@mail.example", "someone@remote.test")
    assert r.returncode == 0, r.stdout.decode()
    assert lines(r, "INFO", "route") == ["postmaster@mail.example: alias, expands to root, boss@remote.test"]
    port = dma_env.smarthost.rpartition(" ")[2]
    assert lines(r, "PASS", "route") == [
        f"  root -> local mbox {dma_env.mboxdir}/root",
        f"  boss@remote.test -> smarthost 127.0.0.1 port {port}",
        f"someone@remote.test -> smarthost 127.0.0.1 port {port}",
    ]
    assert lines(r, "INFO", "smtp") == ["not connecting (-n)"]


def test_without_an_address_the_route_of_remote_mail_and_a_probe_of_every_smarthost(dma_env: DmaEnv) -> None:
    with Smtpd() as first, Smtpd() as second:
        dma_env.smarthost = f"SMARTHOST 127.0.0.1:{first.port} 127.0.0.1:{second.port}"
        dma_env.write_conf()
        r = doctor(dma_env)
        probed = [first.handler.ehlo_count, second.handler.ehlo_count]
    out = r.stdout.decode()
    assert r.returncode == 0, out
    # As for an address: the first smarthost, its addresses on the next line.
    assert lines(r, "PASS", "route") == [f"remote mail -> smarthost 127.0.0.1 port {first.port}"]
    assert f"route     remote mail -> smarthost 127.0.0.1 port {first.port}\n{'':15} 127.0.0.1\n" in out
    assert lines(r, "PASS", "connect") == [
        f"127.0.0.1 [127.0.0.1] port {first.port}",
        f"127.0.0.1 [127.0.0.1] port {second.port}",
    ]
    assert all(probed), probed


def test_unknown_local_recipient_fails(dma_env: DmaEnv) -> None:
    r = doctor(dma_env, "-n", "no-such-user-here")
    assert r.returncode == 1
    assert lines(r, "FAIL", "route") == ["no-such-user-here: invalid recipient `no-such-user-here'"]


def test_route_through_mx_hosts(dma_env: DmaEnv) -> None:
    zone = Zone(
        {
            "remote.test": [("MX", 20, "mx2.remote.test"), ("MX", 10, "mx1.remote.test")],
            "mx1.remote.test": [("A", "127.0.0.1")],
            "mx2.remote.test": [("A", "127.0.0.2"), ("AAAA", "::1")],
        }
    )
    with DnsServer(zone) as dns:
        dma_env.smarthost = ""
        dma_env.write_conf(dns.conf)
        r = doctor(dma_env, "-n", "you@remote.test", "x@nxdomain.test")
    out = r.stdout.decode()
    assert lines(r, "PASS", "route") == ["you@remote.test -> 2 host(s) for remote.test, port 25"]
    assert "MX 10 mx1.remote.test: 127.0.0.1\n" in out
    assert "MX 20 mx2.remote.test: ::1, 127.0.0.2\n" in out
    assert out.index("MX 10") < out.index("MX 20")
    [failure] = lines(r, "FAIL", "route")
    assert failure.startswith("x@nxdomain.test: DNS lookup failure: domain nxdomain.test does not exist")
    assert r.returncode == 1


def test_usage_error(dma_env: DmaEnv) -> None:
    r = dma_env.run(["doctor", "-x"], prog="dma")
    assert r.returncode == 64
    assert b"usage: dma doctor" in r.stderr
