"""`dma.django_backend.EmailBackend` with a real Django: `send_mail` and friends queue into the spool
(Bcc in the envelope only), one sync per call, `fail_silently`, and delivery through the runner."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from django.conf import settings
from django.core import mail
from django.test.utils import override_settings
from dma import config
from dma.errors import EX_DATAERR, Fatal
from dma.mail.submit import runner_running
from dma_fixtures import DmaEnv
from smtp_servers import Smtpd

if not settings.configured:
    settings.configure(
        EMAIL_BACKEND="dma.django_backend.EmailBackend",
        DEFAULT_FROM_EMAIL="Web Site <web@site.example>",
        DEFAULT_CHARSET="utf-8",
    )


@pytest.fixture
def denv(tmp_path: Path) -> Iterator[DmaEnv]:
    env = DmaEnv(tmp_path)
    env.write_conf("DEFER")
    with override_settings(DMA_CONFIG=str(env.conf)):
        yield env


def test_send_mail_queues_through_dma(denv: DmaEnv, syncs: list[str]) -> None:
    n = mail.send_mail("Grüße", "hello from django\n", None, ["Bob <bob@remote.example>", "root"])
    assert n == 1
    assert sorted(denv.recipients()) == ["bob@remote.example", "root"]
    assert {f["Sender"] for f in denv.q_files().values()} == {"web@site.example"}
    m = denv.message()
    assert m.startswith(b"Received: from ")
    assert b"\nSubject: =?utf-8?" in m and b"hello from django" in m
    assert b"\nFrom: Web Site <web@site.example>\n" in m
    assert m.count(b"\nMessage-ID:") + m.count(b"\nMessage-Id:") == 1  # Django's, none added
    assert syncs == [str(denv.spool)]


def test_bcc_is_in_the_envelope_only(denv: DmaEnv) -> None:
    msg = mail.EmailMessage(
        "s", "body\n", "from@site.example", ["to@remote.example"], bcc=["hidden@remote.example"]
    )
    msg.cc = ["cc@remote.example"]
    assert msg.send() == 1
    assert sorted(denv.recipients()) == ["cc@remote.example", "hidden@remote.example", "to@remote.example"]
    m = denv.message()
    assert b"hidden" not in m and b"Bcc" not in m
    assert b"\nCc: cc@remote.example\n" in m


def test_send_mass_mail_is_one_batch(denv: DmaEnv, syncs: list[str]) -> None:
    datatuple = [(f"s{i}", f"body {i}\n", "from@site.example", [f"u{i}@remote.example"]) for i in range(5)]
    assert mail.send_mass_mail(datatuple) == 5
    assert sorted(denv.recipients()) == [f"u{i}@remote.example" for i in range(5)]
    assert len({e.message_id for e in denv.entries()}) == 5
    assert syncs == [str(denv.spool)]


def test_multipart_with_attachment(denv: DmaEnv) -> None:
    msg = mail.EmailMultiAlternatives("s", "text\n", "from@site.example", ["root"])
    msg.attach_alternative("<p>html</p>", "text/html")
    msg.attach("a.bin", b"\x00\x01\x02" * 100, "application/octet-stream")
    assert msg.send() == 1
    m = denv.message()
    assert b"multipart/mixed" in m and b"text/html" in m and b'filename="a.bin"' in m
    assert b"\r" not in m


def test_messages_without_recipients_are_skipped(denv: DmaEnv) -> None:
    backend = mail.get_connection()
    assert backend.send_messages([mail.EmailMessage("s", "b", "from@site.example", [])]) == 0
    assert backend.send_messages([]) == 0
    assert denv.files() == []


def test_errors_raise_without_fail_silently(denv: DmaEnv) -> None:
    good = mail.EmailMessage("s", "b", "from@site.example", ["root"])
    bad = mail.EmailMessage("s", "b", "from@site.example", ["bad@-x-.example"])
    with pytest.raises(Fatal) as info:
        mail.get_connection().send_messages([good, bad])
    assert info.value.code == EX_DATAERR
    # What was queued before the error stays queued, and is durable: see dma.api.Batch.
    assert denv.recipients() == ["root"]


def test_fail_silently_skips_what_dma_refuses(denv: DmaEnv) -> None:
    messages = [
        mail.EmailMessage("s", "b", "from@site.example", ["root"]),
        mail.EmailMessage("s", "b", "from@site.example", ["bad@-x-.example"]),
        mail.EmailMessage("s", "b", "from@site.example", ["x@remote.example"]),
    ]
    assert mail.get_connection(fail_silently=True).send_messages(messages) == 2
    assert sorted(denv.recipients()) == ["root", "x@remote.example"]
    assert mail.send_mail("s", "b", "from@site.example", ["bad@-x-.example"], fail_silently=True) == 0


def test_fail_silently_covers_a_broken_config(tmp_path: Path) -> None:
    bad = tmp_path / "bad.conf"
    bad.write_text("PORT notaport\n")
    with override_settings(DMA_CONFIG=str(bad)):
        assert mail.send_mail("s", "b", "from@site.example", ["root"], fail_silently=True) == 0
        with pytest.raises(Fatal) as info:
            mail.send_mail("s", "b", "from@site.example", ["root"])
    assert info.value.code == 78


def test_config_argument_overrides_the_setting(denv: DmaEnv, tmp_path: Path) -> None:
    other = DmaEnv(tmp_path / "other")
    other.write_conf("DEFER")
    backend = mail.get_connection(config=str(other.conf))
    assert backend.send_messages([mail.EmailMessage("s", "b", "from@site.example", ["root"])]) == 1
    assert other.recipients() == ["root"] and denv.files() == []


def test_delivered_through_the_runner(tmp_path: Path) -> None:
    with Smtpd() as server:
        env = DmaEnv(tmp_path)
        env.smarthost = f"SMARTHOST 127.0.0.1\nPORT {server.port}"
        env.write_conf()
        with override_settings(DMA_CONFIG=str(env.conf)):
            assert mail.send_mail("from django", "body\n", "from@site.example", ["x@remote.example"]) == 1
        deadline = time.monotonic() + 20
        while not server.handler.messages and time.monotonic() < deadline:
            time.sleep(0.05)
        (got,) = server.handler.messages
        assert got.mail_from == "from@site.example" and got.rcpt_tos == ["x@remote.example"]
        assert b"Subject: from django" in got.content
        cfg = config.Config(str(env.conf))
        while (env.entries() or runner_running(cfg)) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert env.entries() == [] and not runner_running(cfg)
