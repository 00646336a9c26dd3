"""auth.conf, in C dma's format: `login|host<sep>password` lines (see docs/configuration.md).

Read only when a password is needed, never at submission.
"""

from __future__ import annotations

from dma.errors import EX_NOINPUT, ConfigError, Fatal, os_error_text, read_text


class AuthTable:
    """Credentials from auth.conf, keyed by the exact host name (case-sensitive)."""

    def __init__(self, path: str | None = None, entries: list[tuple[str, str, str]] | None = None) -> None:
        """`entries` are (login, host, password) in file order: a later host replaces an earlier one."""
        self.path = path
        self._by_host: dict[str, tuple[str, str]] = {}
        self._by_login: dict[tuple[str, str], str] = {}
        for login, host, password in entries or ():
            self._by_host[host] = (login, password)
            self._by_login[(host, login)] = password

    def lookup(self, host: str, login: str | None = None) -> tuple[str, str] | None:
        """(login, password) for `host` (the SMARTHOST as configured, or the MX name), or None;
        `login` picks that login's line for the host (a ROUTE's `auth=`), else the last line wins."""
        if login is None:
            return self._by_host.get(host)
        password = self._by_login.get((host, login))
        return None if password is None else (login, password)

    def items(self) -> list[tuple[str, str, str]]:
        """Every (login, host, password)."""
        return [(login, host, password) for (host, login), password in self._by_login.items()]

    def __len__(self) -> int:
        return len(self._by_host)

    def __repr__(self) -> str:
        return f"<AuthTable {self.path!r} hosts={sorted(self._by_host)!r}>"


def load_auth(path: str) -> AuthTable:
    """Parse auth.conf: `login|host<sep>password` lines, `<sep>` one of `:`, `|`, space, TAB; the
    password is the rest of the line verbatim (bytes that are not UTF-8 as surrogate escapes)."""
    try:
        text = read_text(path)
    except OSError as e:
        verb = "open" if isinstance(e, FileNotFoundError) else "read"
        raise Fatal(EX_NOINPUT, f"can not {verb} auth file `{path}': {os_error_text(e)}") from None
    entries: list[tuple[str, str, str]] = []
    for lineno, line in enumerate(text.split("\n"), 1):
        if not line.strip() or line.startswith("#"):
            continue
        login, bar, rest = line.partition("|")
        if not bar:
            raise ConfigError(path, lineno, None, "syntax error: expected `login|host:password'")
        cut = next((i for i, ch in enumerate(rest) if ch in ":| \t"), -1)
        if cut < 0:
            raise ConfigError(
                path, lineno, None, "syntax error: no `:', `|', space or TAB between host and password"
            )
        if not login:
            raise ConfigError(path, lineno, None, "syntax error: empty login")
        if not rest[:cut]:
            raise ConfigError(path, lineno, None, "syntax error: empty host")
        entries.append((login, rest[:cut], rest[cut + 1 :]))
    return AuthTable(path, entries)
