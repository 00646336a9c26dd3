"""Where each recipient goes: local mailbox (after aliases) or a remote address.

At submission this turns the recipients given on the command line (and by `-t`) into the envelope
recipients of the queue entries: bare local user names and remote addresses. The aliases file is
only read when a recipient is local.
"""

from __future__ import annotations

from .local import is_local_user

TYPE_CHECKING = False
if TYPE_CHECKING:
    from .aliases import Aliases
    from .config import Config


def is_local(recipient: str) -> bool:
    """A queue entry's recipient is local when no domain is left (as C dma)."""
    return "@" not in recipient


class RecipientResolver:
    """Expands recipients into envelope recipients, reading the aliases file at most once."""

    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg
        self._aliases: Aliases | None = None

    def aliases(self) -> Aliases:
        if self._aliases is None:
            from .aliases import parse

            self._aliases = parse(self.cfg.aliases)
        return self._aliases

    def resolve(self, recipients: list[str]) -> list[str]:
        """Envelope recipients for `recipients` (command line, `-t` or a bounce), deduplicated."""
        from .aliases import strip_local_domain

        result: list[str] = []
        seen: set[str] = set()
        for given in recipients:
            address = strip_local_domain(given, self.cfg.mailname)
            if "@" in address:
                expanded = [address]
            elif self.cfg.nullclient:
                # Everything goes to the smarthost; a bare name is qualified (C dma sent `RCPT TO:<root>`).
                expanded = [f"{address}@{self.cfg.mailname}"]
            else:
                expanded = self.aliases().expand(address, is_local_user=is_local_user, wildcard=True)
            for rcpt in expanded:
                if rcpt not in seen:
                    seen.add(rcpt)
                    result.append(rcpt)
        return result

