"""`dma queue` (dma.8): look at, hold, release, delete and bounce queue entries by id."""

from __future__ import annotations

import os
import sys
import time

from dma import _native, config
from dma.errors import EX_NOINPUT, EX_NOPERM, EX_TEMPFAIL, EX_USAGE, Fatal, getopts
from dma.mail import drop

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Callable, TextIO

    from dma.config import Config

    Error = Callable[[str, int], None]  # says a problem on stderr, with the exit status it calls for

USAGE = "usage: dma queue [-C FILE] list [--json] | show ID | hold|release|delete|bounce ID..."
BOUNCE_TEXT = "bounced by the administrator"
# The fields of an entry in `mailq --json` (docs/spool.md), then last_error and state.
FIELDS = ("id", "message_id", "sender", "recipient", "created", "size", "attempts", "next_attempt")
SUBCOMMANDS = ("list", "show", "hold", "release", "delete", "bounce")


def queue_entries(cfg: Config) -> list[_native.QueueEntry]:
    try:
        return _native.scan_queue(cfg.spooldir) if os.path.isdir(cfg.spooldir) else []
    except PermissionError:
        # System mode: the spool is the runner's (root's) alone, as is every queued message.
        raise Fatal(EX_NOPERM, f"the queue in `{cfg.spooldir}' can be used by root only") from None


def list_queue(cfg: Config, out: TextIO, *, json: bool = False) -> None:
    """Print the queue in C dma's `mailq` format (monitoring scripts parse it), or as JSON: the
    spool's entries, then (system mode) users' mail still waiting in the drop directory."""
    rows = [entry_row(e) for e in queue_entries(cfg)]
    for ident, sender, recipients, st in drop.waiting(cfg):
        for n, rcpt in enumerate(recipients, 1):
            values = (f"{ident}.{n}", ident, sender, rcpt, int(st.st_mtime), st.st_size, 0, 0)
            rows.append({**dict(zip(FIELDS, values)), "last_error": None, "state": "incoming"})
    if json:
        import json as json_module

        out.write(json_module.dumps(rows, indent=1) + "\n")
    elif rows:
        out.write(
            "--\n".join(f"ID\t: {r['id']}\nFrom\t: {r['sender']}\nTo\t: {r['recipient']}\n" for r in rows)
        )
    else:
        out.write("Mail queue is empty\n")


def entry_row(e: _native.QueueEntry) -> dict[str, object]:
    """One entry for `mailq --json`, with its state (the fields of docs/spool.md)."""
    row: dict[str, object] = {name: getattr(e, name) for name in FIELDS}
    row["last_error"] = e.last_error or None
    row["state"] = e.state or ("deferred" if e.attempts else "queued")
    return row


def command(prog: str, name: str, args: list[str]) -> int:
    opts, words = getopts(args, USAGE, "C:", ("json",))
    sub, *ids = words or [""]
    # list takes no ID (and only it takes --json), show one, the others one or more.
    ids_ok = {"list": not ids, "show": len(ids) == 1}.get(sub, bool(ids))
    if sub not in SUBCOMMANDS or not ids_ok or ("--json" in opts and sub != "list"):
        raise Fatal(EX_USAGE, USAGE)
    cfg = config.Config(opts.get("-C"))
    if sub == "list":
        list_queue(cfg, sys.stdout, json="--json" in opts)
        return 0
    problems: list[int] = []  # the exit status of each error said

    def error(text: str, code: int) -> None:
        sys.stderr.write(f"{prog} {name}: {text}\n")
        problems.append(code)

    entries = select(cfg, ids, error)  # first: it says so in one line when the queue is not ours
    if sub == "show":
        show(cfg, entries, error)
    else:
        apply(cfg, entries, sub, error)
    # An unknown id is the more final answer: retrying (75) cannot help it.
    return EX_NOINPUT if EX_NOINPUT in problems else max(problems, default=0)


def select(cfg: Config, ids: list[str], error: Error) -> list[_native.QueueEntry]:
    """The entries named by `ids` (entry or message ids), in queue order, without repeats."""
    entries = queue_entries(cfg)
    chosen: dict[str, _native.QueueEntry] = {}
    for ident in ids:
        found = [e for e in entries if ident in (e.id, e.message_id)]
        if not found:
            error(f"{ident}: no such queue entry or message", EX_NOINPUT)
        for e in found:
            chosen.setdefault(e.id, e)
    return list(chosen.values())


def show(cfg: Config, entries: list[_native.QueueEntry], error: Error) -> None:
    """Each entry's envelope (`--` between them, as in mailq), a blank line, the message."""
    import shutil

    if not entries:
        return
    sys.stdout.write("--\n".join(envelope(e) for e in entries) + "\n")
    sys.stdout.flush()
    try:
        with open(os.path.join(cfg.spooldir, "M" + entries[0].id), "rb") as f:
            shutil.copyfileobj(f, sys.stdout.buffer)
    except OSError as e:
        error(f"{entries[0].id}: can not read the message: {e.strerror or e}", EX_NOINPUT)
    sys.stdout.buffer.flush()


def apply(cfg: Config, entries: list[_native.QueueEntry], sub: str, error: Error) -> None:
    """Make the change `sub` to each entry, under its lock."""
    changed = 0
    spool = _native.Spool(cfg.spooldir)
    for e in entries:
        claimed = spool.claim([e.id])
        if not claimed:
            if os.path.exists(os.path.join(cfg.spooldir, "Q" + e.id)):
                error(f"{e.id}: being delivered right now (locked); try again", EX_TEMPFAIL)
            else:
                error(f"{e.id}: no longer in the queue", EX_NOINPUT)
            continue
        entry = claimed[0]  # as it is now, under the lock
        try:
            text = change(spool, entry, sub)
        finally:
            spool.release(entry.id)
        changed += 1
        sys.stdout.write(f"{entry.id}: {text} (<{entry.sender}> -> {entry.recipient})\n")
    sys.stdout.flush()
    if sub in ("release", "bounce") and changed:
        from dma.mail.queue import wake

        wake(cfg)


def change(spool: _native.Spool, e: _native.QueueEntry, sub: str) -> str:
    """Make the change `sub` to the claimed entry `e`; returns what was done."""
    if sub == "delete":
        spool.remove(e.id)
        spool.sync()
        return "deleted"
    if sub == "hold" and e.state == "held":
        return "already held"
    if sub == "hold":
        state, due, error, text = "held", e.next_attempt, e.last_error, "held"
    elif sub == "release":
        state, due, error, text = "", 0, e.last_error, "released, due now" if e.state else "due now"
    else:  # bounce
        state, due, error = "failed", 0, BOUNCE_TEXT
        text = "marked failed, to be bounced on the next queue run"
        if not e.sender:
            text = "marked failed; it has no sender, so it will be held for the postmaster"
    spool.record(e.id, attempts=e.attempts, next_attempt=due, last_error=error, state=state)
    return text


def envelope(e: _native.QueueEntry) -> str:
    def when(t: int) -> str | None:
        return time.strftime("%Y-%m-%d %H:%M:%S %z", time.localtime(t)) if t else None

    fields = {
        "ID": e.id,
        "Sender": f"<{e.sender}>",
        "Recipient": e.recipient,
        "Created": when(e.created),
        "Size": e.size,
        "State": entry_row(e)["state"],
        "Attempts": e.attempts,
        "Next-Attempt": when(e.next_attempt),
        "Last-Error": e.last_error or None,
    }
    return "".join(f"{name}: {value}\n" for name, value in fields.items() if value is not None)
