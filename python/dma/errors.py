"""Exit codes (sysexits.h), the exceptions that carry them to the command line (usage errors of a
`dma <command>`'s options too), and the file reading every configuration file shares. On the
submission hot path: imports nothing."""

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


class RouteError(Exception):
    """Nowhere to deliver to (no host; for local mail, `local.DeliveryFailure`, no mailbox):
    `permanent` when retrying cannot help (NXDOMAIN, null MX, an unknown user)."""

    def __init__(self, text: str, *, permanent: bool) -> None:
        super().__init__(text)
        self.permanent = permanent


def getopts(
    args: list[str], usage: str, short: str, long: tuple[str, ...] = (), *, operands: bool = True
) -> tuple[dict[str, str], list[str]]:
    """A `dma <command>`'s options, as GNU getopt parses them: ({"-x": value}, operands). Any
    mistake (operands, unless allowed), -h and --help are the usage error: `usage`, exit 64."""
    import getopt

    try:
        pairs, rest = getopt.gnu_getopt(args, "h" + short, ["help", *long])
    except getopt.GetoptError:
        raise Fatal(EX_USAGE, usage) from None
    opts = dict(pairs)
    if "-h" in opts or "--help" in opts or (rest and not operands):
        raise Fatal(EX_USAGE, usage)
    return opts, rest


def read_text(path: str) -> str:
    """A whole file; surrogateescape keeps any byte (paths and passwords round-trip)."""
    with open(path, "rb") as f:
        return f.read().decode("utf-8", "surrogateescape")


def read_config(path: str, doing: str) -> str | None:
    """`read_text`, None for a missing file; another failure is "can not <doing> `<path>'", exit 66."""
    try:
        return read_text(path)
    except FileNotFoundError:
        return None
    except OSError as e:
        raise Fatal(EX_NOINPUT, f"can not {doing} `{path}': {os_error_text(e)}") from None


def os_error_text(e: OSError) -> str:
    return e.strerror or str(e)
