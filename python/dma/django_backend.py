"""A Django email backend that queues mail straight into dma's spool, one `dma.api.Batch` per
`send_messages`, with Django's envelope (`from_email`; To, Cc and Bcc). Not named `dma.django`,
which would hide the real `django` from code run with `python/dma` on its path.

    EMAIL_BACKEND = "dma.django_backend.EmailBackend"
    DMA_CONFIG = "/etc/dma/dma.conf"  # optional: the default is $DMA_CONF, else /etc/dma/dma.conf
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import suppress
from typing import Any

from django.conf import settings  # type: ignore[import-untyped, import-not-found, unused-ignore]
from django.core.mail.backends.base import (  # type: ignore[import-untyped, import-not-found, unused-ignore]
    BaseEmailBackend,
)

from .api import Batch
from .errors import Fatal

TYPE_CHECKING = False
if TYPE_CHECKING:
    from .api import ConfigLike

__all__ = ["EmailBackend"]


class EmailBackend(BaseEmailBackend):  # type: ignore[misc, unused-ignore]
    """`send_messages` queues every message with a recipient and returns how many it queued; one
    that dma refuses raises `Fatal` (those before it stay queued), or is skipped with `fail_silently`.
    `config` (a `dma.config.Config` or a path) overrides the `DMA_CONFIG` setting."""

    def __init__(self, fail_silently: bool = False, *, config: ConfigLike = None, **kwargs: Any) -> None:
        super().__init__(fail_silently=fail_silently, **kwargs)
        self.config = config if config is not None else getattr(settings, "DMA_CONFIG", None)

    def send_messages(self, email_messages: Sequence[Any]) -> int:
        if not email_messages:
            return 0
        # With `fail_silently`, a message dma refuses is skipped; a configuration that cannot be read,
        # or a final sync that failed, ends the batch: what was queued stays queued (and counted).
        ignored = (Fatal, OSError, ValueError) if self.fail_silently else ()
        sent = 0
        with suppress(*ignored), Batch(self.config) as batch:
            for message in email_messages:
                recipients = message.recipients()
                if recipients:
                    with suppress(*ignored):
                        batch.submit(message.message(), sender=message.from_email, recipients=recipients)
                        sent += 1
        return sent
