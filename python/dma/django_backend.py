"""A Django email backend that queues mail straight into dma's spool: no SMTP connection from the
web process, no `sendmail` subprocess.

    # settings.py
    EMAIL_BACKEND = "dma.django_backend.EmailBackend"
    DMA_CONFIG = "/etc/dma/dma.conf"  # optional: the default is $DMA_CONF, else /etc/dma/dma.conf

Each call of `send_messages` (`send_mail`, `send_mass_mail`, `EmailMessage.send`, ...) queues its
messages through one `dma.api.Batch`: one `syncfs` makes them all durable, then the queue runner is
woken once (unless the configuration says `DEFER`). The envelope is Django's: `from_email` is the
envelope sender and `recipients()` (To, Cc and Bcc) the envelope recipients; the message has no
`Bcc:` header.

Named `django_backend`, not `django`: a module `dma.django` would be in the way of the real `django`
for any code that runs with `python/dma` as its working directory or on its path.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from django.conf import settings  # type: ignore[import-untyped, import-not-found, unused-ignore]
from django.core.mail.backends.base import (  # type: ignore[import-untyped, import-not-found, unused-ignore]
    BaseEmailBackend,
)

from .api import Batch
from .errors import Fatal

TYPE_CHECKING = False
if TYPE_CHECKING:
    import os

    from .config import Config

__all__ = ["EmailBackend"]


class EmailBackend(BaseEmailBackend):  # type: ignore[misc, unused-ignore]
    """`send_messages` queues every message with a recipient and returns how many were queued.

    `config` (a `dma.config.Config` or a path) overrides the `DMA_CONFIG` setting. With
    `fail_silently`, a message dma refuses (a bad address, a spool that cannot be written) is
    skipped and not counted; without it, the error (`dma.errors.Fatal`) is raised, and the
    messages queued before it in the same call stay queued (see `dma.api.Batch`).
    """

    def __init__(
        self,
        fail_silently: bool = False,
        *,
        config: Config | str | os.PathLike[str] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(fail_silently=fail_silently, **kwargs)
        self.config = config if config is not None else getattr(settings, "DMA_CONFIG", None)

    def send_messages(self, email_messages: Sequence[Any]) -> int:
        if not email_messages:
            return 0
        sent = 0
        try:
            with Batch(self.config) as batch:
                for email_message in email_messages:
                    recipients = email_message.recipients()
                    if not recipients:
                        continue
                    try:
                        batch.submit(
                            email_message.message(),
                            sender=email_message.from_email,
                            recipients=recipients,
                        )
                    except (Fatal, OSError, ValueError):
                        if not self.fail_silently:
                            raise
                        continue
                    sent += 1
        except (Fatal, OSError, ValueError):
            # A configuration that cannot be read, or a final sync that failed: what was queued
            # stays queued (and is counted); the rest is not.
            if not self.fail_silently:
                raise
        return sent
