"""Submitting mail from a running Python program: no `sendmail` subprocess, no SMTP connection.

    import dma.api
    message_id = dma.api.submit(msg)  # an email.message.EmailMessage, or the message's bytes

    with dma.api.Batch() as batch:  # many messages, made durable together by one syncfs
        for msg in messages:
            batch.submit(msg)

A message is handled as by `sendmail -i`, its recipients from its headers (`-t`) unless given.
Errors raise `dma.errors.Fatal` with `sendmail`'s exit code and leave nothing of that message in
the spool. Once it is durable the runner is woken, or started, unless the configuration says
`DEFER`; failing that is not an error: the message waits for the next runner.
"""

from __future__ import annotations

import os
import sys
import threading

from . import _native
from .config import Config
from .errors import EX_NOINPUT, Fatal
from .mail import Submission
from .mail import submit as submission
from .mail.routing import RecipientResolver

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Iterable
    from email.message import Message
    from typing import Union

    # What every entry point takes as `config`: a `Config`, a dma.conf's path, or None (the default).
    ConfigLike = Union[Config, str, os.PathLike[str], None]

__all__ = ["Batch", "submit", "wake_runner"]


def submit(
    message: Message | bytes | bytearray | memoryview,
    *,
    sender: str | None = None,
    recipients: str | Iterable[str] | None = None,
    config: ConfigLike = None,
) -> str:
    """Queue `message` (an `email.message.Message`, or bytes) durably, as when `sendmail` exits 0,
    and return its message id; then wake or start the queue runner. Thread-safe.

    `sender` as `sendmail -f` takes it (`""`: null; default `$EMAIL`, else the login name);
    `recipients`: address lists, by default the message's; `config`: a `dma.config.Config` or a
    dma.conf's path (default `$DMA_CONF`, else /etc/dma/dma.conf).
    """
    with Batch(config, durable=True) as batch:
        return batch.submit(message, sender=sender, recipients=recipients)


class Batch:
    """Many messages written without syncing, made durable by ONE `syncfs` when the `with` block
    (or `close()`) ends, which then wakes the runner once. Not thread-safe: one batch per thread.

    A refused message leaves nothing and does not end the batch. If the block raises, what was
    submitted is KEPT (synced, the runner woken): it is in the spool as soon as `submit` returns
    and a runner may already be sending it, so a rollback could send mail twice.
    """

    def __init__(self, config: ConfigLike = None, *, durable: bool = False) -> None:
        self.config = config if isinstance(config, Config) else Config(config)
        self.durable = durable  # each message synced on its own (`submit`): no syncfs at the end
        self.message_ids: list[str] = []
        self._resolver = RecipientResolver(self.config)
        self._closed = False

    def __enter__(self) -> Batch:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()  # on an exception too: see the class docstring

    def submit(
        self,
        message: Message | bytes | bytearray | memoryview,
        *,
        sender: str | None = None,
        recipients: str | Iterable[str] | None = None,
    ) -> str:
        """Queue `message` as `dma.api.submit` does, in this batch; returns its message id."""
        if self._closed:
            raise RuntimeError("this dma.api.Batch is closed")
        if not isinstance(message, (bytes, bytearray, memoryview)) and not hasattr(message, "as_bytes"):
            raise TypeError(
                f"a message must be an email.message.Message or bytes, not {type(message).__name__}"
            )
        # A Message's bytes are its `as_bytes()` without arguments (Django's messages override it with
        # other ones): no `>From` quoting; the CRLF of a policy such as `SMTP` becomes LF, as on stdin.
        data = bytes(message)
        if not data:  # `sendmail` queues an empty standard input, as C dma does; here it is a mistake
            raise Fatal(EX_NOINPUT, "no message given, nothing queued")
        given = [recipients] if isinstance(recipients, str) else list(recipients or ())
        if not all(isinstance(r, str) for r in given):
            raise TypeError("recipients must be strings")
        if recipients is not None and not any(r.strip() for r in given):
            raise Fatal(EX_NOINPUT, "no recipients given")
        sub = Submission(given, sender, dot_terminates=False, from_headers=recipients is None)
        message_id = submission.submit(self.config, sub, data, durable=self.durable, resolver=self._resolver)
        self.message_ids.append(message_id)
        return message_id

    def close(self) -> None:
        """Make every message of the batch durable (one `syncfs`), then wake the runner once."""
        if self._closed:
            return
        self._closed = True
        if not self.message_ids:
            return
        if not self.durable:
            try:
                _native.sync_spool(self.config.spooldir)
            except OSError as e:
                raise submission.os_failure(e, f"can not sync the spool `{self.config.spooldir}'") from e
        if not self.config.defer:
            wake_runner(self.config)

    def __len__(self) -> int:
        return len(self.message_ids)


def wake_runner(cfg: Config) -> None:
    """Wake the running queue runner, or start one. Never raises: the mail is queued anyway."""
    from .mail.queue import wake

    try:
        if submission.runner_running(cfg):
            wake(cfg)
        else:
            start_runner(cfg)
    except OSError:
        pass


def start_runner(cfg: Config) -> None:
    """Start `dma -q` for `cfg` in a new session. Not `os.fork()`: forking someone else's program
    (its threads, locks and connections) is not ours to do."""
    import subprocess

    # The child finds this very package, wherever the caller's sys.path found it.
    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    path = os.pathsep.join(p for p in (here, os.environ.get("PYTHONPATH")) if p)
    proc = subprocess.Popen(
        [python_executable(), "-m", "dma.cli", "-C", os.path.abspath(cfg.path), "-q"],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
        cwd="/",
        env={**os.environ, "PYTHONPATH": path},
    )
    # It exits as soon as its daemon is started: reaped by a thread, it lingers as no zombie.
    threading.Thread(target=proc.wait, daemon=True).start()


def python_executable() -> str:
    """`sys.executable`, unless an embedding server (uWSGI, mod_wsgi) set it to itself."""
    exe = sys.executable
    if exe and os.path.basename(exe).startswith("python"):
        return exe
    import shutil

    bindir = os.path.join(sys.exec_prefix, "bin")
    return shutil.which("python3", path=bindir) or shutil.which("python", path=bindir) or exe or "python3"
