"""`dma queue ...`: look at, hold, release, delete and bounce queue entries by id.

    dma queue [-C FILE] list [--json]
    dma queue [-C FILE] show ID
    dma queue [-C FILE] hold ID...
    dma queue [-C FILE] release ID...
    dma queue [-C FILE] delete ID...
    dma queue [-C FILE] bounce ID...

An ID is an entry id (`<message id>.<n>`, one recipient) or a message id (all its entries).
Every change is made under the entry's lock, as the runner makes its own: an entry a runner is
delivering at this moment is reported and left alone (exit 75, EX_TEMPFAIL; nothing waits). An
unknown id is exit 66 (EX_NOINPUT). Both only for their own ids: the others are still done.

`hold` sets the state `held`, which the runner never retries (it is one of queue.FINAL_STATES);
`release` makes an entry due now (state cleared, Next-Attempt 0), entries held for the postmaster
included; `bounce` marks entries `failed`, so the runner's settle() bounces them to their sender on
its next pass; `delete` removes them without a bounce.
"""

from __future__ import annotations

import os
import sys
import time

from dma.errors import EX_NOINPUT, EX_NOPERM, EX_TEMPFAIL, EX_USAGE, Fatal

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import TextIO

    from dma import _native
    from dma.config import Config

USAGE = "usage: dma queue [-C FILE] list [--json] | show ID | hold|release|delete|bounce ID..."
BOUNCE_TEXT = "bounced by the administrator"


def queue_entries(cfg: Config) -> list[_native.QueueEntry]:
    from dma import _native

    try:
        return _native.scan_queue(cfg.spooldir)[0] if os.path.isdir(cfg.spooldir) else []
    except PermissionError:
        # System mode: the spool is the runner's (root's) alone, as is every queued message.
        raise Fatal(EX_NOPERM, f"the queue in `{cfg.spooldir}' can be used by root only") from None


def list_queue(cfg: Config, out: TextIO, *, json: bool = False) -> None:
    """Print the queue in C dma's `mailq` format (monitoring scripts parse it), or as JSON: the
    spool's entries, then (system mode) users' mail still waiting in the drop directory."""
    from dma.mail import drop

    rows = [entry_row(e) for e in queue_entries(cfg)]
    for ident, sender, recipients, st in drop.waiting(cfg):
        for n, rcpt in enumerate(recipients, 1):
            rows.append(
                {
                    "id": f"{ident}.{n}",
                    "message_id": ident,
                    "sender": sender,
                    "recipient": rcpt,
                    "created": int(st.st_mtime),
                    "size": st.st_size,
                    "attempts": 0,
                    "next_attempt": 0,
                    "last_error": None,
                    "state": "incoming",
                }
            )
    if json:
        import json as json_module

        json_module.dump(rows, out, indent=1)
        out.write("\n")
        return
    if not rows:
        out.write("Mail queue is empty\n")
        return
    blocks = [f"ID\t: {r['id']}\nFrom\t: {r['sender']}\nTo\t: {r['recipient']}\n" for r in rows]
    out.write("--\n".join(blocks))


def entry_row(e: _native.QueueEntry) -> dict[str, object]:
    """One entry for `mailq --json`, with its state (the fields of docs/spool.md)."""
    fields = ("id", "message_id", "sender", "recipient", "created", "size", "attempts", "next_attempt")
    row: dict[str, object] = {name: getattr(e, name) for name in fields}
    row["last_error"] = e.last_error or None
    row["state"] = e.state or ("deferred" if e.attempts else "queued")
    return row


SUBCOMMANDS = ("list", "show", "hold", "release", "delete", "bounce")


def command(prog: str, name: str, args: list[str]) -> int:
    from dma import config

    conf_path, sub, rest = parse_args(args)
    cfg = config.load(conf_path)
    ctl = Control(cfg, f"{prog} {name}")
    if sub == "list":
        return ctl.listing(rest)
    if sub == "show":
        if len(rest) != 1:
            raise Fatal(EX_USAGE, f"show takes one ID ({USAGE})")
        return ctl.show(rest[0])
    if not rest:
        raise Fatal(EX_USAGE, f"{sub} needs at least one ID ({USAGE})")
    change: Callable[[_native.Spool, _native.QueueEntry], str] = getattr(ctl, sub)
    return ctl.apply(rest, change, wake=sub in ("release", "bounce"))


def parse_args(args: list[str]) -> tuple[str | None, str, list[str]]:
    """(config path, subcommand, its arguments). `-C FILE` may come before or after the subcommand."""
    conf_path: str | None = None
    words: list[str] = []
    i = 0
    while i < len(args):
        arg = args[i]
        if arg == "-C":
            if i + 1 >= len(args):
                raise Fatal(EX_USAGE, f"option requires an argument: `-C' ({USAGE})")
            conf_path = args[i + 1]
            i += 2
            continue
        if arg.startswith("-C") and len(arg) > 2:
            conf_path = arg[2:]
        elif arg in ("-h", "--help"):
            raise Fatal(EX_USAGE, USAGE)
        else:
            words.append(arg)
        i += 1
    if not words or words[0] not in SUBCOMMANDS:
        what = f"unknown subcommand `{words[0]}'" if words else "missing subcommand"
        raise Fatal(EX_USAGE, f"{what} ({USAGE})")
    return conf_path, words[0], words[1:]


class Control:
    def __init__(self, cfg: Config, name: str) -> None:
        self.cfg = cfg
        self.name = name
        self.code = 0

    def error(self, text: str, code: int) -> None:
        sys.stderr.write(f"{self.name}: {text}\n")
        # An unknown id is the more final answer: retrying (75) cannot help it.
        if code == EX_NOINPUT or self.code == 0:
            self.code = code

    def select(self, ids: list[str]) -> list[_native.QueueEntry]:
        """The entries named by `ids` (entry or message ids), in queue order, without repeats."""
        entries = queue_entries(self.cfg)
        chosen: dict[str, _native.QueueEntry] = {}
        for ident in ids:
            found = [e for e in entries if ident in (e.id, e.message_id)]
            if not found:
                self.error(f"{ident}: no such queue entry or message", EX_NOINPUT)
            for e in found:
                chosen.setdefault(e.id, e)
        return list(chosen.values())

    # ---- read-only ----------------------------------------------------------------------------

    def listing(self, args: list[str]) -> int:
        if args not in ([], ["--json"]):
            raise Fatal(EX_USAGE, f"list takes only --json ({USAGE})")
        list_queue(self.cfg, sys.stdout, json=bool(args))
        return 0

    def show(self, ident: str) -> int:
        """The envelope of each entry (separated by `--` lines, as in mailq), a blank line, then
        the message as spooled."""
        entries = self.select([ident])
        if not entries:
            return self.code
        out = sys.stdout
        out.write("--\n".join(envelope(e) for e in entries))
        out.write("\n")
        out.flush()
        path = os.path.join(self.cfg.spooldir, "M" + entries[0].id)
        try:
            with open(path, "rb") as f:
                while chunk := f.read(65536):
                    sys.stdout.buffer.write(chunk)
        except OSError as e:
            self.error(f"{entries[0].id}: can not read the message: {e.strerror or e}", EX_NOINPUT)
        sys.stdout.buffer.flush()
        return self.code

    # ---- changes, each under the entry's lock ---------------------------------------------------

    def apply(
        self, ids: list[str], change: Callable[[_native.Spool, _native.QueueEntry], str], *, wake: bool
    ) -> int:
        from dma import _native

        changed = 0
        selected = self.select(ids)  # first: it says so in one line when the queue is not ours
        spool = _native.Spool(self.cfg.spooldir)
        for e in selected:
            claimed = spool.claim([e.id])
            if not claimed:
                if os.path.exists(os.path.join(self.cfg.spooldir, "Q" + e.id)):
                    self.error(f"{e.id}: being delivered right now (locked); try again", EX_TEMPFAIL)
                else:
                    self.error(f"{e.id}: no longer in the queue", EX_NOINPUT)
                continue
            entry = claimed[0]  # as it is now, under the lock
            try:
                text = change(spool, entry)
            finally:
                spool.release(entry.id)
            changed += 1
            sys.stdout.write(f"{entry.id}: {text} ({display(entry.sender)} -> {entry.recipient})\n")
        sys.stdout.flush()
        if wake and changed:
            from dma.mail.queue import wake as wake_runner

            wake_runner(self.cfg)
        return self.code

    def hold(self, spool: _native.Spool, e: _native.QueueEntry) -> str:
        if e.state == "held":
            return "already held"
        spool.record(
            e.id, attempts=e.attempts, next_attempt=e.next_attempt, last_error=e.last_error, state="held"
        )
        return "held"

    def release(self, spool: _native.Spool, e: _native.QueueEntry) -> str:
        spool.record(e.id, attempts=e.attempts, next_attempt=0, last_error=e.last_error, state="")
        return "released, due now" if e.state else "due now"

    def delete(self, spool: _native.Spool, e: _native.QueueEntry) -> str:
        spool.remove(e.id)
        spool.sync()
        return "deleted"

    def bounce(self, spool: _native.Spool, e: _native.QueueEntry) -> str:
        spool.record(e.id, attempts=e.attempts, next_attempt=0, last_error=BOUNCE_TEXT, state="failed")
        if not e.sender:
            return "marked failed; it has no sender, so it will be held for the postmaster"
        return "marked failed, to be bounced on the next queue run"


def display(sender: str) -> str:
    return f"<{sender}>"


def envelope(e: _native.QueueEntry) -> str:
    def when(t: int) -> str:
        return time.strftime("%Y-%m-%d %H:%M:%S %z", time.localtime(t))

    lines = [
        f"ID: {e.id}",
        f"Sender: {display(e.sender)}",
        f"Recipient: {e.recipient}",
        f"Created: {when(e.created)}",
        f"Size: {e.size}",
        f"State: {e.state or ('deferred' if e.attempts else 'queued')}",
        f"Attempts: {e.attempts}",
    ]
    if e.next_attempt:
        lines.append(f"Next-Attempt: {when(e.next_attempt)}")
    if e.last_error:
        lines.append(f"Last-Error: {e.last_error}")
    return "\n".join(lines) + "\n"
