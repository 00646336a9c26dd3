"""`ROUTE` lines of dma.conf: a different relay, port, TLS mode and login per recipient domain or
per envelope sender (msmtp's accounts, Postfix's transport and sender-dependent relay maps, in
C dma's one-line style). C dma configs have none; then SMARTHOST or MX delivery applies to all.

    ROUTE to:example.org       smtp.example.org:587 starttls verify
    ROUTE to:*.corp.example    mx
    ROUTE from:alice@gmail.com smtp.gmail.com:465 tls verify auth=alice@gmail.com
    ROUTE from:@example.net    relay.example.net

The first matching line wins. The target is one or more `host[:port]` joined by commas (port 25
unless given), tried in turn while one fails temporarily, or `mx` (deliver to the recipient domain's MX hosts,
e.g. to keep one domain away from the smarthost). Options:
`tls` (implicit TLS), `starttls`, `opportunistic`, `plain`; `verify`, `noverify`;
`fingerprint=<sha256 hex>`; `auth=<login>` (which auth.conf line for this host); on a `from:`
route, `rewritefrom=<address>` (REWRITEFROM for the senders it matches). What a route
does not say comes from the global keys (SECURETRANSFER, STARTTLS, VERIFYCERT, FINGERPRINT).
"""

from __future__ import annotations

from dma.errors import ConfigError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from dma.config import Config

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
    __slots__ = ("fingerprint", "hosts", "kind", "line", "login", "pattern", "rewrite_from", "tls", "verify")

    def __init__(self, kind: str, pattern: str, hosts: list[tuple[str, int]], line: int) -> None:
        self.kind = kind  # "to" (recipient domain) or "from" (envelope sender)
        self.pattern = pattern
        self.hosts = hosts  # the relays to try in turn; none for MX delivery
        self.line = line
        self.tls: str | None = None
        self.verify: bool | None = None
        self.fingerprint: bytes | None = None
        self.login: str | None = None
        self.rewrite_from: str | None = None

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

    def __repr__(self) -> str:
        return f"<Route line {self.line}: {self.kind}:{self.pattern} -> {self.hosts or 'mx'}>"


def parse_route(path: str, lineno: int, value: str) -> Route:
    """One `ROUTE <selector> <target> [option...]` value; ConfigError names file, line and key."""

    def error(message: str) -> ConfigError:
        return ConfigError(path, lineno, "ROUTE", message)

    words = value.split()
    if len(words) < 2:
        raise error("expected `ROUTE to:<domain>|from:<sender> <host[:port]>|mx [option ...]'")
    kind, colon, pattern = words[0].partition(":")
    if not colon or kind not in ("to", "from") or not pattern:
        raise error(f"`{words[0]}' is not to:<domain> or from:<address>")
    hosts: list[tuple[str, int]] = []
    if words[1] != "mx":
        try:
            hosts = split_hosts(words[1], 25)
        except ValueError as e:
            raise error(str(e)) from None
        if not hosts:
            raise error(f"`{words[1]}' is not host[:port] or mx")
    route = Route(kind, pattern.lower(), hosts, lineno)
    for option in words[2:]:
        name, eq, arg = option.partition("=")
        if name in TLS_MODES and not eq:
            route.tls = TLS_MODES[name]
        elif name in ("verify", "noverify") and not eq:
            route.verify = name == "verify"
        elif name == "fingerprint" and arg:
            digits = arg.replace(":", "")
            try:
                route.fingerprint = bytes.fromhex(digits)
            except ValueError:
                raise error(f"`{option}': not hexadecimal") from None
            if len(route.fingerprint) != 32:
                raise error(f"`{option}': a SHA-256 fingerprint is 64 hex digits")
        elif name == "auth" and arg:
            route.login = arg
        elif name == "rewritefrom" and arg:
            # Applied when the message is queued, where only the sender is known.
            if kind != "from" or arg.count("@") != 1:
                raise error(f"`{option}': rewritefrom=<address> is for from: routes")
            route.rewrite_from = arg
        else:
            raise error(f"unknown option `{option}'")
    return route


def rewritten_sender(cfg: Config, sender: str) -> str | None:
    """REWRITEFROM, or the `rewritefrom=` of the first `from:` route for `sender`: the address that
    becomes the envelope sender and the `From:` header's. The null sender (bounces) stays null."""
    if not sender:
        return None
    route = choose([r for r in cfg.routes if r.kind == "from"], sender, "")
    return route.rewrite_from if route is not None and route.rewrite_from else cfg.rewrite_from


def choose(routes: list[Route], sender: str, recipient: str) -> Route | None:
    """The first route that matches, or None for the global SMARTHOST or MX delivery."""
    for route in routes:
        if route.matches(sender, recipient):
            return route
    return None
