"""auth.conf, in C dma's format: `login|host<sep>password` lines (see docs/configuration.md).

Read only when a password is needed, never at submission.
"""

from __future__ import annotations

import errno

from dma.config import os_error_text, read_text
from dma.errors import EX_NOINPUT, ConfigError, Fatal


class AuthTable:
    """Credentials from auth.conf, keyed by the exact host name (case-sensitive)."""

    __slots__ = ("_by_host", "_by_login", "path")

    path: str | None
    _by_host: dict[str, tuple[str, str]]
    _by_login: dict[tuple[str, str], str]

    def __init__(self, path: str | None = None, entries: list[tuple[str, str, str]] | None = None) -> None:
        """`entries` are (login, host, password) in file order: a later host replaces an earlier one."""
        self.path = path
        self._by_host = {}
        self._by_login = {}
        for login, host, password in entries or ():
            self._by_host[host] = (login, password)
            self._by_login[(host, login)] = password

    def lookup(self, host: str, login: str | None = None) -> tuple[str, str] | None:
        """(login, password) for `host` (the SMARTHOST as configured, or the MX name), or None.

        `login` picks that login's line for the host (a ROUTE's `auth=`), else the last line wins.
        """
        if login is not None:
            password = self._by_login.get((host, login))
            return None if password is None else (login, password)
        return self._by_host.get(host)

    def items(self) -> list[tuple[str, str, str]]:
        """Every (login, host, password)."""
        return [(login, host, password) for (host, login), password in self._by_login.items()]

    def __len__(self) -> int:
        return len(self._by_host)

    def __repr__(self) -> str:
        return f"<AuthTable {self.path!r} hosts={sorted(self._by_host)!r}>"


_AUTH_SEPARATORS = ":| \t"


def load_auth(path: str) -> AuthTable:
    """Parse auth.conf: `login|host<sep>password` lines, `<sep>` one of `:`, `|`, space, TAB.

    The password is the rest of the line verbatim (only the newline is removed; bytes that are
    not UTF-8 are kept as surrogate escapes). An unreadable or missing file raises `Fatal`
    (EX_NOINPUT); a malformed line raises `ConfigError` (EX_CONFIG).
    """
    try:
        text = read_text(path)
    except OSError as e:
        if e.errno == errno.ENOENT:
            msg = f"can not open auth file `{path}': {os_error_text(e)}"
        else:
            msg = f"can not read auth file `{path}': {os_error_text(e)}"
        raise Fatal(EX_NOINPUT, msg) from None
    entries: list[tuple[str, str, str]] = []
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    for lineno, line in enumerate(lines, 1):
        if not line.strip() or line.startswith("#"):
            continue
        login, bar, rest = line.partition("|")
        if not bar:
            raise ConfigError(path, lineno, None, "syntax error: expected `login|host:password'")
        for i, ch in enumerate(rest):
            if ch in _AUTH_SEPARATORS:
                host, password = rest[:i], rest[i + 1 :]
                break
        else:
            raise ConfigError(
                path, lineno, None, "syntax error: no `:', `|', space or TAB between host and password"
            )
        if not login:
            raise ConfigError(path, lineno, None, "syntax error: empty login")
        if not host:
            raise ConfigError(path, lineno, None, "syntax error: empty host")
        entries.append((login, host, password))
    return AuthTable(path, entries)
