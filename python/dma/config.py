"""dma.conf, in C dma's format (docs/configuration.md). auth.conf is read only when delivery needs
a password, so an unreadable one cannot break `sendmail` or `mailq` (as it does in C dma).
On the submission hot path: imports `posix`, not `os` (a seventh of the interpreter's start-up)."""

from __future__ import annotations

import posix
import pwd

from .errors import ConfigError, read_config

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from os import PathLike

    from .mail.authconf import AuthTable

DEFAULT_CONF = "/etc/dma/dma.conf"
SYSTEM_SPOOL = "/var/spool/dma"

# Characters allowed in a host name taken from the system or from a MAILNAME file (6.4).
_HOSTCHARS = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_.-"
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30}


class Config:
    """The settings of one dma.conf, with defaults filled in. Attributes are named after the keys."""

    # C dma keys
    smarthost: str | None = None
    port: int = 25
    aliases: str = "/etc/aliases"
    spooldir: str = SYSTEM_SPOOL  # in user mode the defaults are under `state_dir()`
    mboxdir: str = "/var/mail"
    authpath: str | None = None
    certfile: str | None = None
    masquerade_user: str | None = None
    masquerade_host: str | None = None
    fingerprint: bytes | None = None
    securetransfer: bool = False
    starttls: bool = False
    opportunistic_tls: bool = False
    verifycert: bool = False
    insecure: bool = False
    defer: bool = False
    fullbounce: bool = False
    nullclient: bool = False
    # our additions
    maildir: str | None = None
    cafile: str | None = None
    retry_min: int = 300
    retry_max: int = 10800
    max_queue_time: int = 432000
    max_user_msgs: int = 1000  # system mode: what one user may hold in the drop directory and queue
    max_user_bytes: int = 1 << 30
    concurrency: int = 8
    host_concurrency: int = 2
    connect_timeout: float = 30.0
    timeout: float = 300.0
    linger: float = 2.0
    xoauth2_command: list[str] | None = None
    helo_name: str | None = None
    logfile: str | None = None
    rewrite_from: str | None = None

    def __init__(self, path: str | PathLike[str] | None = None, *, user_mode: bool | None = None) -> None:
        """Read dma.conf: `path` (`-C FILE`), else $DMA_CONF, else /etc/dma/dma.conf; a missing file
        gives all defaults. `user_mode` overrides the mode taken from the effective uid."""
        self.path = path = posix.fspath(path or getenv("DMA_CONF") or DEFAULT_CONF)
        self.system_hostname = self.mailname = sanitize_hostname(posix.uname().nodename)
        self.key_lines: dict[str, int] = {}
        self.dns_servers: list[tuple[str, int]] = []
        self.routes: list[Route] = []
        self._auth: AuthTable | None = None
        text = read_config(path, "open config")
        self.file_exists = text is not None
        lines = self.key_lines
        for lineno, raw in enumerate((text or "").split("\n"), 1):
            line = raw.partition("#")[0].rstrip("\r")  # rstrip: CRLF files
            if not line or line[0] in " \t":
                # C dma: a line starting with whitespace has an empty keyword and is ignored.
                continue
            keyword = line.partition(" ")[0].partition("\t")[0]
            # Fix: C dma keeps the blanks around the value (`SMARTHOST x # c` gave "x ").
            value = line[len(keyword) + 1 :].strip(" \t\r\v\f")
            if keyword not in _KEYS:
                if not keyword.isprintable():
                    keyword = ascii(keyword)[1:-1]
                hint = _HINTS.get(keyword, "")
                if keyword.upper() in _KEYS:
                    hint = f" (keywords are case-sensitive: {keyword.upper()})"
                raise ConfigError(path, lineno, keyword, f"unknown keyword{hint}")
            try:
                self._apply(keyword, value, lineno)
            except ValueError as e:
                raise ConfigError(path, lineno, keyword, str(e)) from None

        if self.nullclient and self.smarthost is None:
            raise ConfigError(path, lines["NULLCLIENT"], "NULLCLIENT", "NULLCLIENT requires SMARTHOST")
        if self.retry_min > self.retry_max:
            key = "RETRY_MIN" if "RETRY_MIN" in lines else "RETRY_MAX"
            message = f"RETRY_MIN ({self.retry_min}s) is larger than RETRY_MAX ({self.retry_max}s)"
            raise ConfigError(path, lines[key], key, message)
        if self.mailname.startswith("/"):  # a MAILNAME file: its first line, else the system's name
            try:
                with open(self.mailname, "rb") as f:
                    name = sanitize_hostname(f.readline(4096).decode("ascii", "replace"))
            except OSError:
                name = "unknown-hostname"
            self.mailname = self.system_hostname if name == "unknown-hostname" else name
        if user_mode is None:
            # Not root and no system install (nor a SPOOLDIR set up as one): the user's own state.
            user_mode = posix.geteuid() != 0 and not any(map(_is_system_spool, {SYSTEM_SPOOL, self.spooldir}))
        self.user_mode = user_mode
        if user_mode and "SPOOLDIR" not in lines:
            self.spooldir = f"{state_dir()}/spool"
        if user_mode and "MBOXDIR" not in lines:
            self.mboxdir = f"{state_dir()}/mail"

    def _apply(self, keyword: str, value: str, lineno: int) -> None:
        """Set `keyword`'s attribute from `value`; a mistake raises ValueError."""
        parse, what = _KEYS[keyword]
        if not value.isprintable() and any((ch < " " and ch != "\t") or ch == "\x7f" for ch in value):
            raise ValueError("control character in value")
        self.key_lines[keyword] = lineno
        if (parse is None) == bool(value):  # a flag has no value, every other key has one
            raise ValueError(f"takes no value (got `{value}')" if value else "missing value")
        if keyword == "ROUTE":
            self.routes.append(Route(value, lineno))
            return
        result = True if parse is None else parse(value)
        if result is None:
            raise ValueError(f"`{value}' {what}")
        if keyword == "MASQUERADE":  # `[user@][host]`, split at the last `@`; an empty part is None
            user, _, host = value.rpartition("@")
            self.masquerade_user, self.masquerade_host = user or None, host or None
        else:
            setattr(self, _ATTRS.get(keyword, keyword.lower()), result)

    def smarthosts(self) -> list[tuple[str, int]]:
        """SMARTHOST's hosts and ports (PORT where a host names none), in the order to try them."""
        return split_hosts(self.smarthost, self.port) if self.smarthost else []

    def auth(self) -> AuthTable:
        """The auth.conf table named by AUTHPATH (empty when unset), read on first use."""
        if self._auth is None:
            from .mail.authconf import AuthTable

            self._auth = AuthTable(self.authpath)
        return self._auth


def sanitize_hostname(name: str) -> str:
    """Cut `name` at the first character that is not ASCII alphanumeric or `_.-` (6.4)."""
    return name[: len(name) - len(name.lstrip(_HOSTCHARS))] or "unknown-hostname"


def getenv(name: str) -> str | None:
    """An environment variable, decoded as `os.environ` would, without importing `os`."""
    value = posix.environ.get(name.encode())
    return None if value is None else value.decode("utf-8", "surrogateescape")


def state_dir() -> str:
    """$DMA_STATE_DIR, else $XDG_STATE_HOME/dma, else ~/.local/state/dma (user-mode state)."""
    if explicit := getenv("DMA_STATE_DIR"):
        return explicit
    xdg = getenv("XDG_STATE_HOME")
    if xdg and xdg.startswith("/"):  # the XDG spec says to ignore relative values
        return f"{xdg.rstrip('/')}/dma"
    home = getenv("HOME")
    if not home:
        try:
            home = pwd.getpwuid(posix.geteuid()).pw_dir
        except KeyError:
            home = "/"
    return f"{home.rstrip('/')}/.local/state/dma"


def _is_system_spool(spooldir: str) -> bool:
    """A spool set up by `dma install`: it has a drop directory for unprivileged submitters."""
    try:
        return posix.stat(f"{spooldir}/incoming").st_mode & 0o170000 == 0o040000
    except OSError:
        return False


# ---- the kinds of value: parsers that return None for a malformed value, or raise ValueError --


def _number(
    text: str, units: str = "", width: int = 6, low: int = 1, high: float = float("inf")
) -> int | None:
    """A whole number from `low` to `high`: at most `width` digits, then maybe one of `units`."""
    digits, scale = text, 1
    if text[-1:] and text[-1] in units:
        digits, scale = text[:-1], _UNITS[text[-1]]
    if not digits or len(digits) > width or not (digits.isascii() and digits.isdigit()):
        return None
    n = int(digits) * scale
    return n if low <= n <= high else None


def _seconds(text: str) -> float | None:
    try:
        n = float(text)
    except ValueError:
        return None
    # NaN fails every comparison; the upper bound rejects infinity.
    return n if 0 < n <= 86400 * 365 else None


def _one_word(value: str) -> str | None:
    return None if " " in value or "\t" in value else value


def _mailname(value: str) -> str | None:
    """A host name, or the file to read it from once the whole config is read."""
    if value.startswith("/"):
        return value
    if _one_word(value) is None:
        return None
    if len(value.encode("utf-8", "surrogateescape")) > 255:
        raise ValueError("longer than 255 bytes")
    return value


def fingerprint(value: str) -> bytes:
    """FINGERPRINT's and a ROUTE's `fingerprint=`: a SHA-256 digest in hex, maybe colon-separated."""
    hexstr = value.replace(":", "")
    if len(hexstr) != 64:
        raise ValueError(f"a SHA-256 fingerprint is 64 hex digits, got {len(hexstr)} characters")
    if not set(hexstr) <= set("0123456789abcdefABCDEF"):
        raise ValueError(f"`{value}' is not hexadecimal")
    return bytes.fromhex(hexstr)


def split_hosts(text: str, default_port: int) -> list[tuple[str, int]]:
    """`host[:port]` separated by commas or blanks (SMARTHOST's and a ROUTE's relays, tried in turn;
    DNS_SERVER): `[v6]:port` or a bare IPv6 address; `default_port` where none is given."""
    hosts: list[tuple[str, int]] = []
    for item in text.split(","):
        if not item.strip():
            raise ValueError("empty host in list")
        for word in item.split():
            if word.startswith("["):
                host, bracket, rest = word[1:].partition("]")
                if not bracket:
                    raise ValueError(f"`{word}': missing `]'")
            else:
                host, colon, port = word.partition(":") if word.count(":") == 1 else (word, "", "")
                rest = colon + port
            port_number = _number(rest[1:], "", 5, 1, 65535) if rest[:1] == ":" else None
            if rest and port_number is None:
                raise ValueError(f"`{word}': bad port")
            if not host or host.isdigit():
                raise ValueError(f"`{word}' is not host[:port] (a port goes after a colon or in PORT)")
            hosts.append((host, port_number or default_port))
    return hosts


def _dns_servers(text: str) -> list[tuple[str, int]]:
    """IP addresses, with a port or 53, as `split_hosts` reads them."""
    import socket  # only configs that set DNS_SERVER pay for it

    servers = split_hosts(text, 53)
    for host, _ in servers:
        try:
            socket.inet_pton(socket.AF_INET6 if ":" in host else socket.AF_INET, host)
        except (OSError, ValueError):
            raise ValueError(f"`{host}': not an IP address") from None
    return servers


# The keys (docs/configuration.md) by the kind of value they take: its parser, which returns None
# for a malformed value (or raises ValueError), none for a flag; and what a malformed value is, after
# the value. A key sets the attribute named after it in lower case, or the one `_ATTRS` gives.
_KINDS: list[tuple[str, Callable[[str], object] | None, str]] = [
    ("SECURETRANSFER STARTTLS OPPORTUNISTIC_TLS VERIFYCERT INSECURE DEFER FULLBOUNCE NULLCLIENT", None, ""),
    ("ALIASES SPOOLDIR AUTHPATH CERTFILE MBOXDIR CAFILE LOGFILE", str, ""),
    ("XOAUTH2_COMMAND", str.split, ""),
    ("SMARTHOST", lambda v: split_hosts(v, 25) and v, ""),  # checked, but split when used: PORT may follow
    ("DNS_SERVER", _dns_servers, ""),
    ("FINGERPRINT", fingerprint, ""),
    ("ROUTE", str, ""),  # each line adds a `Route`
    ("HELO_NAME", _one_word, "is not a single host name"),
    ("MAILNAME", _mailname, "is not a host name (it has blanks)"),
    ("MASQUERADE", _one_word, "has blanks; expected [user@][host]"),
    (
        "REWRITEFROM",
        lambda v: v if v.count("@") == 1 and v[0] != "@" and v[-1] != "@" and v.isprintable() else None,
        "is not an address (user@domain)",
    ),
    (
        "MAILDIR",
        lambda v: v if v.startswith(("/", "~/")) or v == "~" else None,
        "must be an absolute path or start with `~/'",
    ),
    ("PORT", lambda v: _number(v, "", 5, 1, 65535), "is not a port number (1-65535)"),
    (
        "RETRY_MIN RETRY_MAX MAX_QUEUE_TIME",
        lambda v: _number(v, "smhd", 12),
        "is not a duration (seconds, or a number with s, m, h or d)",
    ),
    ("CONCURRENCY HOST_CONCURRENCY", _number, "is not a positive whole number"),
    (
        "MAXUSERMSGS MAXUSERBYTES",
        lambda v: _number(v, "KMG", 15, 0),
        "is not a whole number (K, M or G may follow)",
    ),
    ("CONNECT_TIMEOUT TIMEOUT LINGER", _seconds, "is not a positive number of seconds"),
]
_KEYS = {key: (parse, what) for keys, parse, what in _KINDS for key in keys.split()}
_ATTRS = {
    "DNS_SERVER": "dns_servers",
    "MAXUSERMSGS": "max_user_msgs",
    "MAXUSERBYTES": "max_user_bytes",
    "REWRITEFROM": "rewrite_from",
}
_HINTS = {"SECURE": " (did you mean INSECURE?)", "SECURETRANS": " (the key is SECURETRANSFER)"}


# ---- ROUTE lines: a different relay, port, TLS mode and login per recipient domain or envelope
# sender. The first matching line wins (`dma.mail.routing.choose`); what a route does not say comes
# from the global keys.

TLS_MODES = {"tls": "implicit", "starttls": "starttls", "opportunistic": "opportunistic", "plain": "none"}


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
        for option in words[2:]:
            name, eq, arg = option.partition("=")
            if name in TLS_MODES and not eq:
                self.tls = TLS_MODES[name]
            elif name in ("verify", "noverify") and not eq:
                self.verify = name == "verify"
            elif name == "fingerprint" and arg:
                self.fingerprint = fingerprint(arg)
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
