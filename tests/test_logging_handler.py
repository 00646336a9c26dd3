"""`dma.logging_handler.MailHandler`: a log record becomes a queued message (and a delivered one),
errors go to `handleError`, and `dictConfig` can build it."""

from __future__ import annotations

import email
import logging
import logging.config
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from dma import config
from dma.logging_handler import MailHandler
from dma.mail.submit import runner_running
from dma_fixtures import DmaEnv
from smtp_servers import Smtpd


@pytest.fixture
def denv(tmp_path: Path) -> DmaEnv:
    env = DmaEnv(tmp_path)
    env.write_conf("DEFER")
    return env


@pytest.fixture
def logger() -> Iterator[logging.Logger]:
    log = logging.getLogger(f"test_logging_handler.{time.monotonic_ns()}")
    log.propagate = False
    log.setLevel(logging.DEBUG)
    yield log
    for h in list(log.handlers):
        log.removeHandler(h)
        h.close()


def test_a_record_is_queued_as_a_message(denv: DmaEnv, logger: logging.Logger) -> None:
    handler = MailHandler(
        "App <app@src.example>", ["ops@remote.example", "root"], "app error", config=denv.conf
    )
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    handler.setLevel(logging.ERROR)
    logger.addHandler(handler)
    logger.info("not mailed")
    logger.error("disk %s is full", "/var")
    assert sorted(denv.recipients()) == ["ops@remote.example", "root"]
    assert {f["Sender"] for f in denv.q_files().values()} == {"app@src.example"}
    msg = email.message_from_bytes(denv.message())
    assert msg["Subject"] == "app error"
    assert msg["From"] == "App <app@src.example>"
    assert msg["To"] == "ops@remote.example, root"
    assert msg["Date"] and msg["Message-Id"] and msg["Received"]
    body = msg.get_payload(decode=True)
    assert isinstance(body, bytes)
    assert body == f"ERROR {logger.name}: disk /var is full\n".encode()


def test_one_message_per_record_and_a_custom_subject(denv: DmaEnv, logger: logging.Logger) -> None:
    class Subjects(MailHandler):
        def getSubject(self, record: logging.LogRecord) -> str:
            return f"[{record.levelname}] {record.getMessage()[:20]}"

    logger.addHandler(Subjects("app@src.example", "root", "unused", config=denv.conf))
    logger.warning("first")
    logger.critical("second")
    subjects = sorted(
        str(email.message_from_bytes((denv.spool / f"M{e.id}").read_bytes())["Subject"])
        for e in denv.entries()
    )
    assert subjects == ["[CRITICAL] second", "[WARNING] first"]


def test_an_exception_traceback_is_in_the_body(denv: DmaEnv, logger: logging.Logger) -> None:
    logger.addHandler(MailHandler("app@src.example", "root", "crash", config=str(denv.conf)))
    try:
        _ = 1 / 0
    except ZeroDivisionError:
        logger.exception("it broke")
    body = email.message_from_bytes(denv.message()).get_payload(decode=True)
    assert isinstance(body, bytes)
    assert body.startswith(b"it broke\nTraceback (most recent call last):")
    assert b"ZeroDivisionError: division by zero" in body


def test_errors_go_to_handle_error(denv: DmaEnv, logger: logging.Logger) -> None:
    errors: list[BaseException | None] = []

    class Recording(MailHandler):
        def handleError(self, record: logging.LogRecord) -> None:
            import sys

            errors.append(sys.exc_info()[1])

    logger.addHandler(Recording("app@src.example", ["bad@-x-.example"], "s", config=denv.conf))
    logger.addHandler(Recording("app@src.example", ["root"], "line\nbreak", config=denv.conf))
    logger.error("never raises")
    assert len(errors) == 2
    assert denv.files() == []


def test_dict_config_builds_it(denv: DmaEnv) -> None:
    name = f"test_logging_handler.dict.{time.monotonic_ns()}"
    logging.config.dictConfig(
        {
            "version": 1,
            "disable_existing_loggers": False,
            "handlers": {
                "mail": {
                    "class": "dma.logging_handler.MailHandler",
                    "level": "ERROR",
                    "fromaddr": "app@src.example",
                    "toaddrs": ["root"],
                    "subject": "from dictConfig",
                    "config": str(denv.conf),
                }
            },
            "loggers": {name: {"handlers": ["mail"], "propagate": False}},
        }
    )
    log = logging.getLogger(name)
    try:
        log.error("configured")
        assert email.message_from_bytes(denv.message())["Subject"] == "from dictConfig"
    finally:
        for h in list(log.handlers):
            log.removeHandler(h)
            h.close()


def test_a_record_is_delivered(tmp_path: Path, logger: logging.Logger) -> None:
    with Smtpd() as server:
        env = DmaEnv(tmp_path)
        env.smarthost = f"SMARTHOST 127.0.0.1\nPORT {server.port}"
        env.write_conf()
        logger.addHandler(MailHandler("app@src.example", "ops@remote.example", "alert", config=env.conf))
        logger.error("delivered by the runner")
        deadline = time.monotonic() + 20
        while not server.handler.messages and time.monotonic() < deadline:
            time.sleep(0.05)
        (got,) = server.handler.messages
        assert got.mail_from == "app@src.example" and got.rcpt_tos == ["ops@remote.example"]
        assert b"Subject: alert" in got.content and b"delivered by the runner" in got.content
        cfg = config.Config(str(env.conf))
        while (env.entries() or runner_running(cfg)) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert env.entries() == [] and not runner_running(cfg)
