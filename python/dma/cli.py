"""The command line: `sendmail`, `mailq`, `newaliases` and `dma` (the program name picks the mode),
with C dma's options parsed as its glibc getopt does. Modes import heavy modules only when needed."""

from __future__ import annotations

import posix
import sys

from .errors import EX_CONFIG, EX_NOINPUT, EX_TEMPFAIL, EX_UNAVAILABLE, EX_USAGE, Fatal
from .mail import Submission

TYPE_CHECKING = False
if TYPE_CHECKING:
    from .config import Config

WITH_ARGUMENT = set("AbBCdfFhLNoOqrRVX")
FLAGS = set("DintUv")
# An option (with its argument for -b and -o) that sets an attribute; -n -U -B -d -h -O -X do nothing.
SETS = {
    "D": ("foreground", True),
    "i": ("dot_terminates", False),
    "oi": ("dot_terminates", False),
    "t": ("from_headers", True),
    "v": ("verbose", True),
    "bp": ("list_queue", True),
    "bq": ("queue_only", True),
    "bs": ("smtp", True),  # SMTP on stdin and stdout (bs.py); C dma read stdin as the message
}
# An option whose argument is the attribute's value.
TAKES = {"C": "config", "f": "sender", "r": "sender", "F": "full_name", "L": "tag", "q": "queue_arg"}


class Options(Submission):
    """The message's submission as the options ask for it, and the mode and how to deliver."""

    config: str | None = None
    foreground = False
    list_queue = False
    queue_arg: str | None = None  # -q was given
    queue_only = False
    smtp = False
    verbose = False

    def __init__(self) -> None:
        super().__init__([])
        self.dsn_options: dict[str, str] = {}  # -N, -R, -V by letter, for `dsn`


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
            letter, value = arg[j], ""
            j += 1
            if letter in WITH_ARGUMENT:
                value, j = arg[j:], len(arg)
                # -q's argument is optional: C dma's getopt takes the next word unless it is an option.
                if not value and i < len(args) and not (letter == "q" and args[i].startswith("-")):
                    value = args[i]
                    i += 1
                elif not value and letter != "q":
                    raise Fatal(EX_USAGE, f"option requires an argument: `-{letter}'")
            elif letter not in FLAGS:
                raise Fatal(EX_USAGE, f"invalid argument: `-{letter}'")
            if letter == "A" and value not in ("c", "m"):
                letter = "b"
            key = letter + value if letter in "bo" else letter
            if key in SETS:
                setattr(opts, *SETS[key])
            elif letter == "b":
                opts.foreground = True  # -bm, -bi, ... carry on as a foreground submission, as in C dma
            elif letter in TAKES:
                setattr(opts, TAKES[letter], value)
            elif letter in "NRV":
                opts.dsn_options[letter] = value
    queue = opts.queue_arg is not None
    if opts.recipients and (opts.list_queue or queue):
        raise Fatal(EX_USAGE, "sending mail and queue operations are mutually exclusive")
    if opts.recipients and opts.smtp:
        raise Fatal(EX_USAGE, "recipients are given in the SMTP dialogue of -bs, not as arguments")
    if opts.list_queue and queue:
        raise Fatal(EX_USAGE, "conflicting queue operations")
    return opts


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
    """The programs' entry point: `main`, then exit at once, skipping the interpreter's teardown
    (the message is durable and the output flushed by then), which every cron job's mail pays."""
    # Callers such as GNU mailutils start us with only descriptor 0 open: /dev/null goes on closed
    # descriptors 1 and 2 (as daemons do), so that a write or flush can not fail a queued message.
    for fd, name in ((1, "stdout"), (2, "stderr")):
        try:
            posix.fstat(fd)
        except OSError:
            new = posix.open("/dev/null", posix.O_WRONLY)
            if new != fd:  # descriptor 0 was closed too: leave it closed (not an empty message)
                posix.dup2(new, fd)
                posix.close(new)
            setattr(sys, name, open(fd, "w", encoding="utf-8", errors="backslashreplace", closefd=False))
    code = main()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except OSError:  # a reader that went away (`mailq | head`) is not our failure
            pass
    posix._exit(code)


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
        return int(module.command(prog, args[0], args[1:]))
    if prog == "newaliases":
        from .mail.aliases import Aliases

        problems = Aliases(config.Config().aliases).check()
        for problem in problems:
            sys.stderr.write(f"newaliases: {problem}\n")
        return EX_CONFIG if problems else 0
    if prog == "mailq" and args not in ([], ["--json"]):
        raise Fatal(EX_USAGE, "invalid arguments")
    opts = parse_args(["-bp"] if prog == "mailq" else args)
    cfg = config.Config(opts.config)
    if opts.list_queue:
        from .admin.control import list_queue

        list_queue(cfg, sys.stdout, json=args == ["--json"])
        return 0
    if opts.queue_arg is not None:
        return run_queue(cfg, opts, prog)
    from .mail.submit import drops, submit

    if sys.stdin is None:  # descriptor 0 was closed when we started: that is no (empty) message
        raise Fatal(EX_NOINPUT, "standard input is closed, nothing queued")
    if opts.smtp:
        from .mail.bs import Session

        message_ids = Session(cfg, opts.full_name, opts.tag).run()
    else:
        if opts.dsn_options:
            from .mail.bounce import parameters

            opts.dsn = parameters(*(opts.dsn_options.get(letter) for letter in "NRV"))
        message_ids = [submit(cfg, opts)]
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


def run_queue(cfg: Config, opts: Options, prog: str) -> int:
    """`-q`: make every deferred entry due now. `-qI<id>` and `-qR<domain>` flush only those."""
    from .mail.queue import Runner, selection, take_over

    only = selection(opts.queue_arg or "")
    progress = opts.foreground and not opts.verbose and sys.stderr.isatty()
    runner = Runner(cfg, verbose=opts.verbose, progress=progress, name=prog, tag=opts.tag)
    if not (opts.foreground or only):
        return take_over(runner, flush=True)
    # Delivered here and now, beside a running runner if there is one: entries are locked one by one.
    runner.run(only=only, force=True)
    if progress:
        sys.stderr.write("\n")
    if progress or opts.verbose:  # the totals, on a terminal or with -v
        sys.stderr.write(f"{prog}: {runner.counts()}, {runner.bounces} bounces queued\n")
    return 0


def deliver_now(cfg: Config, message_ids: list[str], opts: Options, prog: str) -> int:
    """After a submission: deliver in the foreground (`-D`), or wake or start the runner."""
    from .mail.submit import runner_running

    if not opts.foreground and runner_running(cfg):
        return 0  # without importing the runner: this is every call but the first of a burst
    from .mail.queue import Runner, selection, take_over

    runner = Runner(cfg, verbose=opts.verbose, report_failures=opts.foreground, name=prog, tag=opts.tag)
    if not opts.foreground:
        return take_over(runner)
    # -D: deliver this message now, even if a runner is busy, and report the outcome.
    runner.run(only=selection("", message_ids), force=True)
    if runner.done["failed"]:
        return EX_UNAVAILABLE
    return EX_TEMPFAIL if runner.done["deferred"] else 0


if __name__ == "__main__":
    run()
