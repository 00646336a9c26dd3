"""`ROUTE` lines of dma.conf: a different relay, port, TLS mode and login per recipient domain or
per envelope sender (msmtp's accounts, Postfix's transport and sender-dependent relay maps, in
C dma's one-line style). C dma configs have none; then SMARTHOST or MX delivery applies to all.

    ROUTE to:example.org       smtp.example.org:587 starttls verify
    ROUTE to:*.corp.example    mx
    ROUTE from:alice@gmail.com smtp.gmail.com:465 tls verify auth=alice@gmail.com
    ROUTE from:@example.net    relay.example.net

The first matching line wins. The target is `host[:port]` (port 25 unless given) or `mx` (deliver
to the recipient domain's MX hosts, e.g. to keep one domain away from the smarthost). Options:
`tls` (implicit TLS), `starttls`, `opportunistic`, `plain`; `verify`, `noverify`;
`fingerprint=<sha256 hex>`; `auth=<login>` (which auth.conf line for this host). What a route
does not say comes from the global keys (SECURETRANSFER, STARTTLS, VERIFYCERT, FINGERPRINT).
"""

from __future__ import annotations

from .errors import ConfigError

TLS_MODES = {"tls": "implicit", "starttls": "starttls", "opportunistic": "opportunistic", "plain": "none"}


class Route:
    __slots__ = ("fingerprint", "host", "kind", "line", "login", "pattern", "port", "tls", "verify")

    def __init__(self, kind: str, pattern: str, host: str, port: int, line: int) -> None:
        self.kind = kind  # "to" (recipient domain) or "from" (envelope sender)
        self.pattern = pattern
        self.host = host  # "mx" for MX delivery
        self.port = port
        self.line = line
        self.tls: str | None = None
        self.verify: bool | None = None
        self.fingerprint: bytes | None = None
        self.login: str | None = None

    def matches(self, sender: str, recipient: str) -> bool:
        if self.kind == "from":
            sender = sender.lower()
            return sender == self.pattern or (self.pattern.startswith("@") and sender.endswith(self.pattern))
        domain = recipient.rpartition("@")[2].lower()
        if self.pattern.startswith("*."):
            return domain.endswith(self.pattern[1:])
        return domain == self.pattern

    def __repr__(self) -> str:
        return f"<Route line {self.line}: {self.kind}:{self.pattern} -> {self.host}:{self.port}>"


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
    target = words[1]
    host, port = target, 25
    if target != "mx":
        if target.startswith("["):
            inner, _, rest = target[1:].partition("]")
            host, port_text = inner, rest.removeprefix(":")
        else:
            host, _, port_text = target.rpartition(":") if target.count(":") == 1 else (target, "", "")
        if port_text:
            if not port_text.isdigit() or not 0 < int(port_text) < 65536:
                raise error(f"`{target}': bad port")
            port = int(port_text)
        if not host:
            raise error(f"`{target}' is not host[:port] or mx")
    route = Route(kind, pattern.lower(), host, port, lineno)
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
        else:
            raise error(f"unknown option `{option}'")
    return route


def choose(routes: list[Route], sender: str, recipient: str) -> Route | None:
    """The first route that matches, or None for the global SMARTHOST or MX delivery."""
    for route in routes:
        if route.matches(sender, recipient):
            return route
    return None
