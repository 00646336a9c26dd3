"""dma.conf, in C dma's format (see docs/configuration.md).

`load()` reads dma.conf and returns a `Config`. auth.conf (authconf.py) is never read at
submission: the delivery code calls `Config.auth()` when it needs a password, so an unreadable
auth.conf cannot break `sendmail` or `mailq` as it does in C dma.

This module is on the submission hot path: it imports only `posix`, `pwd` and `errors` at module
level (not `os`, whose import alone costs a seventh of the interpreter's start-up), and parses
by hand.
"""

from __future__ import annotations

import posix
import pwd

from .errors import EX_NOINPUT, ConfigError, Fatal

TYPE_CHECKING = False
if TYPE_CHECKING:
    from .mail.authconf import AuthTable
    from .mail.routes import Route

__all__ = [
    "DEFAULT_CONF",
    "Config",
    "load",
    "sanitize_hostname",
    "state_dir",
]

DEFAULT_CONF = "/etc/dma/dma.conf"
SYSTEM_SPOOL = "/var/spool/dma"

# Characters allowed in a host name taken from the system or from a MAILNAME file (6.4).
_HOSTCHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_.-")
_HEX = frozenset("0123456789abcdefABCDEF")
_DIGITS = frozenset("0123456789")
_DURATION_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}

# Keyword -> (kind, attribute). Kinds are handled in `_apply`.
_KEYS: dict[str, tuple[str, str]] = {
    # C dma
    "SMARTHOST": ("hosts", "smarthost"),
    "PORT": ("port", "port"),
    "ALIASES": ("str", "aliases"),
    "SPOOLDIR": ("str", "spooldir"),
    "AUTHPATH": ("str", "authpath"),
    "CERTFILE": ("str", "certfile"),
    "MAILNAME": ("mailname", "mailname"),
    "MASQUERADE": ("masquerade", "masquerade_host"),
    "FINGERPRINT": ("fingerprint", "fingerprint"),
    "SECURETRANSFER": ("bool", "securetransfer"),
    "STARTTLS": ("bool", "starttls"),
    "OPPORTUNISTIC_TLS": ("bool", "opportunistic_tls"),
    "VERIFYCERT": ("bool", "verifycert"),
    "INSECURE": ("bool", "insecure"),
    "DEFER": ("bool", "defer"),
    "FULLBOUNCE": ("bool", "fullbounce"),
    "NULLCLIENT": ("bool", "nullclient"),
    # ours
    "MBOXDIR": ("str", "mboxdir"),
    "MAILDIR": ("maildir", "maildir"),
    "CAFILE": ("str", "cafile"),
    "DNS_SERVER": ("dns", "dns_servers"),
    "RETRY_MIN": ("duration", "retry_min"),
    "RETRY_MAX": ("duration", "retry_max"),
    "MAX_QUEUE_TIME": ("duration", "max_queue_time"),
    "CONCURRENCY": ("count", "concurrency"),
    "HOST_CONCURRENCY": ("count", "host_concurrency"),
    "CONNECT_TIMEOUT": ("seconds", "connect_timeout"),
    "TIMEOUT": ("seconds", "timeout"),
    "LINGER": ("seconds", "linger"),
    "XOAUTH2_COMMAND": ("argv", "xoauth2_command"),
    "HELO_NAME": ("host", "helo_name"),
    "LOGFILE": ("str", "logfile"),
    "MAXUSERMSGS": ("limit", "max_user_msgs"),
    "MAXUSERBYTES": ("limit", "max_user_bytes"),
    "ROUTE": ("route", "routes"),
    "REWRITEFROM": ("address", "rewrite_from"),
}


class Config:
    """The settings of one dma.conf, with defaults filled in. Attributes are named after the keys."""

    __slots__ = (
        "_auth",
        "aliases",
        "authpath",
        "cafile",
        "certfile",
        "concurrency",
        "connect_timeout",
        "defer",
        "dns_servers",
        "file_exists",
        "fingerprint",
        "fullbounce",
        "helo_name",
        "host_concurrency",
        "insecure",
        "key_lines",
        "linger",
        "logfile",
        "maildir",
        "mailname",
        "masquerade_host",
        "masquerade_user",
        "max_queue_time",
        "max_user_bytes",
        "max_user_msgs",
        "mboxdir",
        "nullclient",
        "opportunistic_tls",
        "path",
        "port",
        "retry_max",
        "retry_min",
        "rewrite_from",
        "routes",
        "securetransfer",
        "smarthost",
        "spooldir",
        "starttls",
        "state_dir",
        "system_hostname",
        "timeout",
        "user_mode",
        "verifycert",
        "xoauth2_command",
    )

    path: str
    file_exists: bool
    user_mode: bool
    state_dir: str
    system_hostname: str
    key_lines: dict[str, int]
    # C dma keys
    smarthost: str | None
    port: int
    aliases: str
    spooldir: str
    authpath: str | None
    certfile: str | None
    mailname: str
    masquerade_user: str | None
    masquerade_host: str | None
    fingerprint: bytes | None
    securetransfer: bool
    starttls: bool
    opportunistic_tls: bool
    verifycert: bool
    insecure: bool
    defer: bool
    fullbounce: bool
    nullclient: bool
    # our additions
    mboxdir: str
    maildir: str | None
    cafile: str | None
    dns_servers: list[tuple[str, int]]
    retry_min: int
    retry_max: int
    max_queue_time: int
    max_user_msgs: int  # system mode: what one user may hold in the drop directory and queue
    max_user_bytes: int
    concurrency: int
    host_concurrency: int
    connect_timeout: float
    timeout: float
    linger: float
    xoauth2_command: list[str] | None
    helo_name: str | None
    logfile: str | None
    routes: list[Route]
    rewrite_from: str | None
    _auth: AuthTable | None

    def __init__(self, path: str = DEFAULT_CONF, *, user_mode: bool | None = None) -> None:
        """All defaults, as if `path` did not exist (`mailname` is the system host name)."""
        self.path = path
        self.file_exists = False
        if user_mode is None:
            # Not root and no system install: everything under the user's own state directory.
            user_mode = posix.geteuid() != 0 and not _is_system_spool(SYSTEM_SPOOL)
        self.user_mode = user_mode
        self.state_dir = state_dir()
        self.system_hostname = sanitize_hostname(posix.uname().nodename)
        self.key_lines = {}
        self.smarthost = None
        self.port = 25
        self.aliases = "/etc/aliases"
        if self.user_mode:
            self.spooldir = f"{self.state_dir}/spool"
            self.mboxdir = f"{self.state_dir}/mail"
        else:
            self.spooldir = SYSTEM_SPOOL
            self.mboxdir = "/var/mail"
        self.authpath = None
        self.certfile = None
        self.mailname = self.system_hostname
        self.masquerade_user = None
        self.masquerade_host = None
        self.fingerprint = None
        self.securetransfer = False
        self.starttls = False
        self.opportunistic_tls = False
        self.verifycert = False
        self.insecure = False
        self.defer = False
        self.fullbounce = False
        self.nullclient = False
        self.maildir = None
        self.cafile = None
        self.dns_servers = []
        self.retry_min = 300
        self.retry_max = 10800
        self.max_queue_time = 432000
        self.max_user_msgs = 1000
        self.max_user_bytes = 1 << 30
        self.concurrency = 8
        self.host_concurrency = 2
        self.connect_timeout = 30.0
        self.timeout = 300.0
        self.linger = 2.0
        self.xoauth2_command = None
        self.helo_name = None
        self.logfile = None
        self.routes = []
        self.rewrite_from = None
        self._auth = None

    def __repr__(self) -> str:
        return f"<Config {self.path!r} exists={self.file_exists} user_mode={self.user_mode}>"

    def smarthosts(self) -> list[tuple[str, int]]:
        """SMARTHOST's hosts and ports (PORT where a host names none), in the order to try them."""
        from .mail.routes import split_hosts

        return split_hosts(self.smarthost or "", self.port)

    def auth(self) -> AuthTable:
        """The auth.conf table named by AUTHPATH (empty when unset), read on first use."""
        if self._auth is None:
            from .mail.authconf import AuthTable, load_auth

            self._auth = AuthTable(self.authpath) if self.authpath is None else load_auth(self.authpath)
        return self._auth


# ---- helpers ----------------------------------------------------------------------------------


def sanitize_hostname(name: str) -> str:
    """Cut `name` at the first character that is not ASCII alphanumeric or `_.-` (6.4)."""
    for i, ch in enumerate(name):
        if ch not in _HOSTCHARS:
            name = name[:i]
            break
    return name or "unknown-hostname"


def getenv(name: str) -> str | None:
    """An environment variable, decoded as `os.environ` would, without importing `os`."""
    value = posix.environ.get(name.encode())
    return None if value is None else value.decode("utf-8", "surrogateescape")


def state_dir() -> str:
    """$DMA_STATE_DIR, else $XDG_STATE_HOME/dma, else ~/.local/state/dma (user-mode state)."""
    explicit = getenv("DMA_STATE_DIR")
    if explicit:
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


def read_text(path: str) -> str:
    with open(path, "rb") as f:
        data = f.read()
    # surrogateescape keeps any byte: paths and passwords round-trip through `os.fsencode()`.
    return data.decode("utf-8", "surrogateescape")


def os_error_text(e: OSError) -> str:
    return e.strerror or str(e)


def _mailname_from_file(path: str) -> str | None:
    """The first line of `path`, cut at the first non-host-name character; None if unusable."""
    try:
        with open(path, "rb") as f:
            first = f.readline(4096)
    except OSError:
        return None
    name = sanitize_hostname(first.decode("ascii", "replace"))
    return None if name == "unknown-hostname" else name


def _parse_port(text: str) -> int | None:
    if not text or len(text) > 5 or not set(text) <= _DIGITS:
        return None
    n = int(text)
    return n if 1 <= n <= 65535 else None


def _parse_duration(text: str) -> int | None:
    """Seconds: `90`, `90s`, `5m`, `3h`, `5d`; None when malformed or zero."""
    mult = _DURATION_UNITS.get(text[-1:], 0)
    digits = text[:-1] if mult else text
    if not mult:
        mult = 1
    if not digits or len(digits) > 12 or not set(digits) <= _DIGITS:
        return None
    n = int(digits) * mult
    return n if n > 0 else None


def _parse_dns_servers(text: str) -> list[tuple[str, int]] | str:
    """`host`, `host:port` or `[v6]:port`, comma-separated; returns an error text on failure."""
    import socket  # only configs that set DNS_SERVER pay for it

    servers: list[tuple[str, int]] = []
    for item in text.split(","):
        item = item.strip()
        if not item:
            return "empty server in list"
        port = 53
        if item.startswith("["):
            end = item.find("]")
            if end < 0:
                return f"`{item}': missing `]'"
            host, rest = item[1:end], item[end + 1 :]
            if rest:
                if not rest.startswith(":") or (p := _parse_port(rest[1:])) is None:
                    return f"`{item}': bad port"
                port = p
            family = socket.AF_INET6
        elif item.count(":") == 1:
            host, _, ptext = item.partition(":")
            if (p := _parse_port(ptext)) is None:
                return f"`{item}': bad port"
            port = p
            family = socket.AF_INET
        elif ":" in item:  # a bare IPv6 address
            host, family = item, socket.AF_INET6
        else:
            host, family = item, socket.AF_INET
        try:
            socket.inet_pton(family, host)
        except (OSError, ValueError):
            return f"`{item}': not an IP address"
        servers.append((host, port))
    return servers


def _parse_seconds(text: str) -> float | None:
    try:
        n = float(text)
    except ValueError:
        return None
    # `n == n` rejects NaN; the upper bound rejects infinity.
    return n if n == n and 0 < n <= 86400 * 365 else None


# ---- dma.conf ---------------------------------------------------------------------------------


def load(path: str | None = None, *, user_mode: bool | None = None) -> Config:
    """Read dma.conf: `path` (from `-C FILE`), else $DMA_CONF, else /etc/dma/dma.conf.

    A missing file gives all defaults; an unreadable one raises `Fatal` (EX_NOINPUT); a mistake
    in it raises `ConfigError` (EX_CONFIG) naming the file, the line and the key. `user_mode`
    overrides the mode normally taken from the effective uid (for tests and tools).
    """
    if not path:
        path = getenv("DMA_CONF") or DEFAULT_CONF
    cfg = Config(path, user_mode=user_mode)
    try:
        text = read_text(path)
    except FileNotFoundError:
        return cfg
    except OSError as e:
        raise Fatal(EX_NOINPUT, f"can not open config `{path}': {os_error_text(e)}") from None
    cfg.file_exists = True
    _parse_conf(cfg, path, text)
    if user_mode is None and cfg.user_mode and "SPOOLDIR" in cfg.key_lines:
        cfg.user_mode = not _is_system_spool(cfg.spooldir)
    return cfg


def _is_system_spool(spooldir: str) -> bool:
    """A spool set up by `dma install`: it has a drop directory for unprivileged submitters."""
    try:
        return posix.stat(f"{spooldir}/incoming").st_mode & 0o170000 == 0o040000
    except OSError:
        return False


def _parse_conf(cfg: Config, path: str, text: str) -> None:
    mailname_value: str | None = None
    lines = cfg.key_lines
    for lineno, raw in enumerate(text.split("\n"), 1):
        line = raw.partition("#")[0]
        if not line or line[0] in " \t":
            # C dma: a line starting with whitespace has an empty keyword and is ignored.
            continue
        if line.endswith("\r"):  # CRLF files
            line = line.rstrip("\r")
            if not line:
                continue
        cut = len(line)
        for i, ch in enumerate(line):
            if ch == " " or ch == "\t":
                cut = i
                break
        keyword = line[:cut]
        # Fix: C dma keeps the blanks around the value (`SMARTHOST x # c` gave "x ").
        value = line[cut + 1 :].strip(" \t\r\v\f")
        spec = _KEYS.get(keyword)
        if spec is None:
            if not keyword.isprintable():
                keyword = ascii(keyword)[1:-1]
            hint = ""
            if keyword.upper() in _KEYS:
                hint = f" (keywords are case-sensitive: {keyword.upper()})"
            elif keyword == "SECURE":
                hint = " (did you mean INSECURE?)"
            elif keyword == "SECURETRANS":
                hint = " (the key is SECURETRANSFER)"
            raise ConfigError(path, lineno, keyword, f"unknown keyword{hint}")
        kind, attr = spec
        if not value.isprintable():
            for ch in value:
                if (ch < " " and ch != "\t") or ch == "\x7f":
                    raise ConfigError(path, lineno, keyword, "control character in value")
        lines[keyword] = lineno
        if kind == "bool":
            if value:
                raise ConfigError(path, lineno, keyword, f"takes no value (got `{value}')")
            setattr(cfg, attr, True)
            continue
        if not value:
            raise ConfigError(path, lineno, keyword, "missing value")
        if kind == "mailname":
            mailname_value = _apply_mailname(path, lineno, value)
        elif kind == "masquerade":
            cfg.masquerade_user, cfg.masquerade_host = _split_masquerade(path, lineno, value)
        elif kind == "route":
            from .mail.routes import parse_route

            cfg.routes.append(parse_route(path, lineno, value))
        else:
            setattr(cfg, attr, _convert(path, lineno, keyword, kind, value))

    if cfg.nullclient and cfg.smarthost is None:
        raise ConfigError(path, lines["NULLCLIENT"], "NULLCLIENT", "NULLCLIENT requires SMARTHOST")
    if cfg.retry_min > cfg.retry_max:
        key = "RETRY_MIN" if "RETRY_MIN" in lines else "RETRY_MAX"
        raise ConfigError(
            path,
            lines[key],
            key,
            f"RETRY_MIN ({cfg.retry_min}s) is larger than RETRY_MAX ({cfg.retry_max}s)",
        )
    if mailname_value is not None:
        if mailname_value.startswith("/"):
            cfg.mailname = _mailname_from_file(mailname_value) or cfg.system_hostname
        else:
            cfg.mailname = mailname_value


def _apply_mailname(path: str, lineno: int, value: str) -> str:
    if not value.startswith("/"):
        if " " in value or "\t" in value:
            raise ConfigError(path, lineno, "MAILNAME", f"`{value}' is not a host name (it has blanks)")
        if len(value.encode("utf-8", "surrogateescape")) > 255:
            raise ConfigError(path, lineno, "MAILNAME", "longer than 255 bytes")
    return value


def _split_masquerade(path: str, lineno: int, value: str) -> tuple[str | None, str | None]:
    """`[user@][host]`, split at the last `@`; an empty part is None."""
    if " " in value or "\t" in value:
        raise ConfigError(path, lineno, "MASQUERADE", f"`{value}' has blanks; expected [user@][host]")
    user, _, host = value.rpartition("@")
    return user or None, host or None


def _convert(
    path: str, lineno: int, key: str, kind: str, value: str
) -> str | int | float | bytes | list[str] | list[tuple[str, int]]:
    if kind == "str":
        return value
    if kind == "host":
        if " " in value or "\t" in value:
            raise ConfigError(path, lineno, key, f"`{value}' is not a single host name")
        return value
    if kind == "address":
        if value.count("@") != 1 or value.startswith("@") or value.endswith("@") or not value.isprintable():
            raise ConfigError(path, lineno, key, f"`{value}' is not an address (user@domain)")
        return value
    if kind == "hosts":  # `host[:port] ...`, split when used: PORT may come later
        from .mail.routes import split_hosts

        try:
            split_hosts(value, 25)
        except ValueError as e:
            raise ConfigError(path, lineno, key, str(e)) from None
        return value
    if kind == "port":
        port = _parse_port(value)
        if port is None:
            raise ConfigError(path, lineno, key, f"`{value}' is not a port number (1-65535)")
        return port
    if kind == "fingerprint":
        hexstr = value.replace(":", "") if ":" in value else value
        if len(hexstr) != 64:
            raise ConfigError(
                path, lineno, key, f"a SHA-256 fingerprint is 64 hex digits, got {len(hexstr)} characters"
            )
        if not set(hexstr) <= _HEX:
            raise ConfigError(path, lineno, key, f"`{value}' is not hexadecimal")
        return bytes.fromhex(hexstr)
    if kind == "maildir":
        if not (value.startswith("/") or value == "~" or value.startswith("~/")):
            raise ConfigError(path, lineno, key, f"`{value}' must be an absolute path or start with `~/'")
        return value
    if kind == "dns":
        servers = _parse_dns_servers(value)
        if isinstance(servers, str):
            raise ConfigError(path, lineno, key, servers)
        return servers
    if kind == "duration":
        secs = _parse_duration(value)
        if secs is None:
            raise ConfigError(
                path, lineno, key, f"`{value}' is not a duration (seconds, or a number with s, m, h or d)"
            )
        return secs
    if kind == "count":
        if not set(value) <= _DIGITS or len(value) > 6 or int(value) < 1:
            raise ConfigError(path, lineno, key, f"`{value}' is not a positive whole number")
        return int(value)
    if kind == "limit":  # a whole number, K/M/G for binary multiples
        scale = 1 << 10 * "KMG".find(value[-1:]) + 10 if value[-1:] in ("K", "M", "G") else 1
        digits = value[:-1] if scale > 1 else value
        if not digits or not set(digits) <= _DIGITS or len(digits) > 15:
            raise ConfigError(path, lineno, key, f"`{value}' is not a whole number (K, M or G may follow)")
        return int(digits) * scale
    if kind == "seconds":
        secs_f = _parse_seconds(value)
        if secs_f is None:
            raise ConfigError(path, lineno, key, f"`{value}' is not a positive number of seconds")
        return secs_f
    if kind == "argv":
        return value.split()
    raise AssertionError(kind)  # pragma: no cover
