"""`ROUTE` lines of dma.conf (docs/configuration.md): a different relay, port, TLS mode and login
per recipient domain or envelope sender. The first matching line wins; what a route does not say
comes from the global keys."""

from __future__ import annotations

TLS_MODES = {"tls": "implicit", "starttls": "starttls", "opportunistic": "opportunistic", "plain": "none"}


def split_hosts(text: str, default_port: int) -> list[tuple[str, int]]:
    """`host[:port]` separated by blanks or commas (SMARTHOST's and a ROUTE's relays, tried in turn):
    `[v6]:port` or a bare IPv6 address; `default_port` where none is given. Raises ValueError."""
    hosts: list[tuple[str, int]] = []
    for word in text.replace(",", " ").split():
        if word.startswith("["):
            host, _, rest = word[1:].partition("]")
            port_text = rest[1:] if rest.startswith(":") else rest
        else:
            host, _, port_text = word.rpartition(":") if word.count(":") == 1 else (word, "", "")
        if port_text and (not port_text.isdigit() or not 0 < int(port_text) < 65536):
            raise ValueError(f"`{word}': bad port")
        if not host or host.isdigit():
            raise ValueError(f"`{word}' is not host[:port] (a port goes after a colon or in PORT)")
        hosts.append((host, int(port_text) if port_text else default_port))
    return hosts


class Route:
    """One `ROUTE <selector> <target> [option...]` line: `kind` "to" (recipient domain) or "from"
    (envelope sender), `hosts` the relays to try in turn (none for MX delivery); an option the line
    does not give is None. A mistake raises ValueError."""

    tls: str | None = None
    verify: bool | None = None
    fingerprint: bytes | None = None
    login: str | None = None
    rewrite_from: str | None = None

    def __init__(self, value: str, line: int) -> None:
        words = value.split()
        if len(words) < 2:
            raise ValueError("expected `ROUTE to:<domain>|from:<sender> <host[:port]>|mx [option ...]'")
        kind, _, pattern = words[0].partition(":")
        if kind not in ("to", "from") or not pattern:  # without a colon, pattern is empty
            raise ValueError(f"`{words[0]}' is not to:<domain> or from:<address>")
        self.kind, self.pattern, self.line = kind, pattern.lower(), line
        self.hosts = [] if words[1] == "mx" else split_hosts(words[1], 25)
        if words[1] != "mx" and not self.hosts:
            raise ValueError(f"`{words[1]}' is not host[:port] or mx")
        for option in words[2:]:
            name, eq, arg = option.partition("=")
            if name in TLS_MODES and not eq:
                self.tls = TLS_MODES[name]
            elif name in ("verify", "noverify") and not eq:
                self.verify = name == "verify"
            elif name == "fingerprint" and arg:
                try:
                    self.fingerprint = bytes.fromhex(arg.replace(":", ""))
                except ValueError:
                    raise ValueError(f"`{option}': not hexadecimal") from None
                if len(self.fingerprint) != 32:
                    raise ValueError(f"`{option}': a SHA-256 fingerprint is 64 hex digits")
            elif name == "auth" and arg:
                self.login = arg
            elif name == "rewritefrom" and arg:
                # Applied when the message is queued, where only the sender is known.
                if kind != "from" or arg.count("@") != 1:
                    raise ValueError(f"`{option}': rewritefrom=<address> is for from: routes")
                self.rewrite_from = arg
            else:
                raise ValueError(f"unknown option `{option}'")

    def matches(self, sender: str, recipient: str) -> bool:
        if self.kind == "from":
            sender = sender.lower()
            if self.rewrite_from is not None and sender == self.rewrite_from.lower():
                return True  # a sender this route rewrote when the message was queued
            return sender == self.pattern or (self.pattern.startswith("@") and sender.endswith(self.pattern))
        domain = recipient.rpartition("@")[2].lower()
        if self.pattern.startswith("*."):
            return domain.endswith(self.pattern[1:])
        return domain == self.pattern


def choose(routes: list[Route], sender: str, recipient: str) -> Route | None:
    """The first route that matches, or None for the global SMARTHOST or MX delivery."""
    return next((route for route in routes if route.matches(sender, recipient)), None)
