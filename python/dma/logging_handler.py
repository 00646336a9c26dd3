"""`logging.handlers.SMTPHandler` without the SMTP connection: each record is one message,
queued durably by `dma.api.submit` before `emit` returns; errors go to `handleError`.

    handler = MailHandler("app@example.org", ["ops@example.org"], "app error")

or in `logging.config.dictConfig` as {"class": "dma.logging_handler.MailHandler", "fromaddr": ...}.
"""

from __future__ import annotations

import logging  # noqa: TID253 - this module is a logging handler: whoever imports it has logging
from collections.abc import Iterable

from .api import submit

TYPE_CHECKING = False
if TYPE_CHECKING:
    from .api import ConfigLike

__all__ = ["MailHandler"]


class MailHandler(logging.Handler):
    """Mail each record to `toaddrs` from `fromaddr` (also the envelope sender) with `subject`.
    `config`: as `dma.api.submit` takes it, read at each record (as SMTPHandler connects for each)."""

    def __init__(
        self,
        fromaddr: str,
        toaddrs: str | Iterable[str],
        subject: str,
        *,
        config: ConfigLike = None,
        level: int | str = logging.NOTSET,
    ) -> None:
        super().__init__(level)
        self.fromaddr = fromaddr
        self.toaddrs = [toaddrs] if isinstance(toaddrs, str) else list(toaddrs)
        self.subject = subject
        self.config = config

    def getSubject(self, record: logging.LogRecord) -> str:
        """The subject for `record`; override to vary it (as with SMTPHandler)."""
        return self.subject

    def emit(self, record: logging.LogRecord) -> None:
        try:
            from email.message import EmailMessage

            msg = EmailMessage()
            msg["From"] = self.fromaddr
            msg["To"] = ", ".join(self.toaddrs)
            msg["Subject"] = self.getSubject(record)
            msg.set_content(self.format(record))
            submit(msg, sender=self.fromaddr, recipients=self.toaddrs, config=self.config)
        except RecursionError:  # as the standard handlers do: never swallowed
            raise
        except Exception:
            self.handleError(record)
