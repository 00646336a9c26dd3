"""auth.conf, in C dma's format (docs/configuration.md); read only when a password is needed,
never at submission."""

from __future__ import annotations

from dma.errors import EX_NOINPUT, ConfigError, Fatal, os_error_text, read_text


class AuthTable:
    """Credentials from auth.conf: (login, host, password) in file order. Hosts match exactly
    (case-sensitive); a later line for a host replaces an earlier one."""

    def __init__(self, path: str | None = None) -> None:
        """Parse auth.conf at `path` (none: an empty table): `login|host<sep>password` lines, `<sep>`
        one of `:`, `|`, space, TAB; the password is the rest of the line verbatim (bytes that are
        not UTF-8 as surrogate escapes)."""
        self.entries: list[tuple[str, str, str]] = []
        if path is None:
            return
        try:
            text = read_text(path)
        except OSError as e:
            verb = "open" if isinstance(e, FileNotFoundError) else "read"
            raise Fatal(EX_NOINPUT, f"can not {verb} auth file `{path}': {os_error_text(e)}") from None
        for lineno, line in enumerate(text.split("\n"), 1):
            if not line.strip() or line.startswith("#"):
                continue
            login, bar, rest = line.partition("|")
            cut = next((i for i, ch in enumerate(rest) if ch in ":| \t"), -1)
            for wrong, what in [
                (not bar, "expected `login|host:password'"),
                (cut < 0, "no `:', `|', space or TAB between host and password"),
                (not login, "empty login"),
                (not rest[:cut], "empty host"),
            ]:
                if wrong:
                    raise ConfigError(path, lineno, None, f"syntax error: {what}")
            self.entries.append((login, rest[:cut], rest[cut + 1 :]))

    def lookup(self, host: str, login: str | None = None) -> tuple[str, str] | None:
        """(login, password) for `host` (as configured, or the MX name), or None; `login` (a ROUTE's
        `auth=`) picks that login's line, else the last line wins."""
        found = (e for e in reversed(self.entries) if e[1] == host and login in (None, e[0]))
        return next(((e[0], e[2]) for e in found), None)

    def items(self) -> list[tuple[str, str, str]]:
        """Every (login, host, password), one per login and host."""
        latest = {(host, login): password for login, host, password in self.entries}
        return [(login, host, password) for (host, login), password in latest.items()]

    def __len__(self) -> int:
        return len({host for _, host, _ in self.entries})
