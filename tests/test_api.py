"""`dma.api`: submitting from a running program spools exactly what `sendmail` spools, refuses what
`sendmail` refuses (leaving nothing behind), batches make everything durable with one sync, and the
runner is woken or started (a real smarthost receives the message)."""

from __future__ import annotations

import email
import email.policy
import fcntl
import os
import re
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from email.message import EmailMessage
from email.mime.text import MIMEText
from pathlib import Path

import pytest
from dma import _native, api, config
from dma.errors import EX_DATAERR, EX_NOINPUT, Fatal
from dma.mail.submit import runner_running
from dma_fixtures import MAILNAME, ME, DmaEnv
from smtp_servers import Smtpd

RAW = (
    b"From: Alice <alice@src.example>\n"
    b"To: Bob <bob@remote.example>, root\n"
    b"Cc: carol@remote.example\n"
    b"Bcc: dave@remote.example,\n"
    b"  erin@remote.example\n"
    b"Subject: same as sendmail\n"
    b"\n"
    b"line one\n"
    b".\n"
    b"after a lone dot\n"
)
HEADER_RCPTS = [
    "bob@remote.example",
    "root",
    "carol@remote.example",
    "dave@remote.example",
    "erin@remote.example",
]


@pytest.fixture(autouse=True)
def no_email_env(monkeypatch: pytest.MonkeyPatch) -> None:
    # The default envelope sender comes from $EMAIL, else the login name: make it the login name.
    monkeypatch.delenv("EMAIL", raising=False)
    monkeypatch.delenv("DMA_CONF", raising=False)


def deferred_env(root: Path) -> DmaEnv:
    env = DmaEnv(root)
    env.write_conf("DEFER")
    return env


@pytest.fixture
def denv(tmp_path: Path) -> DmaEnv:
    return deferred_env(tmp_path / "api")


def wait_until(predicate: Callable[[], object], timeout: float = 20.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return bool(predicate())


DATE = rb"[A-Z][a-z]{2}, \d\d \w{3} \d{4} \d\d:\d\d:\d\d [-+]\d{4}"


def normalised(env: DmaEnv) -> tuple[bytes, list[tuple[str, str, str]]]:
    """The one spooled message and its entries, with ids, dates and the Message-Id token masked."""
    (message_id,) = {e.message_id for e in env.entries()}
    m = env.message().replace(message_id.encode(), b"<ID>")
    m = re.sub(DATE, b"<DATE>", m)
    m = re.sub(rb"Message-Id: <<ID>\.[0-9a-f]+@", b"Message-Id: <<ID>.<TOKEN>@", m)
    q = sorted((f["Sender"], f["Recipient"], f["Size"]) for f in env.q_files().values())
    return m, q


def cli_spool(tmp_path: Path, data: bytes, args: list[str]) -> DmaEnv:
    env = deferred_env(tmp_path / "cli")
    r = env.run(args, data)
    assert r.returncode == 0, r.stderr
    return env


# ---- the same spool as sendmail ---------------------------------------------------------------


def test_bytes_spool_exactly_what_sendmail_t_i_spools(tmp_path: Path, denv: DmaEnv) -> None:
    message_id = api.submit(RAW, config=str(denv.conf))
    cli = cli_spool(tmp_path, RAW, ["-t", "-i"])
    assert normalised(denv) == normalised(cli)
    assert {e.message_id for e in denv.entries()} == {message_id}
    assert sorted(denv.recipients()) == sorted(HEADER_RCPTS)
    m = denv.message()
    assert b"Bcc" not in m and b"erin" not in m
    assert m.endswith(b"line one\n.\nafter a lone dot\n")  # a lone dot does not end a message
    head = m.split(b"\n\n", 1)[0]
    assert head.startswith(f"Received: from {ME} (uid {os.getuid()})\n".encode())
    assert re.search(rb"\nDate: " + DATE + rb"\nMessage-Id: <", head)
    assert b"\nFrom: Alice <alice@src.example>\n" in head and head.count(b"\nFrom:") == 1


def test_explicit_recipients_and_sender_match_sendmail_f(tmp_path: Path, denv: DmaEnv) -> None:
    api.submit(RAW, sender="Sender <s@src.example>", recipients=["x@remote.example, root"], config=denv.conf)
    cli = cli_spool(tmp_path, RAW, ["-i", "-f", "Sender <s@src.example>", "x@remote.example, root"])
    assert normalised(denv) == normalised(cli)
    # The headers' recipients are not used when recipients are given; Bcc still goes.
    assert sorted(denv.recipients()) == ["root", "x@remote.example"]
    assert {f["Sender"] for f in denv.q_files().values()} == {"s@src.example"}
    assert b"Bcc" not in denv.message()


@pytest.mark.parametrize("kind", ["EmailMessage", "MIMEText", "bytearray"])
def test_message_objects_spool_what_sendmail_spools_for_their_bytes(
    tmp_path: Path, denv: DmaEnv, kind: str
) -> None:
    msg: EmailMessage | MIMEText
    if kind == "MIMEText":
        msg = MIMEText("Grüße\nFrom the start of a line\n.\n", "plain", "utf-8")
    else:
        msg = EmailMessage()
        msg.set_content("Grüße\nFrom the start of a line\n.\n")
    msg["To"] = "Bob <bob@remote.example>"
    msg["Bcc"] = "dave@remote.example"
    msg["Subject"] = "objet: façade"
    data = msg.as_bytes(policy=msg.policy.clone(linesep="\r\n"))
    api.submit(bytearray(data) if kind == "bytearray" else msg, config=denv.conf)
    cli = cli_spool(tmp_path, data, ["-t", "-i"])
    assert normalised(denv) == normalised(cli)
    assert sorted(denv.recipients()) == ["bob@remote.example", "dave@remote.example"]
    m = denv.message()
    assert b"\r" not in m and b"Bcc" not in m and b"dave" not in m
    body = email.message_from_bytes(m).get_payload(decode=True)
    assert isinstance(body, bytes)
    assert b"\nFrom the start of a line\n.\n" in body  # no >From quoting in the spool
    assert f"\nFrom: <{ME}@{MAILNAME}>\n".encode() in m  # added, as sendmail adds it
    assert f"\tid {denv.entries()[0].message_id}\n".encode() in m


def test_smtp_policy_message_with_crlf(denv: DmaEnv) -> None:
    msg = EmailMessage(policy=email.policy.SMTP)
    msg["To"] = "root"
    msg["Subject"] = "crlf"
    msg.set_content("body\n")
    api.submit(msg, config=denv.conf)
    m = denv.message()
    assert b"\r" not in m and m.endswith(b"\n\nbody\n")


def test_default_sender_and_null_sender(denv: DmaEnv) -> None:
    api.submit(b"To: root\n\nx\n", config=denv.conf)
    api.submit(b"To: root\n\nx\n", sender="<>", config=denv.conf)
    api.submit(b"To: root\n\nx\n", sender="", config=denv.conf)
    senders = sorted(f["Sender"] for f in denv.q_files().values())
    assert senders == ["", "", f"{ME}@{MAILNAME}"]


def test_email_env_gives_the_default_sender(denv: DmaEnv, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EMAIL", "app@app.example")
    api.submit(b"To: root\n\nx\n", config=denv.conf)
    assert [f["Sender"] for f in denv.q_files().values()] == ["app@app.example"]


@pytest.mark.parametrize("how", ["Config", "str", "Path", "DMA_CONF"])
def test_config_forms(denv: DmaEnv, monkeypatch: pytest.MonkeyPatch, how: str) -> None:
    cfg: config.Config | str | Path | None
    if how == "Config":
        cfg = config.Config(str(denv.conf))
    elif how == "str":
        cfg = str(denv.conf)
    elif how == "Path":
        cfg = denv.conf
    else:
        monkeypatch.setenv("DMA_CONF", str(denv.conf))
        cfg = None
    message_id = api.submit(b"To: root\n\nx\n", config=cfg)
    assert [e.message_id for e in denv.entries()] == [message_id]


def test_aliases_are_expanded(denv: DmaEnv) -> None:
    denv.aliases.write_text("postmaster: ops@remote.example, root\n")
    api.submit(b"To: postmaster\n\nx\n", config=denv.conf)
    assert sorted(denv.recipients()) == ["ops@remote.example", "root"]


# ---- refusals leave nothing -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "kwargs", "code"),
    [
        (b"Subject: no recipients\n\nx\n", {}, EX_NOINPUT),
        (b"To: root\n\nx\n", {"recipients": []}, EX_NOINPUT),
        (b"To: root\n\nx\n", {"recipients": [" "]}, EX_NOINPUT),
        (b"", {"recipients": "root"}, EX_NOINPUT),
        (b"To: root, bad@-host-.example\n\nx\n", {}, EX_DATAERR),
        (b"To: <unbalanced@x.example\n\nx\n", {}, EX_DATAERR),
        (b"To: root\n\nx\n", {"recipients": ["root", "a@b.example\nRCPT TO:<x@y>"]}, EX_DATAERR),
        (b"To: root\n\nx\n", {"recipients": "bad@x..example"}, EX_DATAERR),
        (b"To: root\n\nx\n", {"sender": "two@a.example, three@b.example"}, EX_DATAERR),
        (b"To: root\n\nx\n", {"sender": "me@x.example\nBcc: victim@y.example"}, EX_DATAERR),
    ],
)
def test_refusals_raise_fatal_and_leave_nothing(
    denv: DmaEnv, data: bytes, kwargs: dict[str, object], code: int
) -> None:
    with pytest.raises(Fatal) as info:
        api.submit(data, config=denv.conf, **kwargs)  # type: ignore[arg-type]
    assert info.value.code == code, info.value
    assert denv.files() == []


def test_same_refusals_as_sendmail(tmp_path: Path, denv: DmaEnv) -> None:
    data = b"To: root, bad@-host-.example\n\nx\n"
    with pytest.raises(Fatal) as info:
        api.submit(data, config=denv.conf)
    r = deferred_env(tmp_path / "cli").run(["-t", "-i"], data)
    assert r.returncode == info.value.code == EX_DATAERR
    assert r.stderr.decode() == f"sendmail: {info.value}\n"


def test_wrong_types_are_refused(denv: DmaEnv) -> None:
    with pytest.raises(TypeError):
        api.submit("To: root\n\nx\n", config=denv.conf)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        api.submit(b"To: root\n\nx\n", recipients=[b"root"], config=denv.conf)  # type: ignore[list-item]
    assert denv.files() == []


def test_a_config_error_is_fatal_78(tmp_path: Path) -> None:
    bad = tmp_path / "bad.conf"
    bad.write_text("PORT notaport\n")
    with pytest.raises(Fatal) as info:
        api.submit(b"To: root\n\nx\n", config=bad)
    assert info.value.code == 78


def test_unwritable_spool_is_fatal(tmp_path: Path) -> None:
    env = deferred_env(tmp_path / "e")
    env.write_conf("DEFER", spool=tmp_path / "not-a-dir" / "spool")
    (tmp_path / "not-a-dir").write_text("a file")
    with pytest.raises(Fatal) as info:
        api.submit(b"To: root\n\nx\n", config=env.conf)
    assert info.value.code in (73, 74, 75), info.value


# ---- batches ------------------------------------------------------------------------------------


@pytest.fixture
def wakes(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    calls: list[str] = []
    monkeypatch.setattr(api, "wake_runner", lambda cfg: calls.append(cfg.spooldir))
    return calls


def test_batch_one_sync_at_the_end(denv: DmaEnv, syncs: list[str], wakes: list[str]) -> None:
    with api.Batch(config=denv.conf) as batch:
        ids = [batch.submit(f"To: root\nSubject: {i}\n\nbody {i}\n".encode()) for i in range(20)]
        assert syncs == []
        # Written and visible already (a dying process keeps them), durable only at the end.
        assert len(denv.entries()) == 20
    assert syncs == [str(denv.spool)]
    assert wakes == []  # DEFER
    assert batch.message_ids == ids and len(batch) == 20 and len(set(ids)) == 20
    assert sorted(e.message_id for e in denv.entries()) == sorted(ids)
    assert not [n for n in denv.files() if n.startswith("tmp_")]


def test_batch_spools_what_submit_spools(tmp_path: Path, denv: DmaEnv) -> None:
    with api.Batch(config=denv.conf) as batch:
        batch.submit(RAW)
    single = deferred_env(tmp_path / "single")
    api.submit(RAW, config=single.conf)
    assert normalised(denv) == normalised(single)


def test_batch_wakes_the_runner_once(tmp_path: Path, syncs: list[str], wakes: list[str]) -> None:
    env = DmaEnv(tmp_path)  # no DEFER
    with api.Batch(config=env.conf) as batch:
        for _ in range(5):
            batch.submit(b"To: root\n\nx\n")
        assert wakes == []
    assert syncs == [str(env.spool)] and wakes == [str(env.spool)]


def test_empty_batch_neither_syncs_nor_wakes(tmp_path: Path, syncs: list[str], wakes: list[str]) -> None:
    env = DmaEnv(tmp_path)
    with api.Batch(config=env.conf):
        pass
    assert syncs == [] and wakes == []


def test_batch_keeps_its_messages_when_the_body_raises(
    tmp_path: Path, syncs: list[str], wakes: list[str]
) -> None:
    env = DmaEnv(tmp_path)  # no DEFER: the kept messages are sent, so the runner is woken
    ids: list[str] = []
    with pytest.raises(ZeroDivisionError), api.Batch(config=env.conf) as batch:
        ids.append(batch.submit(b"To: root\n\none\n"))
        ids.append(batch.submit(b"To: root\n\ntwo\n"))
        _ = 1 / 0
    assert sorted(e.message_id for e in env.entries()) == sorted(ids)
    assert syncs == [str(env.spool)] and wakes == [str(env.spool)]
    with pytest.raises(RuntimeError):
        batch.submit(b"To: root\n\nthree\n")
    assert len(env.entries()) == 2


def test_a_refused_message_does_not_end_the_batch(denv: DmaEnv, syncs: list[str]) -> None:
    with api.Batch(config=denv.conf) as batch:
        good = batch.submit(b"To: root\n\none\n")
        with pytest.raises(Fatal) as info:
            batch.submit(b"To: root\n\ntwo\n", recipients=["bad@-x-.example"])
        assert info.value.code == EX_DATAERR
        also = batch.submit(b"To: root\n\nthree\n")
    assert sorted(e.message_id for e in denv.entries()) == sorted([good, also])
    assert batch.message_ids == [good, also]
    assert not [n for n in denv.files() if n.startswith("tmp_")]
    assert len(syncs) == 1


def test_batch_close_without_with(denv: DmaEnv, syncs: list[str]) -> None:
    batch = api.Batch(config=denv.conf)
    batch.submit(b"To: root\n\nx\n")
    batch.close()
    batch.close()
    assert len(syncs) == 1 and len(denv.entries()) == 1


def test_a_failed_sync_is_fatal_and_keeps_the_messages(denv: DmaEnv, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(spooldir: str) -> None:
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(_native, "sync_spool", broken)
    with pytest.raises(Fatal) as info, api.Batch(config=denv.conf) as batch:
        batch.submit(b"To: root\n\nx\n")
    assert info.value.code == 74
    assert len(denv.entries()) == 1


def test_a_process_dying_inside_a_batch_leaves_complete_entries(denv: DmaEnv) -> None:
    """No sync happened, but what `batch.submit` returned is complete in the spool (only a crash of
    the machine before the sync could lose it), and nothing half-written is left."""
    script = textwrap.dedent(
        f"""
        import os, sys
        from dma import api
        with api.Batch(config={str(denv.conf)!r}) as batch:
            for i in range(10):
                print(batch.submit(b"To: root\\nSubject: %d\\n\\nbody\\n" % i), flush=True)
            os._exit(9)
        """
    )
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, timeout=60, check=False)
    assert r.returncode == 9, r.stderr
    ids = r.stdout.decode().split()
    assert len(ids) == 10
    entries = _native.scan_queue(str(denv.spool))
    assert len(entries) == len([n for n in denv.files() if n.startswith("Q")])
    assert sorted(e.message_id for e in entries) == sorted(ids)
    assert not [n for n in denv.files() if n.startswith("tmp_")]
    for e in entries:
        assert e.size == len((denv.spool / f"M{e.id}").read_bytes())


# ---- waking and starting the runner -----------------------------------------------------------


@pytest.fixture
def smarthost() -> Iterator[Smtpd]:
    with Smtpd() as server:
        yield server


def delivering_env(root: Path, server: Smtpd) -> DmaEnv:
    env = DmaEnv(root)
    env.smarthost = f"SMARTHOST 127.0.0.1\nPORT {server.port}"
    env.write_conf()
    return env


def runner_gone(env: DmaEnv) -> bool:
    return not runner_running(config.Config(str(env.conf)))


def test_submit_starts_the_runner_which_delivers(
    tmp_path: Path, smarthost: Smtpd, monkeypatch: pytest.MonkeyPatch
) -> None:
    env = delivering_env(tmp_path, smarthost)
    monkeypatch.chdir(tmp_path)  # a relative config path still names the file for the runner
    msg = EmailMessage()
    msg["To"] = "bob@remote.example"
    msg["Bcc"] = "hidden@remote.example"
    msg["Subject"] = "through the api"
    msg.set_content("hello from a program\n")
    message_id = api.submit(msg, sender="app@src.example", config=env.conf.name)
    assert wait_until(lambda: len(smarthost.handler.messages) == 1), env.q_files()
    (got,) = smarthost.handler.messages
    assert got.mail_from == "app@src.example"
    assert sorted(got.rcpt_tos) == ["bob@remote.example", "hidden@remote.example"]
    assert b"Subject: through the api" in got.content and b"hello from a program" in got.content
    assert f"id {message_id}".encode() in got.content and b"Bcc" not in got.content
    assert wait_until(lambda: env.entries() == [] and runner_gone(env))


def test_batch_starts_one_runner_which_delivers_all(tmp_path: Path, smarthost: Smtpd) -> None:
    env = delivering_env(tmp_path, smarthost)
    with api.Batch(config=env.conf) as batch:
        for i in range(30):
            batch.submit(f"To: r{i}@remote.example\nSubject: {i}\n\nx\n".encode())
    assert wait_until(lambda: len(smarthost.handler.messages) == 30)
    assert sorted(m.rcpt_tos[0] for m in smarthost.handler.messages) == sorted(
        f"r{i}@remote.example" for i in range(30)
    )
    assert wait_until(lambda: env.entries() == [] and runner_gone(env))


def test_a_running_runner_is_woken_not_started(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    env = DmaEnv(tmp_path)
    started: list[str] = []
    monkeypatch.setattr(api, "start_runner", lambda cfg: started.append(cfg.spooldir))
    fd = os.open(env.spool / "lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # "a runner" holds the spool
        api.submit(b"To: root\n\nx\n", config=env.conf)
        assert (env.spool / "wake").exists() and started == []
    finally:
        os.close(fd)
    api.submit(b"To: root\n\ny\n", config=env.conf)
    assert started == [str(env.spool)]


def test_defer_neither_wakes_nor_starts(denv: DmaEnv, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(api, "start_runner", lambda cfg: pytest.fail("started"))
    api.submit(b"To: root\n\nx\n", config=denv.conf)
    assert "wake" not in denv.files() and "lock" not in denv.files()


def test_a_runner_that_cannot_start_does_not_fail_the_submission(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    env = DmaEnv(tmp_path)
    monkeypatch.setattr(api, "python_executable", lambda: str(tmp_path / "no-such-python"))
    message_id = api.submit(b"To: root\n\nx\n", config=env.conf)
    assert [e.message_id for e in env.entries()] == [message_id]


def test_python_m_dma_cli_runs_the_queue(tmp_path: Path, smarthost: Smtpd) -> None:
    """What `start_runner` starts: `python -m dma.cli -C CONF -q`."""
    env = delivering_env(tmp_path, smarthost)
    env.write_conf("DEFER")
    api.submit(b"To: x@remote.example\n\nx\n", config=env.conf)
    env.write_conf()
    r = subprocess.run(
        [sys.executable, "-m", "dma.cli", "-C", str(env.conf), "-q"], timeout=30, check=False, cwd="/"
    )
    assert r.returncode == 0
    assert wait_until(lambda: len(smarthost.handler.messages) == 1)
    assert wait_until(lambda: env.entries() == [] and runner_gone(env))


def test_import_is_light() -> None:
    """`import dma.api` costs what `sendmail` costs: no email, logging, ssl or dns until used."""
    code = "import sys, dma.api; print(sorted(m for m in sys.modules if m.split('.')[0] in {0!r}))"
    heavy = {"email", "logging", "ssl", "dns", "subprocess", "django"}
    out = subprocess.run(
        [sys.executable, "-c", code.format(heavy)], capture_output=True, text=True, check=True
    ).stdout
    assert out.strip() == "[]"
