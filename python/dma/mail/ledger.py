"""What the queue runner writes down: each outcome into the spool, bounces for messages that
failed for good, log lines and the counts of a run. The scheduling is queue.py's."""

from __future__ import annotations

import posix
import sys
import time

from dma.errors import EX_TEMPFAIL, Fatal

TYPE_CHECKING = False
if TYPE_CHECKING:
    from dma import _native
    from dma.config import Config

    from .log import Log


class Ledger:
    """The recording half of the runner (queue.Runner)."""

    cfg: Config
    events: Log
    name: str
    verbose: bool
    report_failures: bool
    progress: bool
    if TYPE_CHECKING:

        @property
        def spool(self) -> _native.Spool: ...

    def __init__(self) -> None:
        self.total = self.bounces = 0
        self.sent = self.deferred = self.failed = 0
        self.finals: set[str] = set()  # messages with an entry newly failed for good

    def sync(self) -> None:
        try:
            self.spool.sync()
        except OSError as e:
            raise Fatal(EX_TEMPFAIL, f"can not sync `{self.cfg.spooldir}': {e.strerror or e}") from None

    def settle(self, message_ids: set[str]) -> int:
        """Bounce each of these messages whose remaining recipients have all failed, once per
        message; returns the number of bounces queued."""
        self.finals.clear()
        queued = 0
        for message_id in message_ids:
            group = self.spool.message_entries(message_id)
            if not group or not all(e.state == "failed" for e in group):
                continue
            held = self.spool.claim([e.id for e in group])
            try:
                if len(held) == len(group):  # else someone else is working on it
                    queued += self.bounce(held)
            finally:
                for e in held:
                    self.spool.release(e.id)
        return queued

    def bounce(self, failed: list[_native.QueueEntry]) -> int:
        """Queue one message's bounce, or hold its entries for the postmaster when the bounce
        itself failed (null sender) or can not be queued."""
        from . import bounce

        first = failed[0]
        if first.sender and not bounce.wants_failure_report(first.dsn):
            self.log(bounce.discard(self.spool, failed), event="failed")
            return 0
        reason = "a bounce that could not be delivered"
        if first.sender:
            try:
                bounce_id = bounce.send(self.cfg, failed, self.spool.message_path(first.id))
            except (Fatal, OSError, ValueError) as error:
                reason = f"the bounce could not be queued: {error}"
            else:
                for e in failed:
                    self.spool.remove(e.id)
                self.sync()
                self.bounces += 1
                self.log(
                    f"{first.message_id}: bounced to <{first.sender}> as {bounce_id}",
                    event="bounced",
                    level="notice",
                    id=first.message_id,
                    to=first.sender,
                    bounce=bounce_id,
                )
                return 1
        for e in failed:
            last_error = f"{e.last_error}; held: {reason}"
            self.spool.record(e.id, attempts=e.attempts, next_attempt=0, last_error=last_error, state="held")
        self.log(
            f"{first.message_id}: held for the postmaster: {reason}",
            failure=True,
            event="held",
            level="crit",
            id=first.message_id,
        )
        return 0

    def record(self, entry: _native.QueueEntry, status: str, text: str) -> None:
        """Write an entry's outcome ("sent", "temporary" or "permanent") into the spool. A spool that
        takes no writes (full, read-only) ends the run: what cannot be recorded must not be sent
        any further. A permanent failure stays, marked failed, until its bounce takes it over."""
        text = text.replace("\n", " ").replace("\r", " ")
        attempts = entry.attempts + 1
        final = status == "permanent" or time.time() - entry.created > self.cfg.max_queue_time
        # RETRY_MIN doubling up to RETRY_MAX, ±25% (jitter from urandom: no `random` import)
        delay = min(self.cfg.retry_max, self.cfg.retry_min * (2 ** min(attempts - 1, 30)))
        jitter = int.from_bytes(posix.urandom(2), "big") / 65535.0
        next_attempt = 0 if final else int(time.time()) + max(1, int(delay * (0.75 + jitter / 2)))
        try:
            if status == "sent":
                self.spool.remove(entry.id)  # synced once for all the finished jobs, in `collect`
            else:
                state = "failed" if final else ""
                self.spool.record(
                    entry.id, attempts=attempts, next_attempt=next_attempt, last_error=text, state=state
                )
        except OSError as e:
            text = f"can not record the outcome of {entry.id} in `{self.cfg.spooldir}': {e.strerror or e}"
            self.events.event("crit", "error", text, id=entry.id)
            raise Fatal(EX_TEMPFAIL, f"{text}; stopping") from None
        if status == "sent":
            self.sent += 1
            self.log(
                f"{entry.id}: delivered to {entry.recipient}",
                event="delivered",
                id=entry.id,
                to=entry.recipient,
                sender=entry.sender,
                detail=text or None,
            )
            return
        if final:
            self.failed += 1
            self.finals.add(entry.message_id)
        else:
            self.deferred += 1
        word = "failed" if final else "deferred"
        self.log(
            f"{entry.id}: delivery to {entry.recipient} {word}: {text}",
            failure=True,
            event=word,
            level="err" if final else "notice",
            id=entry.id,
            to=entry.recipient,
            sender=entry.sender,
            attempts=attempts,
            next_attempt=next_attempt or None,
            detail=text,
        )

    def counts(self) -> str:
        return f"{self.sent} sent, {self.deferred} deferred, {self.failed} failed"

    def summary(self) -> None:
        """The end of a foreground run: the totals, on a terminal or with -v."""
        if self.progress:
            sys.stderr.write("\n")
        if self.progress or self.verbose:
            sys.stderr.write(f"{self.name}: {self.counts()}, {self.bounces} bounces queued\n")

    def log(
        self, text: str, *, event: str, level: str = "info", failure: bool = False, **fields: str | int | None
    ) -> None:
        """An outcome: to syslog and LOGFILE always; to stderr with -v, or for failures with -D;
        the progress line on a terminal."""
        self.events.event(level, event, text.partition(": ")[2] if "id" in fields else text, **fields)
        if self.progress:
            remaining = max(self.total - self.sent - self.deferred - self.failed, 0)
            sys.stderr.write(f"\r{self.counts()}, {remaining} remaining ")
            sys.stderr.flush()
        if self.verbose or (failure and self.report_failures):
            sys.stderr.write(f"{self.name}: {text}\n")
