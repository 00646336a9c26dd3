"""OAuth2 (issue 13): refresh and cache inside dma, XOAUTH2/OAUTHBEARER, presets, login flows,
secrets from commands and systemd credentials, doctor. Everything against real servers on loopback:
an HTTPS token endpoint (oauth_servers.TokenServer) and aiosmtpd accepting only live tokens."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from dma import config
from dma.errors import ConfigError
from dma.mail import oauth
from dma_fixtures import DmaEnv, program
from oauth_servers import CLIENT_ID, CLIENT_SECRET, OAuthRecorder, TokenServer
from smtp_servers import LOGIN, PASSWORD, Certs, Smtpd
from test_import_budget import modules_after

MSG = b"Subject: oauth\n\nhello\n"
RCPT = "rcpt@remote.test"


@dataclass
class World:
    env: DmaEnv
    tokens: TokenServer
    smtp: Smtpd
    handler: OAuthRecorder
    cred: Path
    log: Path
    refresh_token: str

    def send(self, *flags: str) -> subprocess.CompletedProcess[bytes]:
        return self.env.run(["-D", *flags, RCPT], MSG)

    def cache_file(self) -> str:
        return oauth.cache_path(config.Config(str(self.env.conf)), str(self.cred))

    def cache(self) -> dict[str, str]:
        return oauth.read_cache(self.cache_file())

    def secrets(self) -> list[str]:
        return [self.refresh_token, CLIENT_SECRET, *self.tokens.grants, *self.tokens.access]

    def assert_no_secret(self, *texts: bytes | str) -> None:
        for text in texts:
            text = text.decode(errors="replace") if isinstance(text, bytes) else text
            for secret in self.secrets():
                assert secret not in text, f"a secret leaked: {text!r}"


@pytest.fixture
def world(dma_env: DmaEnv, certs: Certs) -> Iterator[World]:
    with TokenServer(certs.server_context()) as tokens:
        handler = OAuthRecorder(valid=tokens.valid)
        excluded = ["PLAIN", "LOGIN", "CRAM-MD5"]
        with Smtpd(handler, tls_context=certs.server_context(), auth_exclude_mechanism=excluded) as smtp:
            rt = tokens.new_grant()
            cred = dma_env.root / "oauth-test"
            cred.write_text(
                f"provider generic\nclient_id {CLIENT_ID}\nclient_secret {CLIENT_SECRET}\n"
                f"token_endpoint {tokens.url}/token\ndevice_endpoint {tokens.url}/device\n"
                f"scope smtp offline_access\nrefresh_token {rt}\n"
            )
            cred.chmod(0o600)
            auth = dma_env.root / "auth.conf"
            auth.write_text(f"{LOGIN}|127.0.0.1:{{oauth2}}{cred}\n")
            auth.chmod(0o600)
            log = dma_env.root / "dma.log"
            dma_env.smarthost = f"SMARTHOST 127.0.0.1\nPORT {smtp.port}"
            dma_env.write_conf(
                "SECURETRANSFER",
                "STARTTLS",
                "VERIFYCERT",
                f"AUTHPATH {auth}",
                f"CAFILE {certs.ca_file}",
                f"LOGFILE {log}",
                "CONNECT_TIMEOUT 5",
                "TIMEOUT 2",
            )
            yield World(dma_env, tokens, smtp, handler, cred, log, rt)


def refreshes(world: World) -> int:
    return world.tokens.requests.count("refresh_token")


# ---- presets and the credential file ------------------------------------------------------------


def test_presets_expand_as_documented(tmp_path: Path) -> None:
    path = tmp_path / "cred"
    path.write_text("provider microsoft\ntenant contoso.onmicrosoft.com\nclient_id abc\n")
    ms = oauth.read_credential(str(path))
    base = "https://login.microsoftonline.com/contoso.onmicrosoft.com/oauth2/v2.0/"
    assert ms["token_endpoint"] == base + "token" and ms["device_endpoint"] == base + "devicecode"
    assert ms["scope"] == "https://outlook.office.com/SMTP.Send offline_access"
    assert ms["smtp"] == "smtp.office365.com 587"
    path.write_text("provider google\nclient_id abc\nclient_secret {credential}google\n")
    g = oauth.read_credential(str(path))
    assert g["token_endpoint"] == "https://oauth2.googleapis.com/token"
    assert g["auth_endpoint"] == "https://accounts.google.com/o/oauth2/v2/auth" and "device_endpoint" not in g
    assert (g["scope"], g["smtp"]) == ("https://mail.google.com/", "smtp.gmail.com 587")
    for text, key in [
        ("client_id abc\n", "token_endpoint"),  # generic: every field explicit
        ("client_id abc\ntoken_endpoint http://127.0.0.1/token\n", "token_endpoint"),
        ("provider yahoo\nclient_id abc\n", "provider"),
        ("client_id abc\nrefresh-token x\n", "refresh-token"),
    ]:
        path.write_text(text)
        with pytest.raises(ConfigError, match=key):
            oauth.read_credential(str(path))


# ---- delivery ---------------------------------------------------------------------------------


def test_refresh_once_then_cached_token_and_rotation(world: World) -> None:
    r = world.send()
    assert r.returncode == 0, r.stderr
    assert refreshes(world) == 1 and len(world.handler.messages) == 1
    assert world.handler.auth_seen == ["OAUTHBEARER"]
    cache = oauth.cache_path(config.Config(str(world.env.conf)), str(world.cred))
    assert os.stat(cache).st_mode & 0o777 == 0o600
    rotated = world.cache()["refresh"]
    assert rotated != world.refresh_token and world.tokens.grants[rotated]
    r = world.send()
    assert r.returncode == 0, r.stderr
    assert refreshes(world) == 1, "a valid cached token must be used as it is"
    assert len(world.handler.messages) == 2
    world.assert_no_secret(r.stderr, world.log.read_text())
    # A runner with a good cached token starts as light as one without OAuth2.
    code, modules, err = modules_after(world.env, ["sendmail", "-D", RCPT], MSG)
    assert code == 0, err
    heavy = {"ssl", "json", "urllib.request", "http.client", "shlex"} & set(modules)
    assert "dma.mail.oauth" in modules and not heavy, heavy


def test_token_renewed_shortly_before_expiry(world: World) -> None:
    world.tokens.expires_in = oauth.MARGIN - 60  # still valid, but inside the renewal margin
    for n in (1, 2):
        assert world.send().returncode == 0
        assert refreshes(world) == n
    assert len(world.handler.messages) == 2


def test_rejected_token_is_renewed_once_and_retried(world: World) -> None:
    assert world.send().returncode == 0
    world.tokens.access.clear()  # the provider forgets every access token (revoked, clock skew)
    r = world.send("-v")
    assert r.returncode == 0, r.stderr
    assert refreshes(world) == 2 and len(world.handler.messages) == 2
    assert world.handler.auth_seen == ["OAUTHBEARER"] * 3
    assert world.handler.cancels == [b"\x01"], "RFC 7628: ^A after the error challenge"
    world.assert_no_secret(r.stderr, world.log.read_text())


def test_xoauth2_when_the_server_offers_only_that(world: World, certs: Certs) -> None:
    handler = OAuthRecorder(valid=world.tokens.valid)
    excluded = ["PLAIN", "LOGIN", "CRAM-MD5", "OAUTHBEARER"]
    with Smtpd(handler, tls_context=certs.server_context(), auth_exclude_mechanism=excluded) as smtp:
        world.env.smarthost = f"SMARTHOST 127.0.0.1\nPORT {smtp.port}"
        text = world.env.conf.read_text().replace(f"PORT {world.smtp.port}", f"PORT {smtp.port}")
        world.env.conf.write_text(text)
        assert world.send().returncode == 0
        world.tokens.access.clear()
        assert world.send().returncode == 0
    assert handler.auth_seen == ["XOAUTH2"] * 3 and handler.cancels == [b""]
    assert len(handler.messages) == 2


FAILURES = {
    "invalid_grant": "HTTP 400 invalid_grant (the refresh token was revoked or has expired: run `dma oauth",
    "unauthorized_client": "HTTP 400 unauthorized_client (this client id may not use this grant",
    "401": "HTTP 401 invalid_client (the provider does not know this client id",
    "500": "answered HTTP 500 without JSON",
    "html": "answered HTTP 502 without JSON",
    "json": "answered HTTP 200 without JSON",
    "slow": "timed out",
    "token": "the token endpoint's answer holds no well-formed access_token",
}


@pytest.mark.parametrize("fail", sorted(FAILURES))
def test_token_endpoint_failures_defer_the_mail(world: World, fail: str) -> None:
    world.tokens.fail = fail
    r = world.send("-v")
    assert r.returncode == 75, r.stderr  # deferred: EX_TEMPFAIL
    assert [e.recipient for e in world.env.entries()] == [RCPT]
    log = world.log.read_text()
    assert FAILURES[fail] in log and world.handler.auth_seen == []
    world.assert_no_secret(r.stderr, log)
    world.tokens.fail = None
    world.env.run(["-q", "-D"], prog="dma")
    assert world.env.entries() == [] and len(world.handler.messages) == 1


def test_token_endpoint_certificate_and_host_name_are_verified(world: World, certs: Certs) -> None:
    conf = world.env.conf.read_text()
    world.env.conf.write_text(conf.replace(f"CAFILE {certs.ca_file}\n", ""))
    assert world.send().returncode == 75
    assert "certificate verify failed: unable to get local issuer certificate" in world.log.read_text()
    world.env.conf.write_text(conf)
    world.cred.write_text(world.cred.read_text().replace("https://127.0.0.1:", "https://localhost:"))
    assert world.send().returncode == 75
    assert "Hostname mismatch, certificate is not valid for 'localhost'" in world.log.read_text()
    assert refreshes(world) == 0 and world.handler.auth_seen == []


def test_revoked_grant_defers_until_max_queue_time_then_bounces(world: World) -> None:
    world.tokens.revoke()
    r = world.send()
    assert r.returncode == 75
    assert "run `dma oauth login` again" in world.log.read_text()
    assert [e.recipient for e in world.env.entries()] == [RCPT]
    world.env.conf.write_text(world.env.conf.read_text() + "MAX_QUEUE_TIME 1s\n")
    time.sleep(1.5)
    world.env.run(["-q", "-D"], prog="dma")
    assert RCPT not in [e.recipient for e in world.env.entries()]
    assert b"dma oauth login" in world.env.mbox()  # the bounce to root says why


# ---- crash safety of a rotation ------------------------------------------------------------------

REFRESH = "from dma import config; from dma.mail import oauth; oauth.access_token(config.Config(), {cred!r})"
# Each step of a rotation, as the system call the process is killed at (strace injection), or
# "issued": killed by the token endpoint once it has issued the new token, before it answers.
STEPS = [
    ("connect", "connect"),
    ("issued", None),
    ("temp file written", "fsync:when=1"),
    ("rename", "rename,renameat,renameat2"),
    ("directory sync", "fsync:when=2"),
]


@pytest.mark.parametrize("strict", [False, True], ids=["keeps-old-until-used", "kills-old-at-issue"])
def test_sigkill_at_every_step_of_a_rotation(world: World, strict: bool) -> None:
    """Microsoft's way (the old refresh token lives until the new one is used): no step loses
    the token. A provider that kills the old one at issue: the one window from the issue to the
    rename (3 of the 5 kill points: `issued`, `temp file written`, entering `rename`) does."""
    world.tokens.strict = strict
    world.tokens.expires_in = 60  # every run refreshes
    script = REFRESH.format(cred=str(world.cred))
    lost = []
    for name, syscall in STEPS:
        if syscall is None:
            argv = [sys.executable, "-c", script]
        else:
            spec = syscall.split(":")
            inject = ":".join([spec[0], "signal=KILL", *spec[1:]])
            argv = [
                "strace",
                "-f",
                "-qq",
                "-o",
                "/dev/null",
                "-e",
                f"trace={spec[0]}",
                "-e",
                f"inject={inject}",
            ]
            argv += [sys.executable, "-c", script]
        proc = subprocess.Popen(argv, env=world.env.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        world.tokens.on_issue = (lambda p=proc: os.kill(p.pid, signal.SIGKILL)) if syscall is None else None
        proc.communicate(timeout=30)
        world.tokens.on_issue = None
        assert proc.returncode in (-9, 137), (name, proc.returncode)
        # What is on disk now must still get a token.
        cache = world.cache()
        on_disk = cache["refresh"] if cache.get("origin") == world.refresh_token else world.refresh_token
        if not world.tokens.grants.get(on_disk):
            lost.append(name)
            # Start over from a new login, as the admin would.
            world.refresh_token = world.tokens.new_grant()
            text = world.cred.read_text().splitlines()[:-1]
            world.cred.write_text("\n".join([*text, f"refresh_token {world.refresh_token}"]) + "\n")
        done = subprocess.run([sys.executable, "-c", script], env=world.env.env, capture_output=True)
        assert done.returncode == 0, (name, done.stderr)
    assert lost == (["issued", "temp file written", "rename"] if strict else [])


# ---- no secret anywhere, no core file ---------------------------------------------------------------


def test_no_secret_in_logs_transcript_errors_or_process_list_and_no_core(world: World) -> None:
    seen: dict[str, str] = {}

    def snoop() -> None:
        # While the runner waits for the token endpoint: every process's argv, and its limits.
        for pid in filter(str.isdigit, os.listdir("/proc")):
            try:
                seen[pid] = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
            except OSError:
                pass
        seen["limits"] = Path(f"/proc/{proc.pid}/limits").read_text()

    proc = subprocess.Popen(
        [program("sendmail"), "-D", "-v", RCPT],
        env=world.env.env,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    world.tokens.on_issue = snoop
    _, err = proc.communicate(MSG, timeout=30)
    assert proc.returncode == 0, err
    assert ">>> AUTH OAUTHBEARER <authentication data hidden>" in err.decode()
    limits = [line.split() for line in seen["limits"].splitlines() if line.startswith("Max core file size")]
    assert limits == [["Max", "core", "file", "size", "0", "0", "bytes"]]
    world.tokens.access.clear()
    world.tokens.revoke()
    r = world.send("-v")
    assert r.returncode == 75
    world.assert_no_secret(err, r.stderr, world.log.read_text(), *seen.values())


# ---- doctor and status --------------------------------------------------------------------------


def test_doctor_refreshes_then_authenticates_and_explains(world: World) -> None:
    r = world.env.run(["doctor"], prog="dma")
    out = r.stdout.decode()
    assert r.returncode == 0, out
    assert f"PASS  oauth2    {LOGIN}|127.0.0.1: new access token valid for 60 min\n" in out
    assert f"AUTH OAUTHBEARER as {LOGIN} accepted" in out and world.handler.messages == []
    world.cred.chmod(0o644)
    r = world.env.run(["doctor"], prog="dma")
    assert f"WARN  oauth2    {world.cred} has mode 0644: readable by group or others" in r.stdout.decode()
    world.handler.valid = lambda token: False  # SMTP AUTH disabled for the mailbox
    out = world.env.run(["doctor"], prog="dma").stdout.decode()
    assert "SMTP AUTH is disabled for this mailbox (Microsoft 365 default" in out
    world.tokens.revoke()
    r = world.env.run(["doctor"], prog="dma")
    out = r.stdout.decode()
    assert r.returncode == 1
    assert "FAIL  oauth2" in out and "revoked or has expired: run `dma oauth login` again" in out
    world.assert_no_secret(out, r.stderr)


def test_status_shows_configuration_and_tests_a_refresh(world: World) -> None:
    r = world.env.run(["oauth", "status"], prog="dma")
    out = r.stdout.decode()
    assert r.returncode == 0, r.stderr
    assert f"{LOGIN}|127.0.0.1: {world.cred}: generic, client id {CLIENT_ID}" in out
    assert "no access token cached" in out and "refresh: OK, new access token valid for 60 min" in out
    out = world.env.run(["oauth", "status"], prog="dma").stdout.decode()
    assert "access token cached, expires" in out and "refresh token rotated" in out
    world.tokens.fail = "unauthorized_client"
    r = world.env.run(["oauth", "status"], prog="dma")
    assert r.returncode == 1 and "refresh: FAILED: " in r.stdout.decode()
    world.assert_no_secret(r.stdout, r.stderr)


# ---- login flows ------------------------------------------------------------------------------


def test_device_flow_login_writes_the_credential(world: World) -> None:
    world.cred.write_text("\n".join(world.cred.read_text().splitlines()[:-1]) + "\n")  # no token yet
    world.tokens.fail = "unauthorized_client"
    r = world.env.run(["oauth", "login", "generic", str(world.cred)], prog="dma")
    assert r.returncode == 69 and b"check the app registration" in r.stderr
    assert "refresh_token" not in world.cred.read_text()
    world.tokens.fail = None
    r = world.env.run(["oauth", "login", "generic", str(world.cred)], prog="dma")
    assert r.returncode == 0, r.stderr
    assert "open https://127.0.0.1/devicelogin and enter the code WDJB-MJHT" in r.stdout.decode()
    assert world.tokens.device_polls == 3  # pending twice, then granted
    fields = oauth.read_credential(str(world.cred))
    assert world.tokens.grants[fields["refresh_token"]]
    assert os.stat(world.cred).st_mode & 0o777 == 0o600
    world.assert_no_secret(r.stdout, r.stderr)
    assert world.send().returncode == 0


def test_code_flow_with_pkce(world: World) -> None:
    world.cred.write_text(
        f"client_id {CLIENT_ID}\ntoken_endpoint {world.tokens.url}/token\n"
        f"auth_endpoint {world.tokens.url}/authorize\nscope smtp\n"
    )
    for answer in ("redirect", "code", "wrong-state"):
        proc = subprocess.Popen(
            [program("dma"), "oauth", "login", "generic", str(world.cred)],
            env=world.env.env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert proc.stdout is not None and proc.stdin is not None
        assert proc.stdout.readline() == "Open in a browser:\n"
        url = urllib.parse.urlsplit(proc.stdout.readline().strip())
        query = dict(urllib.parse.parse_qsl(url.query))
        assert url.path == "/authorize" and query["code_challenge_method"] == "S256"
        # The provider's page: the admin consents and is sent to the redirect address.
        world.tokens.codes["code-" + answer] = query["code_challenge"]
        state = "forged" if answer == "wrong-state" else query["state"]
        pasted = f"{query['redirect_uri']}/?code=code-{answer}&state={state}"
        _, err = proc.communicate(("code-code" if answer == "code" else pasted) + "\n", timeout=30)
        if answer == "wrong-state":
            assert proc.returncode == 64 and "state differs" in err
            continue
        assert proc.returncode == 0, err
        assert world.tokens.grants[oauth.read_credential(str(world.cred))["refresh_token"]]


# ---- secrets from commands and systemd credentials ----------------------------------------------


def test_xoauth2_command_keeps_working(world: World) -> None:
    token = oauth.access_token(config.Config(str(world.env.conf)), str(world.cred))
    helper = world.env.root / "token.sh"
    helper.write_text(f"#!/bin/sh\necho {token}\n")
    helper.chmod(0o700)
    world.env.conf.write_text(world.env.conf.read_text() + f"XOAUTH2_COMMAND {helper}\n")
    assert world.send().returncode == 0
    assert world.handler.auth_seen == ["XOAUTH2"] and len(world.handler.messages) == 1


def test_password_from_a_command_and_from_a_systemd_credential(dma_env: DmaEnv, certs: Certs) -> None:
    script = dma_env.root / "secret.sh"
    script.write_text(f"#!/bin/sh\necho 'looked up' >&2\necho {PASSWORD}\n")
    script.chmod(0o700)
    creds = dma_env.root / "creds"
    creds.mkdir()
    (creds / "smtp-password").write_text(PASSWORD + "\n")
    auth = dma_env.root / "auth.conf"
    with Smtpd(tls_context=certs.server_context()) as smtp:
        dma_env.smarthost = f"SMARTHOST 127.0.0.1\nPORT {smtp.port}"
        dma_env.write_conf("SECURETRANSFER", "STARTTLS", f"AUTHPATH {auth}", f"CAFILE {certs.ca_file}")
        for value, env in [
            (f"{{command}}{script} --account me", {}),
            ("{credential}smtp-password", {"CREDENTIALS_DIRECTORY": str(creds)}),
        ]:
            auth.write_text(f"{LOGIN}|127.0.0.1:{value}\n")
            r = dma_env.run(["-D", RCPT], MSG, env=env)
            assert r.returncode == 0, r.stderr
        # A failing command: its stderr is shown, its stdout never.
        script.write_text(f"#!/bin/sh\necho 'vault locked' >&2\necho {PASSWORD}\nexit 3\n")
        auth.write_text(f"{LOGIN}|127.0.0.1:{{command}}{script}\n")
        r = dma_env.run(["-D", RCPT], MSG)
        assert r.returncode == 75
        auth.write_text(f"{LOGIN}|127.0.0.1:{{credential}}smtp-password\n")
        r2 = dma_env.run(["-D", RCPT], MSG)
        assert r2.returncode == 75 and b"LoadCredential=smtp-password" in r2.stderr
    assert len(smtp.handler.messages) == 2
    assert b"exited 3 without one line of output: vault locked" in r.stderr
    assert PASSWORD.encode() not in r.stderr + r2.stderr


def test_install_loads_the_credentials_auth_conf_names(dma_env: DmaEnv, tmp_path: Path) -> None:
    from dma.admin.install import Installer

    cred = tmp_path / "oauth"
    cred.write_text(
        "provider google\nclient_id x\nclient_secret {credential}gsecret\nrefresh_token {credential}grt\n"
    )
    auth = tmp_path / "auth.conf"
    auth.write_text(f"a|h1:{{credential}}pw\nb|smtp.gmail.com:{{oauth2}}{cred}\nc|h2:plain\n")
    dma_env.write_conf(f"AUTHPATH {auth}")
    assert oauth.credential_names(config.Config(str(dma_env.conf))) == ["grt", "gsecret", "pw"]
    root = tmp_path / "image"
    Installer(str(root)).install_units("/var/spool/dma", ["grt", "pw"])
    unit = (root / "etc/systemd/system/dma.service").read_text()
    assert "[Service]\nLoadCredential=grt:/etc/credstore/grt\nLoadCredential=pw:/etc/credstore/pw\n" in unit


# ---- attacks on the token store (SECURITY.md, "OAuth2 token store") ------------------------------


def as_nobody(*argv: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", *argv], capture_output=True
    )


@pytest.fixture
def reachable(world: World) -> Iterator[None]:
    """o+x on the directories above the spool (pytest's are 0700), as on a real system."""
    changed = {}
    for d in world.env.spool.parents:
        mode = d.stat().st_mode & 0o7777
        if not mode & 0o001:
            changed[d] = mode
            d.chmod(mode | 0o001)
    try:
        yield
    finally:
        for d, mode in changed.items():
            d.chmod(mode)


def test_token_store_attacks(world: World, reachable: None) -> None:
    assert world.send().returncode == 0
    cache = Path(world.cache_file())
    # The spool as `dma install` makes it (0711): another user can neither read nor plant.
    world.env.spool.chmod(0o711)
    r = as_nobody("cat", str(cache))
    assert r.returncode and b"Permission denied" in r.stderr
    for target in (cache, Path(f"{cache}.tmp"), Path(f"{cache}.lock")):
        r = as_nobody("ln", "-sf", "/etc/passwd", str(target))
        assert r.returncode and b"Permission denied" in r.stderr
    # A misconfigured spool (1777: anyone may create names) and a planted link or forged cache.
    world.env.spool.chmod(0o1777)
    victim = world.env.root / "victim"
    victim.write_text("root's file\n")
    world.tokens.expires_in = 60  # every delivery refreshes, so the planted names are used
    assert as_nobody("ln", "-s", str(victim), f"{cache}.tmp").returncode == 0
    assert world.send().returncode == 0 and victim.read_text() == "root's file\n"
    assert as_nobody("rm", "-f", str(cache)).returncode and cache.exists()  # sticky: not theirs
    cache.unlink()
    forged = f"origin {world.refresh_token}\nrefresh rt-forged\naccess at-forged\nexpires 9999999999\n"
    assert as_nobody("sh", "-c", f"umask 077; printf '{forged}' > {cache}").returncode == 0
    assert cache.stat().st_uid == 65534
    assert world.send().returncode == 0  # the forged token was ignored, not sent
    assert cache.stat().st_uid == 0 and "at-forged" not in world.cache()["access"]
    cache.unlink()
    assert as_nobody("ln", "-s", str(victim), str(cache)).returncode == 0
    assert world.send().returncode == 0 and not cache.is_symlink() and victim.read_text() == "root's file\n"
    Path(f"{cache}.lock").unlink()
    assert as_nobody("ln", "-s", str(victim), f"{cache}.lock").returncode == 0
    r = world.send()
    assert r.returncode == 75 and b"can not lock the OAuth2 token cache" in r.stderr
    assert victim.read_text() == "root's file\n"
    world.assert_no_secret(r.stderr, world.log.read_text())


FULL_DISK = """
import json, os, subprocess, sys
spool, script = sys.argv[1:]
subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", spool], check=True)
with open(spool + "/filler", "wb") as f:
    try:
        f.write(b"x" * 65536 * 2)
    except OSError:
        pass
full = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
left = sorted(os.listdir(spool))
os.unlink(spool + "/filler")
again = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
out = {"full": [full.returncode, full.stderr], "left": left, "again": [again.returncode, again.stderr]}
print(json.dumps(out))
"""


def test_full_disk_during_rotation_keeps_the_old_refresh_token(world: World) -> None:
    from conftest import in_private_namespace

    world.tokens.expires_in = 60
    os.environ.update(DMA_CONF=str(world.env.conf))
    try:
        report = in_private_namespace(FULL_DISK, str(world.env.spool), REFRESH.format(cred=str(world.cred)))
    finally:
        del os.environ["DMA_CONF"]
    assert report["full"][0] == 1 and "No space left on device" in report["full"][1]
    assert "can not store the OAuth2 token cache" in report["full"][1]
    assert [n for n in report["left"] if n.endswith(".tmp")] == []
    assert report["again"][0] == 0, report["again"][1]  # the rotation was only lost, not the token
