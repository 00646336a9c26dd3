"""Exit codes (sysexits.h), the exceptions that carry them to the command line, and the file
reading every configuration file shares. On the submission hot path: imports nothing."""

from __future__ import annotations

EX_USAGE = 64  # command line usage error
EX_DATAERR = 65  # data format error (bad address, bad message)
EX_NOINPUT = 66  # cannot open input (unreadable config, no recipients)
EX_NOUSER = 67  # addressee unknown
EX_UNAVAILABLE = 69  # service unavailable
EX_SOFTWARE = 70  # internal software error
EX_OSERR = 71  # system error (fork, setuid, ...)
EX_CANTCREAT = 73  # can't create (user) output file
EX_IOERR = 74  # input/output error
EX_TEMPFAIL = 75  # temporary failure; the user is invited to retry
EX_NOPERM = 77  # permission denied
EX_CONFIG = 78  # configuration error


class Fatal(Exception):
    """Ends the program: the CLI prints ``<prog>: <message>`` on stderr and exits with ``code``."""

    def __init__(self, code: int, message: str) -> None:
        # One line, whatever the caller passed: a newline would break the "<prog>: <message>" form.
        self.code = code
        self.message = message.replace("\r", " ").replace("\n", " ")
        super().__init__(self.message)


class ConfigError(Fatal):
    """A mistake in dma.conf, auth.conf or aliases: ``<path>[:<line>]: [<key>: ]<detail>``, exit 78."""

    def __init__(self, path: str, line: int | None, key: str | None, detail: str) -> None:
        where = path if line is None else f"{path}:{line}"
        super().__init__(EX_CONFIG, f"{where}: {detail}" if key is None else f"{where}: {key}: {detail}")
        self.path = path
        self.line = line
        self.key = key
        self.detail = detail


def read_text(path: str) -> str:
    """A whole file; surrogateescape keeps any byte (paths and passwords round-trip)."""
    with open(path, "rb") as f:
        return f.read().decode("utf-8", "surrogateescape")


def os_error_text(e: OSError) -> str:
    return e.strerror or str(e)
