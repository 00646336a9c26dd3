"""What callers of sendmail rely on beyond the options: closed descriptors, the Python API at the
top level, a list of smarthosts, the From rewriting."""

from __future__ import annotations

import subprocess
import sys
import time
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP
from dma import _native
from dma.config import split_hosts
from dma.mail.bounce import parameters
from dma_fixtures import DmaEnv, closed_port, program
from smtp_servers import Recorder, Smtpd

MSG = b"Subject: hi\nTo: bob@example.test\n\nhello\n"


def settle(server: Smtpd, env: DmaEnv, count: int = 1, timeout: float = 15) -> None:
    """Wait until `count` messages arrived and the spool is empty, then a little longer for extras."""
    deadline = time.monotonic() + timeout
    while (len(server.handler.messages) < count or env.entries()) and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.3)


def test_closed_stdout_and_stderr_exit_0_and_deliver_once(dma_env: DmaEnv) -> None:
    with Smtpd() as server:
        dma_env.smarthost = f"SMARTHOST 127.0.0.1\nPORT {server.port}"
        dma_env.write_conf()
        # GNU mailutils' way: only descriptor 0 open.
        script = 'exec 1>&- 2>&-; exec "$0" "$@"'
        proc = subprocess.run(
            ["sh", "-c", script, program("sendmail"), "bob@example.test"],
            input=MSG,
            env=dma_env.env,
            capture_output=True,
            timeout=30,
            check=False,
        )
        assert proc.returncode == 0, proc
        settle(server, dma_env)
    assert [m.rcpt_tos for m in server.handler.messages] == [["bob@example.test"]]
    assert dma_env.entries() == []


def test_closed_stdout_still_reports_an_error_as_exit_code(dma_env: DmaEnv) -> None:
    proc = subprocess.run(
        ["sh", "-c", 'exec 1>&- 2>&-; exec "$0" "$@"', program("sendmail"), "-X"],
        input=MSG,
        env=dma_env.env,
        timeout=30,
        check=False,
    )
    assert proc.returncode == 64
    assert dma_env.entries() == []


def test_submit_and_batch_at_the_top_level_load_the_api_lazily() -> None:
    # `dma.submit` must be the function whatever was imported before (dma.mail.submit too).
    code = (
        "import sys, dma\n"
        "assert 'dma.api' not in sys.modules\n"
        "import dma.cli, dma.mail.submit\n"  # the submission module loaded first
        "from dma import api\n"
        "assert dma.submit is api.submit and dma.Batch is api.Batch\n"
        "try:\n    dma.nothing\nexcept AttributeError:\n    print('ok')\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert done.stdout == "ok\n", done.stderr


def test_a_smarthost_that_fails_hands_over_to_the_next_in_the_same_attempt(dma_env: DmaEnv) -> None:
    with Smtpd() as server:
        down = closed_port()
        dma_env.smarthost = f"SMARTHOST 127.0.0.1:{down} 127.0.0.1\nPORT {server.port}"
        dma_env.write_conf()
        done = dma_env.run(["-D", "bob@example.test"], MSG)
        assert done.returncode == 0, done.stderr
        assert [m.rcpt_tos for m in server.handler.messages] == [["bob@example.test"]]
        # The same in a ROUTE: commas join its relays.
        dma_env.write_conf(f"ROUTE to:example.test [::1]:{down},127.0.0.1:{down},127.0.0.1:{server.port}")
        done = dma_env.run(["-D", "carol@example.test"], MSG)
        assert done.returncode == 0, done.stderr
        assert len(server.handler.messages) == 2


def test_smarthost_lists_parse_ports_and_ipv6_literals() -> None:
    assert split_hosts("a b:2525 [::1]:26 ::1,c", 587) == [
        ("a", 587),
        ("b", 2525),
        ("::1", 26),
        ("::1", 587),
        ("c", 587),
    ]
    for bad in ("a:0", "b:x", "587", "[::1]:70000", "[::1", "[::1]:", "a:", "a,,b", "a,"):
        with pytest.raises(ValueError):
            split_hosts(bad, 25)


CRON = b"From: root (Cron Daemon)\nTo: root\nSubject: Cron <root@vm> true\n\noutput\n"


def test_rewritefrom_replaces_the_sender_and_keeps_the_display_name(dma_env: DmaEnv) -> None:
    dma_env.write_conf("MASQUERADE host.example", "REWRITEFROM alerts@example.org")
    assert dma_env.run(["-f", "root", "bob@example.test"], CRON).returncode == 0
    # No From: at all: the added one has the address (and -F's name).
    assert dma_env.run(["-F", "Jo", "bob@example.test"], b"Subject: x\n\nbody\n").returncode == 0
    assert sorted(e.sender for e in dma_env.entries()) == ["alerts@example.org"] * 2
    messages = sorted((dma_env.spool / n).read_bytes() for n in dma_env.files() if n.startswith("M"))
    assert b'\nFrom: "root (Cron Daemon)" <alerts@example.org>\n' in messages[0]  # queued first
    assert messages[0].count(b"From:") == 1 and messages[0].endswith(b"\n\noutput\n")
    assert b'\nFrom: "Jo" <alerts@example.org>\n' in messages[1]


def test_a_from_route_rewrites_its_senders_and_still_carries_them(dma_env: DmaEnv) -> None:
    with Smtpd() as server:
        route = f"ROUTE from:root@mail.example 127.0.0.1:{server.port} rewritefrom=me@example.org"
        dma_env.write_conf(route)
        done = dma_env.run(["-D", "bob@example.test"], b"From: Root <root@mail.example>\n\nhi\n")
        assert done.returncode == 0, done.stderr
    [got] = server.handler.messages
    assert got.mail_from == "me@example.org"
    assert b"\r\nFrom: Root <me@example.org>\r\n" in got.content


class DsnSMTP(SMTP):
    """aiosmtpd refuses RFC 3461 parameters: this server takes them aside (into `dsn_seen`)."""

    async def smtp_MAIL(self, arg: str) -> None:
        await super().smtp_MAIL(self._aside(arg))

    async def smtp_RCPT(self, arg: str) -> None:
        await super().smtp_RCPT(self._aside(arg))

    def _aside(self, arg: str) -> str:
        words = (arg or "").split(" ")
        dsn = [w for w in words if w.partition("=")[0] in ("RET", "ENVID", "NOTIFY", "ORCPT")]
        self.event_handler.dsn_seen.append(dsn)
        return " ".join(w for w in words if w not in dsn)


class DsnRecorder(Recorder):
    def __init__(self) -> None:
        super().__init__()
        self.dsn_seen: list[list[str]] = []

    async def handle_EHLO(
        self, server: Any, session: Any, envelope: Any, hostname: str, responses: list[str]
    ) -> list[str]:
        responses = await super().handle_EHLO(server, session, envelope, hostname, responses)
        return [*responses[:-1], "250-DSN", responses[-1]]


class DsnController(Controller):
    def factory(self) -> SMTP:
        return DsnSMTP(self.handler, **self.SMTP_kwargs)


DSN_ARGS = ["-N", "failure,delay", "-R", "hdrs", "-V", "id+1=ü x"]


def test_dsn_options_reach_a_server_that_offers_dsn_and_are_stored(dma_env: DmaEnv) -> None:
    with Smtpd(DsnRecorder()) as server:
        server.controller.stop()
        server.controller = DsnController(
            server.handler, hostname="127.0.0.1", port=server.port, decode_data=False
        )
        server.controller.start()
        dma_env.smarthost = f"SMARTHOST 127.0.0.1\nPORT {server.port}"
        dma_env.write_conf("DEFER")
        done = dma_env.run([*DSN_ARGS[:4], "-V", "id+1=x", "bob@example.test"], MSG)
        assert done.returncode == 0, done.stderr
        assert [q["DSN"] for q in dma_env.q_files().values()] == [
            "NOTIFY=FAILURE,DELAY RET=HDRS ENVID=id+2B1+3Dx"
        ]
        assert dma_env.run(["-q", "-D"]).returncode == 0
    assert server.handler.dsn_seen == [["RET=HDRS", "ENVID=id+2B1+3Dx"], ["NOTIFY=FAILURE,DELAY"]]
    assert len(server.handler.messages) == 1


def test_dsn_options_are_left_out_when_the_server_does_not_offer_dsn(dma_env: DmaEnv) -> None:
    with Smtpd() as server:  # aiosmtpd answers 555 to parameters it does not know
        dma_env.smarthost = f"SMARTHOST 127.0.0.1\nPORT {server.port}"
        dma_env.write_conf()
        done = dma_env.run(["-D", "-N", "never", "-R", "full", "bob@example.test"], MSG)
        assert done.returncode == 0, done.stderr
    [got] = server.handler.messages
    assert [o.partition("=")[0] for o in got.mail_options] == ["SIZE"]


@pytest.mark.parametrize("bad", [["-N", "sometimes"], ["-R", "half"], ["-V", "a b\x01"]])
def test_bad_dsn_options_are_usage_errors(dma_env: DmaEnv, bad: list[str]) -> None:
    assert dma_env.run([*bad, "bob@example.test"], MSG).returncode == 64
    assert dma_env.entries() == []


def test_our_bounces_honour_notify_and_ret(dma_env: DmaEnv) -> None:
    with Smtpd(Recorder(rcpt_replies={"bob@example.test": "550 5.1.1 no such user"})) as server:
        dma_env.smarthost = f"SMARTHOST 127.0.0.1\nPORT {server.port}"
        dma_env.write_conf("FULLBOUNCE")
        assert dma_env.run(["-D", "-N", "success", "bob@example.test"], MSG).returncode == 69
        assert dma_env.entries() == [] and not (dma_env.mboxdir / "root").exists()  # no bounce
        assert dma_env.run(["-D", "-R", "hdrs", "bob@example.test"], MSG).returncode == 69
    assert [e.sender for e in dma_env.entries()] == [""]  # the bounce, queued
    bounce = dma_env.message()
    assert b"Content-Type: text/rfc822-headers" in bounce and b"\nhello\n" not in bounce


def test_an_envid_in_xtext_already_is_kept() -> None:
    assert parameters(None, None, "a+2Bb") == "ENVID=a+2Bb"
    assert parameters("never", None, "a+b") == "NOTIFY=NEVER ENVID=a+2Bb"


def test_a_drop_carries_dsn_only_in_the_shape_sendmail_writes() -> None:
    envelope = "Sender: a@example.test\nRecipient: b@example.test\nDSN: {}\n"
    good = "NOTIFY=SUCCESS,DELAY RET=FULL ENVID=x+2By"
    parse = _native.Incoming.drop_envelope  # as the runner reads a drop's envelope (drop.envelope)
    assert parse(envelope.format(good).encode()) == ("a@example.test", ["b@example.test"], good)
    assert parse(envelope[:-8].encode())[2] == ""
    for bad in ("NOTIFY=NEVER SIZE=1", "RET=ALL", "ENVID=a=b", "NOTIFY=", "NOTIFY=NEVER  RET=FULL"):
        with pytest.raises(ValueError):
            parse(envelope.format(bad).encode())
