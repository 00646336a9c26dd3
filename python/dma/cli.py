"""The command line: `sendmail`, `mailq`, `newaliases` and `dma`, with C dma's options.

The program name picks the mode. Options are parsed as glibc's getopt does with C dma's option
string: options may come before or after recipients, `--` ends them, and `-q` takes an optional
argument. Heavy modules are imported only by the modes that need them.
"""

from __future__ import annotations

import posix
import sys

from .errors import EX_CONFIG, EX_NOINPUT, EX_OSERR, EX_USAGE, Fatal

TYPE_CHECKING = False
if TYPE_CHECKING:
    from .config import Config

WITH_ARGUMENT = set("AbBCdfFhLNoOqrRVX")
FLAGS = set("DintUv")


class Options:
    __slots__ = (
        "config",
        "dot_terminates",
        "dsn",
        "foreground",
        "from_headers",
        "full_name",
        "list_queue",
        "queue_arg",
        "queue_only",
        "recipients",
        "run_queue",
        "sender",
        "smtp",
        "tag",
        "verbose",
    )

    def __init__(self) -> None:
        self.config: str | None = None
        self.dsn: dict[str, str] = {}  # -N, -R, -V by letter
        self.dot_terminates = True
        self.foreground = False
        self.from_headers = False
        self.full_name: str | None = None
        self.list_queue = False
        self.queue_arg = ""
        self.queue_only = False
        self.recipients: list[str] = []
        self.run_queue = False
        self.sender: str | None = None
        self.smtp = False  # -bs
        self.tag = "dma"
        self.verbose = False


def parse_args(args: list[str]) -> Options:
    opts = Options()
    i = 0
    while i < len(args):
        arg = args[i]
        i += 1
        if arg == "--":
            opts.recipients += args[i:]
            break
        if not arg.startswith("-") or arg == "-":
            opts.recipients.append(arg)  # glibc's getopt permutes: options may follow recipients
            continue
        j = 1
        while j < len(arg):
            letter = arg[j]
            rest = arg[j + 1 :]
            if letter in FLAGS:
                apply_flag(opts, letter)
                j += 1
                continue
            if letter not in WITH_ARGUMENT:
                raise Fatal(EX_USAGE, f"invalid argument: `-{letter}'")
            if rest:
                value = rest
            elif letter == "q":
                # An optional argument: C dma's getopt takes the next word unless it is an option.
                if i < len(args) and not args[i].startswith("-"):
                    value = args[i]
                    i += 1
                else:
                    value = ""
            elif i < len(args):
                value = args[i]
                i += 1
            else:
                raise Fatal(EX_USAGE, f"option requires an argument: `-{letter}'")
            apply_option(opts, letter, value)
            break
    if opts.recipients and (opts.list_queue or opts.run_queue):
        raise Fatal(EX_USAGE, "sending mail and queue operations are mutually exclusive")
    if opts.recipients and opts.smtp:
        raise Fatal(EX_USAGE, "recipients are given in the SMTP dialogue of -bs, not as arguments")
    if opts.list_queue and opts.run_queue:
        raise Fatal(EX_USAGE, "conflicting queue operations")
    return opts


def apply_flag(opts: Options, letter: str) -> None:
    if letter == "D":
        opts.foreground = True
    elif letter == "i":
        opts.dot_terminates = False
    elif letter == "t":
        opts.from_headers = True
    elif letter == "v":
        opts.verbose = True
    # -n and -U are accepted and ignored, as in C dma.


def apply_option(opts: Options, letter: str, value: str) -> None:
    if letter == "A" and value in ("c", "m"):
        return
    if letter in "Ab":
        if value == "p":
            opts.list_queue = True
        elif value == "q":
            opts.queue_only = True
        elif value == "s":
            opts.smtp = True  # SMTP on stdin and stdout (bs.py); C dma read stdin as the message
        else:
            # -bm, -bi, ... carry on as a foreground submission, as in C dma.
            opts.foreground = True
    elif letter in "fr":
        opts.sender = value
    elif letter == "F":
        opts.full_name = value
    elif letter == "o":
        if value == "i":
            opts.dot_terminates = False
    elif letter == "L":
        opts.tag = value
    elif letter == "q":
        opts.run_queue = True
        opts.queue_arg = value
    elif letter == "C":
        opts.config = value
    elif letter in "NRV":
        opts.dsn[letter] = value
    # -B -d -h -O -X take an argument that is ignored.


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv if argv is None else argv
    prog = argv[0].rpartition("/")[2] if argv else "sendmail"
    try:
        return dispatch(prog, argv[1:])
    except OSError as e:  # what has no precise message still gets one line and a sysexits code
        from .mail.submit import os_failure

        fatal = os_failure(e, f"`{e.filename}'" if e.filename else "")
        sys.stderr.write(f"{prog}: {fatal}\n")
        return fatal.code
    except Fatal as e:
        sys.stderr.write(f"{prog}: {e}\n")
        return e.code
    except KeyboardInterrupt:
        return 130


def run() -> None:
    """The programs' entry point: `main`, then exit at once.

    The message is durable and the output flushed by then; skipping the interpreter's teardown
    (module and object clean-up) is a measurable part of what every cron job's mail costs.
    """
    reopen_closed_outputs()
    code = main()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except OSError:  # a reader that went away (`mailq | head`) is not our failure
            pass
    posix._exit(code)


def reopen_closed_outputs() -> None:
    """Callers such as GNU mailutils start us with only descriptor 0 open: put /dev/null on closed
    descriptors 1 and 2 (as daemons do), so that a write or flush can not fail a queued message."""
    for fd, name in ((1, "stdout"), (2, "stderr")):
        try:
            posix.fstat(fd)
            continue
        except OSError:
            pass
        new = posix.open("/dev/null", posix.O_WRONLY)
        if new != fd:  # descriptor 0 was closed too: leave it closed (not an empty message)
            posix.dup2(new, fd)
            posix.close(new)
        setattr(sys, name, open(fd, "w", encoding="utf-8", errors="backslashreplace", closefd=False))


# `dma <command> ...`: operations C dma never had, each in its own module with a
# `command(prog, name, args) -> int`. Only as `dma`: `sendmail install` still mails a user.
COMMANDS: dict[str, str] = {
    "doctor": "dma.admin.doctor",
    "install": "dma.admin.install",
    "oauth": "dma.mail.oauth",
    "uninstall": "dma.admin.install",
    "queue": "dma.admin.control",
    "serve": "dma.mail.queue",
}


def dispatch(prog: str, args: list[str]) -> int:
    from . import config

    if prog == "dma" and args and args[0] in COMMANDS:
        module = __import__(COMMANDS[args[0]], fromlist=["command"])
        code: int = module.command(prog, args[0], args[1:])
        return code
    if prog == "mailq":
        if args not in ([], ["--json"]):
            raise Fatal(EX_USAGE, "invalid arguments")
        from .admin.control import list_queue

        list_queue(config.load(), sys.stdout, json=bool(args))
        return 0
    if prog == "newaliases":
        return check_aliases(config.load())
    opts = parse_args(args)
    cfg = config.load(opts.config)
    if opts.list_queue:
        from .admin.control import list_queue

        list_queue(cfg, sys.stdout)
        return 0
    if opts.run_queue:
        return run_queue(cfg, opts, prog)
    from .mail.submit import Submission, drops, submit

    if sys.stdin is None:  # descriptor 0 was closed when we started: that is no (empty) message
        raise Fatal(EX_NOINPUT, "standard input is closed, nothing queued")
    if opts.smtp:
        from .mail.bs import Session

        message_ids = Session(cfg, opts.full_name, opts.tag).run()
    else:
        sub = Submission(
            opts.recipients,
            opts.sender,
            dot_terminates=opts.dot_terminates,
            from_headers=opts.from_headers,
            full_name=opts.full_name,
            tag=opts.tag,
        )
        if opts.dsn:
            from .mail.dsn import parameters

            sub.dsn = parameters(opts.dsn.get("N"), opts.dsn.get("R"), opts.dsn.get("V"))
        message_ids = [submit(cfg, sub)[0]]
    if not message_ids or opts.queue_only or cfg.defer or drops(cfg):
        return 0  # a drop is delivered by the system's runner (`dma serve`), not by us
    try:
        return deliver_now(cfg, message_ids, opts, prog)
    except (Fatal, OSError) as e:
        if opts.foreground:
            raise
        # The mail is queued: a caller that saw a failure would send it again.
        sys.stderr.write(f"{prog}: queued as {' '.join(message_ids)}, but {e}\n")
        return 0


def check_aliases(cfg: Config) -> int:
    from .mail.aliases import parse

    problems = parse(cfg.aliases).check()
    for problem in problems:
        sys.stderr.write(f"newaliases: {problem}\n")
    return EX_CONFIG if problems else 0


def run_queue(cfg: Config, opts: Options, prog: str) -> int:
    """`-q`: make every deferred entry due now. `-qI<id>` and `-qR<domain>` flush only those."""
    from .mail.queue import Runner, Selection, wake

    selection = Selection(opts.queue_arg)
    progress = opts.foreground and not opts.verbose and sys.stderr.isatty()
    runner = Runner(cfg, verbose=opts.verbose, progress=progress, name=prog, tag=opts.tag)
    if opts.foreground or selection.selective:
        # Delivered here and now, beside a running runner if there is one: entries are locked one by one.
        runner.run(only=selection if selection.selective else None, force=True)
        runner.summary()
        return 0
    if not runner.acquire():
        wake(cfg, flush=True)
        return 0
    if daemonize():
        return 0
    runner.serve(force=True)
    return 0


def deliver_now(cfg: Config, message_ids: list[str], opts: Options, prog: str) -> int:
    """After a submission: deliver in the foreground (`-D`), or wake or start the runner."""
    from .errors import EX_TEMPFAIL, EX_UNAVAILABLE
    from .mail.queue import Runner, wake

    runner = Runner(cfg, verbose=opts.verbose, report_failures=opts.foreground, name=prog, tag=opts.tag)
    if opts.foreground:
        # -D: deliver this message now, even if a runner is busy, and report the outcome.
        from .mail.queue import Selection

        runner.run(only=Selection("", message_ids), force=True)
        if runner.failed:
            return EX_UNAVAILABLE
        return EX_TEMPFAIL if runner.deferred else 0
    if not runner.acquire():
        wake(cfg)
        return 0
    if daemonize():
        return 0
    runner.serve()
    return 0


def daemonize() -> bool:
    """Fork into the background. True in the parent (which should return), False in the child."""
    try:
        pid = posix.fork()
    except OSError as e:
        raise Fatal(EX_OSERR, f"can not fork: {e.strerror}") from e
    if pid:
        return True
    posix.setsid()
    devnull = posix.open("/dev/null", posix.O_RDWR)
    for fd in (0, 1, 2):
        posix.dup2(devnull, fd)
    posix.close(devnull)
    return False


if __name__ == "__main__":
    run()
