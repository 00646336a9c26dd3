"""The envelope of a submitted message: the sender, the recipients, and the checks on every address
(the body never passes through here). On the submission hot path: imports nothing heavy."""

from __future__ import annotations

import posix
import pwd
import time

from dma import _native
from dma.config import Config, getenv
from dma.errors import EX_DATAERR, Fatal

_login_name: str | None = None


def login_name() -> str:
    """The submitting user's name, chosen as C dma does (1.5 of the behaviour notes); looked up once."""
    global _login_name
    if _login_name is not None:
        return _login_name
    uid = posix.getuid()
    try:
        candidates = [posix.getlogin()]
    except OSError:
        candidates = []
    for name in [*candidates, getenv("LOGNAME"), getenv("USER")]:
        try:
            if name and pwd.getpwnam(name).pw_uid == uid:
                break
        except KeyError:
            pass
    else:
        name = user_name(uid)
    _login_name = name[:49]
    return _login_name


def user_name(uid: int) -> str:
    """The login name of `uid`, or `uid=<uid>` when it has none (a user removed since)."""
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return f"uid={uid}"


def check_line_safe(what: str, value: str) -> None:
    """Refuse CR, LF and NUL: they would inject headers into the message or commands into SMTP."""
    if "\n" in value or "\r" in value or "\0" in value:
        raise Fatal(EX_DATAERR, f"{what} contains a line break or NUL: {value!r}")


def strip_local_domain(addr: str, mailname: str | None) -> str:
    """Cut ``@domain`` off `addr` when the domain after the LAST ``@`` is `mailname` or localhost,
    compared case-insensitively (C dma compared the host name case-sensitively)."""
    local, at, domain = addr.rpartition("@")
    return local if at and domain.lower() in ("localhost", (mailname or "localhost").lower()) else addr


def parse_addresses(text: str, what: str = "address") -> list[str]:
    """Addresses in an address-list header value or a command-line argument: comments and blanks
    outside quotes go, quoted strings and escapes stay, `<...>` replaces the display name before it,
    `name:` starts a group, `,` and `;` end an address."""
    found: list[str] = []
    current: list[str] = []
    depth = 0
    i = 0
    n = len(text)
    while i < n:
        c = text[i]
        if depth:
            if c == "\\":
                i += 1
            elif c == "(":
                depth += 1
            elif c == ")":
                depth -= 1
        elif c == "(":
            depth = 1
        elif c in ")>":
            raise Fatal(EX_DATAERR, f"invalid {what}: unbalanced `{c}' in {text!r}")
        elif c == '"':
            end = i + 1
            while end < n and text[end] != '"':
                end += 2 if text[end] == "\\" else 1
            current.append(text[i : end + 1])
            i = end
        elif c == "\\":
            current.append(text[i : i + 2])
            i += 1
        elif c == "<":
            end = text.find(">", i)
            if end < 0:
                raise Fatal(EX_DATAERR, f"invalid {what}: unbalanced `<' in {text!r}")
            current = [text[i + 1 : end].strip()]
            i = end
        elif c == ":":
            current = []
        elif c in ",;":
            _flush(current, found, what)
            current = []
        elif not c.isspace():
            current.append(c)
        i += 1
    _flush(current, found, what)
    return found


def _flush(current: list[str], found: list[str], what: str) -> None:
    if address := "".join(current):
        check_address(address, what)
        found.append(address)


def check_address(address: str, what: str = "address") -> None:
    """The one address check (rust/src/address.rs), for every way in."""
    try:
        why = _native.check_address(address)
    except UnicodeEncodeError:  # an argument's undecodable bytes, kept as surrogates
        why = "not UTF-8"
    if why:
        shown = address if address.isprintable() else repr(address)
        raise Fatal(EX_DATAERR, f"invalid {what} `{shown}': {why}")


def envelope_sender(given: str | None, cfg: Config) -> str:
    """The envelope sender: `-f`/`-r`, else $EMAIL, else the login name, qualified and masqueraded.
    `-f ''` and `-f '<>'` give the null sender (C dma turned them into `@host`)."""
    if given is not None:
        check_line_safe("the sender", given)
        if given.strip() in ("", "<>"):
            return ""
        addresses = parse_addresses(given, "sender")
        if len(addresses) != 1:
            raise Fatal(EX_DATAERR, f"invalid sender `{given}'")
        source = addresses[0]
    else:
        source = getenv("EMAIL") or ""
        check_line_safe("$EMAIL", source)
    user, _, host = source.partition("@")
    user = cfg.masquerade_user or user or login_name()
    host = cfg.masquerade_host or host or cfg.mailname
    sender = f"{user}@{host}"
    check_address(sender, "sender")
    return sender


def rfc822_date(when: float) -> str:
    return time.strftime("%a, %d %b %Y %H:%M:%S %z", time.localtime(when))
