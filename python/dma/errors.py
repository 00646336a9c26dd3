"""Exit codes (sysexits.h), the exceptions that carry them to the command line, and the file
reading every configuration file shares. Imported on the submission hot path: imports nothing.

Anything that should end the program with a one-line message raises `Fatal`; the CLI prints
``<prog>: <message>`` on stderr and exits with ``code``.
"""

from __future__ import annotations

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
    """An error that ends the program: ``code`` is the exit status, ``message`` one line of text
    (the argument order follows C's ``errx(code, message)``)."""

    def __init__(self, code: int, message: str) -> None:
        # One line, whatever the caller passed: a newline would break the "<prog>: <message>" form.
        self.code = code
        self.message = message.replace("\r", " ").replace("\n", " ")
        super().__init__(code, self.message)

    def __str__(self) -> str:
        return self.message


class ConfigError(Fatal):
    """A mistake in a configuration file (dma.conf, auth.conf, aliases): exit 78 (EX_CONFIG).

    ``str()`` is ``"<path>:<line>: <key>: <detail>"``, without the line or the key where they do
    not apply; the parts stay available as attributes.
    """

    def __init__(self, path: str, line: int | None, key: str | None, detail: str) -> None:
        where = path if line is None else f"{path}:{line}"
        super().__init__(EX_CONFIG, f"{where}: {detail}" if key is None else f"{where}: {key}: {detail}")
        self.args = (path, line, key, detail)
        self.path = path
        self.line = line
        self.key = key
        self.detail = detail


def read_text(path: str) -> str:
    """A whole file; surrogateescape keeps any byte, so paths and passwords round-trip through
    `os.fsencode()`."""
    with open(path, "rb") as f:
        return f.read().decode("utf-8", "surrogateescape")


def os_error_text(e: OSError) -> str:
    return e.strerror or str(e)
