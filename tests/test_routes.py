"""ROUTE lines: per recipient domain and per envelope sender, their own relay, TLS and login."""

from __future__ import annotations

from pathlib import Path

import pytest
from dma import config
from dma.errors import ConfigError
from dma.mail.routing import choose
from dma_fixtures import DmaEnv
from smtp_servers import LOGIN, PASSWORD, Certs, Recorder, Smtpd

MESSAGE = b"Subject: routes\n\nbody\n"


def load(tmp_path: Path, text: str) -> config.Config:
    path = tmp_path / "dma.conf"
    path.write_text(text)
    return config.Config(str(path))


def test_first_matching_route_wins(tmp_path: Path) -> None:
    cfg = load(
        tmp_path,
        "ROUTE from:alice@example.com smtp.gmail.test:465 tls verify auth=alice\n"
        "ROUTE to:example.org relay.example.org:587 starttls\n"
        "ROUTE to:*.corp.example mx\n"
        "ROUTE from:@example.net relay.example.net\n",
    )
    routes = cfg.routes
    assert choose(routes, "Alice@Example.com", "x@example.org") is routes[0]
    assert choose(routes, "bob@example.com", "x@EXAMPLE.org") is routes[1]
    assert choose(routes, "bob@example.com", "x@mail.corp.example") is routes[2]
    assert choose(routes, "bob@example.com", "x@corp.example") is None
    assert choose(routes, "carol@example.net", "x@other.test") is routes[3]
    assert choose(routes, "", "x@other.test") is None
    gmail = routes[0]
    assert (gmail.hosts, gmail.tls, gmail.verify, gmail.login) == (
        [("smtp.gmail.test", 465)],
        "implicit",
        True,
        "alice",
    )
    assert (routes[1].hosts[0][1], routes[1].tls, routes[1].verify) == (587, "starttls", None)
    assert routes[3].hosts[0][1] == 25


@pytest.mark.parametrize(
    "value",
    [
        "to:example.org",
        "example.org relay",
        "to: relay",
        "to:x relay:0",
        "to:x relay:99999",
        "to:x relay bogus",
        "to:x relay fingerprint=zz",
        "to:x relay fingerprint=abcd",
        "to:x relay rewritefrom=a@b",
        "from:x relay rewritefrom=nobody",
        "to:x relay,,:0",
    ],
)
def test_bad_routes_are_config_errors_naming_the_line(tmp_path: Path, value: str) -> None:
    with pytest.raises(ConfigError) as e:
        load(tmp_path, f"# comment\nROUTE {value}\n")
    assert e.value.code == 78 and e.value.line == 2 and e.value.key == "ROUTE"


def test_recipients_split_over_routes_and_the_smarthost(dma_env: DmaEnv) -> None:
    with Smtpd() as routed, Smtpd() as default:
        dma_env.smarthost = (
            f"SMARTHOST 127.0.0.1\nPORT {default.port}\nROUTE to:routed.test 127.0.0.1:{routed.port}"
        )
        dma_env.write_conf()
        run = dma_env.run(["-D", "a@routed.test", "b@other.test", "c@routed.test"], MESSAGE)
        assert run.returncode == 0, run.stderr
        assert [m.rcpt_tos for m in routed.handler.messages] == [["a@routed.test", "c@routed.test"]]
        assert [m.rcpt_tos for m in default.handler.messages] == [["b@other.test"]]


def test_sender_route_with_its_own_tls_and_login(dma_env: DmaEnv, certs: Certs) -> None:
    auth = dma_env.root / "auth.conf"
    # Two logins for the same host: the route's auth= picks one; without it the last line wins.
    auth.write_text(f"{LOGIN}|127.0.0.1:{PASSWORD}\nsomeone-else|127.0.0.1:wrong\n")
    auth.chmod(0o600)
    tls = certs.server_context()
    with (
        Smtpd(Recorder(), tls_context=tls, require_starttls=True, auth_require_tls=True) as relay,
        Smtpd() as default,
    ):
        dma_env.smarthost = (
            f"SMARTHOST 127.0.0.1\nPORT {default.port}\nAUTHPATH {auth}\nCAFILE {certs.ca_file}\n"
            f"ROUTE from:alice@example.com 127.0.0.1:{relay.port} starttls verify auth={LOGIN}"
        )
        dma_env.write_conf()
        run = dma_env.run(["-D", "-f", "alice@example.com", "x@anywhere.test"], MESSAGE)
        assert run.returncode == 0, run.stderr
        other = dma_env.run(["-D", "-f", "bob@example.com", "y@anywhere.test"], MESSAGE)
        assert other.returncode == 0, other.stderr
    assert [m.rcpt_tos for m in relay.handler.messages] == [["x@anywhere.test"]]
    assert relay.handler.messages[0].session.ssl is not None, "the route's STARTTLS was used"
    assert relay.handler.auth_seen, "the route's login was used"
    assert [m.rcpt_tos for m in default.handler.messages] == [["y@anywhere.test"]]


def test_doctor_shows_the_route_an_address_takes(dma_env: DmaEnv) -> None:
    with Smtpd() as routed:
        dma_env.smarthost = f"SMARTHOST 127.0.0.1\nPORT 1\nROUTE to:routed.test 127.0.0.1:{routed.port} plain"
        dma_env.write_conf()
        run = dma_env.run(["doctor", "a@routed.test"], prog="dma")
        out = run.stdout.decode()
        line = (
            dma_env.conf.read_text().splitlines().index(f"ROUTE to:routed.test 127.0.0.1:{routed.port} plain")
            + 1
        )
        assert f"a@routed.test -> relay 127.0.0.1 port {routed.port} (ROUTE at line {line})" in out, out
        assert routed.handler.ehlo_count >= 1, "doctor probed the route's relay"
        assert routed.handler.mails == [], "and sent nothing"
