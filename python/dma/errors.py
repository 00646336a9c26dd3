"""Exit codes (sysexits.h) and the exceptions that carry them to the command line.

Anything that should end the program with a one-line message raises `Fatal`; the CLI prints
``<prog>: <message>`` on stderr and exits with ``code``. This module is imported on the
submission hot path, so it imports nothing.
"""

from __future__ import annotations

__all__ = [
    "EX_CANTCREAT",
    "EX_CONFIG",
    "EX_DATAERR",
    "EX_IOERR",
    "EX_NOINPUT",
    "EX_NOPERM",
    "EX_NOUSER",
    "EX_OK",
    "EX_OSERR",
    "EX_SOFTWARE",
    "EX_TEMPFAIL",
    "EX_UNAVAILABLE",
    "EX_USAGE",
    "ConfigError",
    "Fatal",
]

EX_OK = 0
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
    """An error that ends the program: ``code`` is the exit status, ``message`` one line of text.

    The argument order follows C's ``errx(code, message)``.
    """

    code: int
    message: str

    def __init__(self, code: int, message: str) -> None:
        super().__init__(code, message)
        self.code = code
        # One line, whatever the caller passed: a newline would break the "<prog>: <message>" form.
        self.message = message.replace("\r", " ").replace("\n", " ")

    def __str__(self) -> str:
        return self.message

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.code!r}, {self.message!r})"


class ConfigError(Fatal):
    """A mistake in a configuration file (dma.conf, auth.conf, aliases): exit 78 (EX_CONFIG).

    ``str()`` (and ``message``) is ``"<path>:<line>: <key>: <detail>"``; the line and the key are
    left out when they do not apply. The parts stay available as attributes.
    """

    path: str
    line: int | None
    key: str | None
    detail: str

    def __init__(self, path: str, line: int | None, key: str | None, message: str) -> None:
        where = path if line is None else f"{path}:{line}"
        text = f"{where}: {message}" if key is None else f"{where}: {key}: {message}"
        super().__init__(EX_CONFIG, text)
        self.args = (path, line, key, message)
        self.path = path
        self.line = line
        self.key = key
        self.detail = message

    def __repr__(self) -> str:
        return f"ConfigError({self.path!r}, {self.line!r}, {self.key!r}, {self.detail!r})"
