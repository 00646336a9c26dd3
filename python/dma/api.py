"""Submitting mail from a running Python program: no `sendmail` subprocess, no SMTP connection.

    import dma.api
    message_id = dma.api.submit(msg)  # an email.message.EmailMessage, or the message's bytes

    with dma.api.Batch() as batch:  # many messages, made durable together by one syncfs
        for msg in messages:
            batch.submit(msg)

A message goes through the same code as `sendmail -i` (`submit.spool_message`): the same envelope
rules, the same aliases, the same headers added (`Received`, and `Date`, `Message-Id` and `From`
when missing), `Bcc:` removed. Two differences from the command line, both what a program wants:

- a line holding a single `.` is part of the message, as with `sendmail -i`: nothing ends a message
  given as an object;
- without `recipients`, they come from the `To:`, `Cc:` and `Bcc:` headers, as with `sendmail -t`.

Errors raise `dma.errors.Fatal` with `sendmail`'s exit code in `.code` (65 a bad address, 66 no
recipients, 73/74/75 the spool could not be written, 78 a configuration error); whatever raised,
nothing of that message is left in the spool.

After the message is durable, the queue runner is woken, or started when none runs, unless the
configuration says `DEFER`. The runner is started as `python -m dma.cli -C <config> -q` in a new
session (never by forking the caller's process); a failure to wake or start it is not an error of
the submission, which has succeeded by then: the message waits for the next runner (`dma -q`).
"""

from __future__ import annotations

import os
import sys
import threading

from . import _native
from .errors import EX_NOINPUT, Fatal
from .mail.routing import RecipientResolver
from .mail.submit import Submission, os_failure, spool_message

TYPE_CHECKING = False
if TYPE_CHECKING:
    import subprocess
    from collections.abc import Iterable
    from email.message import Message
    from types import TracebackType

    from .config import Config

__all__ = ["Batch", "submit", "wake_runner"]

# Runners started by this process: reaped by the next start, so that none lingers as a zombie.
_started: list[subprocess.Popen[bytes]] = []
_started_lock = threading.Lock()


def submit(
    message: Message | bytes | bytearray | memoryview,
    *,
    sender: str | None = None,
    recipients: str | Iterable[str] | None = None,
    config: Config | str | os.PathLike[str] | None = None,
) -> str:
    """Queue `message` durably and return its message id; then wake or start the queue runner.

    `message`: an `email.message.Message` (`EmailMessage`, or a `MIMEText` and friends) or the
    message's bytes (LF or CRLF line endings). `sender`: the envelope sender, as `sendmail -f`
    takes it (`""` or `"<>"` is the null sender); by default `$EMAIL`, else the login name, at
    `MAILNAME`. `recipients`: one address list (`"a@x, b@y"`) or several; by default the addresses
    in `To:`, `Cc:` and `Bcc:`. `config`: a `dma.config.Config`, or the path of a dma.conf; by
    default `$DMA_CONF`, else /etc/dma/dma.conf.

    Returns once the message is on disk (file and directory synced), as `sendmail` exits 0.
    Raises `dma.errors.Fatal` (see the module docstring). Safe to call from several threads.
    """
    cfg = load_config(config)
    message_id = _spool(cfg, message, sender, recipients, durable=True, resolver=None)
    if not cfg.defer:
        wake_runner(cfg)
    return message_id


class Batch:
    """Many messages queued together: each is written without syncing, and leaving the `with`
    block makes them all durable with ONE `syncfs` of the spool's file system, then wakes (or
    starts) the runner once.

        with dma.api.Batch(config="/etc/dma/dma.conf") as batch:
            for msg in messages:
                batch.submit(msg)
        # every message is durable here

    `submit` takes the arguments of `dma.api.submit` and returns the message id. A message that
    `submit` refuses (it raises `Fatal`) leaves nothing in the spool and does not end the batch.

    **If the body of the `with` raises**, the messages already submitted are KEPT: they are made
    durable and the runner is woken as on a normal exit, then the exception goes on. A message id
    returned by `batch.submit` therefore always means "this message will be sent", whatever
    happens after it in the block: the caller resubmits only what never got an id, and nothing is
    sent twice. Removing them instead could not be made safe: each entry is visible in the spool
    from the moment `submit` returns, so a runner woken by someone else may already be delivering
    it, and a caller that resubmitted a "rolled back" batch would then send those messages twice.

    Before the block ends the messages survive the death of this process (they are complete
    queue entries, delivered by the next runner) but not a crash of the machine. If the final
    sync fails, `Fatal` is raised and the messages stay queued, not known to be durable.

    Without `with`, call `close()` when done. A batch is not thread-safe: use one per thread.
    """

    def __init__(self, config: Config | str | os.PathLike[str] | None = None) -> None:
        self.config = load_config(config)
        self.message_ids: list[str] = []
        self._resolver = RecipientResolver(self.config)
        self._closed = False
        self._unsynced = 0

    def __enter__(self) -> Batch:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        # Kept on an exception too: see the class docstring.
        self.close()

    def submit(
        self,
        message: Message | bytes | bytearray | memoryview,
        *,
        sender: str | None = None,
        recipients: str | Iterable[str] | None = None,
    ) -> str:
        """Queue `message` in this batch (not yet durable); returns its message id."""
        if self._closed:
            raise RuntimeError("this dma.api.Batch is closed")
        message_id = _spool(self.config, message, sender, recipients, durable=False, resolver=self._resolver)
        self.message_ids.append(message_id)
        self._unsynced += 1
        return message_id

    def close(self) -> None:
        """Make every message of the batch durable (one `syncfs`), then wake the runner once."""
        if self._closed:
            return
        self._closed = True
        if not self._unsynced:
            return
        try:
            _native.sync_spool(self.config.spooldir)
        except OSError as e:
            raise os_failure(e, f"can not sync the spool `{self.config.spooldir}'") from e
        self._unsynced = 0
        if not self.config.defer:
            wake_runner(self.config)

    def __len__(self) -> int:
        return len(self.message_ids)


def load_config(config: Config | str | os.PathLike[str] | None) -> Config:
    """A `Config` as given, or read from a path, or the default one (`$DMA_CONF`, /etc/dma/dma.conf)."""
    from .config import Config, load

    if isinstance(config, Config):
        return config
    return load(os.fspath(config) if config is not None else None)


def message_bytes(message: Message | bytes | bytearray | memoryview) -> bytes:
    """The message as bytes with LF line endings (the spool writer normalises CRLF anyway).

    A `Message` is written with its own policy (so a `compat32` MIME object keeps its folding),
    without `>From` quoting, which is the mailbox writer's business.
    """
    if isinstance(message, bytes):
        return message
    if isinstance(message, (bytearray, memoryview)):
        return bytes(message)
    from email.generator import BytesGenerator
    from email.message import Message
    from io import BytesIO

    if not isinstance(message, Message):
        raise TypeError(f"a message must be an email.message.Message or bytes, not {type(message).__name__}")
    out = BytesIO()
    BytesGenerator(out, mangle_from_=False, policy=message.policy.clone(linesep="\n")).flatten(message)
    return out.getvalue()


def _spool(
    cfg: Config,
    message: Message | bytes | bytearray | memoryview,
    sender: str | None,
    recipients: str | Iterable[str] | None,
    *,
    durable: bool,
    resolver: RecipientResolver | None,
) -> str:
    data = message_bytes(message)
    if recipients is None:
        given: list[str] = []
    elif isinstance(recipients, str):
        given = [recipients]
    else:
        given = list(recipients)
        if not all(isinstance(r, str) for r in given):
            raise TypeError("recipients must be strings")
    if recipients is not None and not any(r.strip() for r in given):
        raise Fatal(EX_NOINPUT, "no recipients given")
    sub = Submission(given, sender, dot_terminates=False, from_headers=recipients is None)
    message_id, _ = spool_message(cfg, sub, data, durable=durable, resolver=resolver)
    return message_id


def runner_running(cfg: Config) -> bool:
    """Whether a queue runner holds this spool's lock (the test `sendmail` makes)."""
    import fcntl

    try:
        fd = os.open(os.path.join(cfg.spooldir, "lock"), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)  # closing drops our lock, if we got it
    return False


def wake_runner(cfg: Config) -> None:
    """Have the queue runner look at the spool now: wake the running one, or start one.

    Never raises: the messages are queued whatever happens here, and the next runner sends them.
    """
    from .mail.queue import wake

    try:
        if runner_running(cfg):
            wake(cfg)
        else:
            start_runner(cfg)
    except OSError:
        pass


def start_runner(cfg: Config) -> None:
    """Start `dma -q` for `cfg` as a detached process (it daemonizes itself and takes the lock).

    `subprocess` with `start_new_session`, not `os.fork()`: forking someone else's program (its
    threads, locks and open connections) is not ours to do. The short-lived child is reaped by the
    next call, or when this process exits.
    """
    import subprocess

    with _started_lock:
        _started[:] = [proc for proc in _started if proc.poll() is None]
    # The child finds this very package, wherever the caller's sys.path found it.
    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (here, env.get("PYTHONPATH")) if p)
    devnull = subprocess.DEVNULL
    proc = subprocess.Popen(
        [python_executable(), "-m", "dma.cli", "-C", os.path.abspath(cfg.path), "-q"],
        stdin=devnull,
        stdout=devnull,
        stderr=devnull,
        close_fds=True,
        start_new_session=True,
        cwd="/",
        env=env,
    )
    with _started_lock:
        _started.append(proc)


def python_executable() -> str:
    """This interpreter's program: `sys.executable`, unless an embedding server (uWSGI,
    mod_wsgi) set it to itself; then the `python3` of this installation."""
    exe = sys.executable
    if exe and os.path.basename(exe).startswith("python"):
        return exe
    for name in ("python3", "python"):
        candidate = os.path.join(sys.exec_prefix, "bin", name)
        if os.access(candidate, os.X_OK):
            return candidate
    return exe or "python3"
