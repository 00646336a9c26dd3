"""Submission, the hot path: Python decides the envelope and the headers to add; Rust streams the
message (standard input, `dma.api`'s bytes, `-bs` DATA) into the spool and makes it durable before
`sendmail` exits 0. Nothing here imports dnspython, ssl, email or logging."""

from __future__ import annotations

import errno
import posix
import time

from dma import _native
from dma.errors import EX_CANTCREAT, EX_DATAERR, EX_IOERR, EX_NOINPUT, EX_TEMPFAIL, Fatal

from . import message
from .log import Log
from .routing import RecipientResolver, choose

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from dma.config import Config

    from . import Submission

# Errors that a later attempt may not meet: the caller should retry (sysexits EX_TEMPFAIL).
_TEMPORARY_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EAGAIN, errno.ENOMEM, errno.EMFILE, errno.ENFILE)
_EXIT_CODES: dict[int | None, int] = {**dict.fromkeys(_TEMPORARY_ERRNOS, EX_TEMPFAIL), errno.EIO: EX_IOERR}


def os_failure(e: OSError, doing: str) -> Fatal:
    """Map an OS error while spooling onto a sysexits code, with one line of text."""
    text = f"{doing}: {e.strerror or e}" if e.strerror and doing not in e.strerror else str(e.strerror or e)
    return Fatal(_EXIT_CODES.get(e.errno, EX_CANTCREAT), text)


def drops(cfg: Config) -> bool:
    """System mode, and we are not the runner: the private spool is out of reach, so mail is left
    in its drop directory; the runner takes it from there (drop.py)."""
    return not cfg.user_mode and posix.geteuid() != 0


def runner_running(cfg: Config) -> bool:
    """Whether a runner holds the spool: it then sees each message committed (inotify)."""
    try:
        return not _native.Spool(cfg.spooldir).lock()  # a lock we get goes with its Spool, at once
    except OSError:
        return False  # no spool to watch or lock to take: start one, which says what is wrong


def over(cfg: Config, msgs: int, size: int) -> bool:
    return 0 < cfg.max_user_msgs <= msgs or 0 < cfg.max_user_bytes <= size


class Spooling:
    """One message on its way into the spool, whichever way it comes (`sendmail`, `dma.api`,
    `-bs`, a drop the runner picks up, a bounce): `_native.Incoming` with the headers we add.
    Leaving the `with` block removes whatever was not committed."""

    def __init__(
        self, cfg: Config, sender: str, where: str = "", *, durable: bool = True, name: str | None = None
    ) -> None:
        self.cfg = cfg
        self.sender = sender
        self.incoming = _native.Incoming(where or cfg.spooldir, durable, name)
        self.id = self.incoming.id
        self.now = time.time()

    def __enter__(self) -> Spooling:
        return self

    def __exit__(self, *exc: object) -> None:
        self.incoming.abort()

    def receive(
        self,
        source: int | bytes | _native.SmtpStdin | tuple[bytes, str, bool, bytes],
        login: str | None,
        *,
        uid: int | None = None,
        full_name: str | None = None,
        **options: Any,
    ) -> tuple[int, list[str]]:
        """Spool the message with our `Received:` line naming `login` (none for a drop: the runner
        writes it, knowing who really wrote the drop) and the `Date:`, `Message-Id:` and `From:` it
        lacks; `full_name` (`-F`) becomes the display name of that `From:`. Content the spool does not
        take (a NUL, say) raises Fatal(EX_DATAERR)."""
        cfg, sender, date = self.cfg, self.sender, message.rfc822_date(self.now)
        received = ""
        if login is not None:
            received = (
                f"Received: from {login} (uid {posix.getuid() if uid is None else uid})\n"
                f"\t(envelope-from {sender or '<>'})\n"
                f"\tid {self.id}\n"
                f"\tby {cfg.mailname} (dma {_native.__version__} on {cfg.system_hostname});\n"
                f"\t{date}\n"
            )
        mailbox = f"<{sender or 'MAILER-DAEMON@' + cfg.mailname}>"
        if full_name:
            message.check_line_safe("the full name", full_name)
            quoted = full_name.replace("\\", "\\\\").replace('"', '\\"')
            mailbox = f'"{quoted}" {mailbox}'
        add = [
            f"Date: {date}\n",
            f"Message-Id: <{self.id}.{posix.urandom(4).hex()}@{cfg.mailname}>\n",
            f"From: {mailbox}\n",
        ]
        prefix = received.encode("utf-8", "surrogateescape")
        add_if_missing = [line.encode("utf-8", "surrogateescape") for line in add]
        try:
            return self.incoming.receive(source, prefix=prefix, add_if_missing=add_if_missing, **options)
        except ValueError as e:
            raise Fatal(EX_DATAERR, f"bad mail input format: {e}") from None


def submit(
    cfg: Config,
    sub: Submission,
    source: int | bytes | _native.SmtpStdin = 0,
    *,
    durable: bool = True,
    resolver: RecipientResolver | None = None,
) -> str:
    """Spool one message from `source` (standard input by default, left open; bytes; a `-bs` DATA)
    and return its message id. A batch passes `durable=False`, to sync the spool once for all, and
    its `resolver`, to read the aliases file once."""
    sender = message.envelope_sender(sub.sender, cfg)
    rewrite = None
    if sender and (cfg.rewrite_from or cfg.routes):  # the null sender (bounces) stays null
        # REWRITEFROM, or the first matching `from:` route's `rewritefrom=`: the envelope sender,
        # and the `From:` header's address.
        route = choose([r for r in cfg.routes if r.kind == "from"], sender, "")
        rewrite = route.rewrite_from if route is not None and route.rewrite_from else cfg.rewrite_from
        sender = rewrite or sender
    given: list[str] = []
    for arg in sub.recipients:
        message.check_line_safe("a recipient", arg)
        given += message.parse_addresses(arg, "recipient")
    if not given and not sub.from_headers:
        raise Fatal(EX_NOINPUT, "no recipients from command line")
    resolver = resolver or RecipientResolver(cfg)
    # Command-line recipients are checked before the message is read: a typo fails fast.
    recipients = resolver.resolve(given)

    if cfg.user_mode and not posix.access(cfg.spooldir, posix.F_OK):  # ours to create in user mode
        import os

        try:
            os.makedirs(cfg.spooldir, mode=0o700, exist_ok=True)
        except OSError as e:
            raise os_failure(e, f"can not create spool `{cfg.spooldir}'") from e
    dropping = drops(cfg)
    if dropping:  # over its cap (the runner's `usage.<uid>`), EX_TEMPFAIL before anything is written
        try:
            with open(f"{cfg.spooldir}/usage.{posix.getuid()}", "rb") as f:
                msgs, size = (int(n) for n in f.read(64).split())
        except (OSError, ValueError):
            msgs = size = 0
        if over(cfg, msgs, size):
            raise Fatal(
                EX_TEMPFAIL, f"you have {msgs} messages ({size} bytes) waiting, the most allowed; try later"
            )
    where = f"{cfg.spooldir}/incoming" if dropping else cfg.spooldir
    try:
        msg = Spooling(cfg, sender, where, durable=durable)
    except OSError as e:
        raise os_failure(e, f"can not create temp file in `{where}'") from e
    with msg:
        try:
            size, values = msg.receive(
                source,
                None if dropping else message.login_name(),
                full_name=sub.full_name,
                dot_terminates=sub.dot_terminates,
                collect_recipients=sub.from_headers,
                rewrite_from=rewrite,
            )
        except OSError as e:
            raise os_failure(e, "can not read mail") from e
        if sub.from_headers:
            from_headers: list[str] = []
            for value in values:
                from_headers += message.parse_addresses(value, "address in header")
            if not from_headers and not given:
                raise Fatal(EX_NOINPUT, "no recipients from headers")
            recipients = resolver.resolve(given + from_headers)
        try:
            msg.incoming.commit(sender, recipients, sub.dsn, dropping)
        except ValueError as e:
            raise Fatal(EX_DATAERR, str(e)) from e
        except OSError as e:
            raise os_failure(e, "can not create spools") from e
    to = ", ".join(recipients)
    uid = posix.getuid()
    text = f"new mail from user={message.login_name()} uid={uid} envelope_from=<{sender}> to {to}"
    text += " (dropped for the runner)" if dropping else ""
    Log(cfg, sub.tag).event("info", "queued", text, id=msg.id, uid=uid, sender=sender, to=to, size=size)
    return msg.id
