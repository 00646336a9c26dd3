"""The queue runner: delivers what is due (docs/runner.md). `mailq` lives in control.py.

One runner per spool, held by an `flock` on `<spool>/lock`; a second `dma -q` touches
`<spool>/flush` to wake the running one instead of starting another. Each entry is claimed (locked)
before delivery and its outcome is recorded durably as soon as it is known.
"""

from __future__ import annotations

import fcntl
import os
import sys
import time

from . import _native
from .drop import NAME as DROP
from .errors import EX_TEMPFAIL, Fatal
from .log import Log
from .routing import is_local

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Iterator

    from .config import Config
    from .remote import Destination, Transaction

STALE_AGE = 24 * 3600
# Entries claimed at once (each holds its queue file open and locked): a batch's messages share
# connections, so it should be large; the runner raises its open-file limit to allow it.
BATCH = 1000
# "failed": waiting for its bounce; "held": kept for the postmaster, never retried by itself.
FINAL_STATES = ("failed", "held")
POLL = 1.0


class Selection:
    """The entries `-qI<id>` (a message or entry id) or `-qR<domain>` (a recipient domain) flush."""

    __slots__ = ("domain", "ident")

    def __init__(self, queue_arg: str) -> None:
        kind, value = queue_arg[:1], queue_arg[1:]
        self.ident = value if kind == "I" and value else None
        self.domain = value.lower() if kind == "R" and value else None

    @property
    def selective(self) -> bool:
        return self.ident is not None or self.domain is not None

    def wants(self, e: _native.QueueEntry) -> bool:
        if self.ident is not None and self.ident not in (e.id, e.message_id):
            return False
        return self.domain is None or e.recipient.rpartition("@")[2].lower() == self.domain


class Outcome:
    __slots__ = ("status", "text")

    def __init__(self, status: str, text: str = "") -> None:
        self.status = status  # "sent", "temporary" or "permanent"
        self.text = text.replace("\n", " ").replace("\r", " ")


def retry_delay(cfg: Config, attempts: int) -> int:
    """Backoff after `attempts` failed tries: RETRY_MIN doubling to RETRY_MAX, with ±25% jitter."""
    base = min(cfg.retry_max, cfg.retry_min * (2 ** min(attempts - 1, 30)))
    jitter = int.from_bytes(os.urandom(2), "big") / 65535.0  # 0..1, without importing random
    return max(1, int(base * (0.75 + jitter / 2)))


class Runner:
    """Delivers due entries of one spool; see the module docstring."""

    def __init__(
        self,
        cfg: Config,
        *,
        verbose: bool = False,
        report_failures: bool = False,
        progress: bool = False,
        name: str = "dma",
        tag: str = "dma",
    ) -> None:
        self.cfg = cfg
        self.name = name
        self.events = Log(cfg, tag)
        self.unsynced = False  # entries removed since the spool directory was last synced
        # Only the spool's owner may take drops (and only it can read them).
        self.system_drop = not cfg.user_mode and os.path.isdir(os.path.join(cfg.spooldir, DROP))
        self.verbose = verbose
        self.report_failures = report_failures
        self.progress = progress
        self.total = self.bounces = 0
        self.lock_fd = -1
        self.sent = self.deferred = self.failed = 0

    @staticmethod
    def batch_size() -> int:
        """Raise the soft open-file limit toward the hard one, for BATCH open queue files; returns
        the batch size the limit allows."""
        import resource

        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        wanted = BATCH + 256
        if soft != resource.RLIM_INFINITY and soft < wanted:
            soft = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
            resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
        return BATCH if soft == resource.RLIM_INFINITY else max(16, min(BATCH, soft - 256))

    def acquire(self) -> bool:
        path = os.path.join(self.cfg.spooldir, "lock")
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except OSError as e:
            from .submit import os_failure

            raise os_failure(e, f"can not lock the queue in `{self.cfg.spooldir}'") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
        self.lock_fd = fd
        return True

    def release(self) -> None:
        if self.lock_fd >= 0:
            os.close(self.lock_fd)
            self.lock_fd = -1

    def signal_mtime(self, name: str) -> float:
        try:
            return os.stat(os.path.join(self.cfg.spooldir, name)).st_mtime
        except FileNotFoundError:
            return 0.0

    def run(self, *, only: Selection | None = None, force: bool = False, resident: bool = False) -> None:
        """Deliver due entries (those `only` selects, when given).

        `force` makes deferred entries due now. `resident` keeps the runner alive, sleeping until
        the next retry or a wake-up, while entries are pending.
        """
        _native.clean_stale(self.cfg.spooldir, STALE_AGE)
        batch = self.batch_size()
        while True:
            self.pick_up()
            self.replay_journal()
            flush_seen = self.signal_mtime("flush")
            wake_seen = self.signal_mtime("wake")
            drop_seen = self.signal_mtime(DROP)
            entries, _ = _native.scan_queue(self.cfg.spooldir)
            now = time.time()
            due = [
                e.id
                for e in entries
                if e.state not in FINAL_STATES
                and (only is None or only.wants(e))
                and (force or e.next_attempt <= now)
            ]
            self.total += len(due)
            for start in range(0, len(due), batch):
                self.deliver(due[start : start + batch])
            bounces = self.settle()
            force = False
            taken, waits = self.pick_up()
            if bounces or taken:
                continue  # deliver the bounces, and drops that came meanwhile, in this run too
            if not resident:
                return
            entries, _ = _native.scan_queue(self.cfg.spooldir)
            waiting = [e.next_attempt for e in entries if e.state not in FINAL_STATES]
            waiting += [int(time.time()) + 10] * waits  # a drop waiting: we try again, not dma.path
            if not waiting:
                return
            wake_at = min(waiting)
            while (
                time.time() < wake_at
                and self.signal_mtime("flush") == flush_seen
                and self.signal_mtime("wake") == wake_seen
                and self.signal_mtime(DROP) == drop_seen
            ):
                time.sleep(POLL)
            force = self.signal_mtime("flush") != flush_seen

    def serve(self, *, force: bool = False) -> None:
        """Run resident until the queue is idle, then release the lock.

        After releasing, look once more: a submission that found the lock held just before we let
        go relies on this look to have its message delivered.
        """
        while True:
            self.run(force=force, resident=True)
            self.release()
            now = time.time()
            entries, _ = _native.scan_queue(self.cfg.spooldir)
            if not any(e.state not in FINAL_STATES and e.next_attempt <= now for e in entries):
                return
            if not self.acquire():
                return
            force = False

    def pick_up(self) -> tuple[int, int]:
        """System mode: take what users left in the drop directory; (taken, waiting) drops."""
        from .drop import pick_up

        return pick_up(self.cfg, self.events) if self.system_drop else (0, 0)  # its mtime wakes us

    def replay_journal(self) -> None:
        """Remove entries the server confirmed before a crash kept us from recording it.

        The journal files go only after their entries: a crash in between replays them again.
        """
        entry_ids, journals = _native.journal_take(self.cfg.spooldir)
        for entry_id in entry_ids:
            claim = _native.claim(self.cfg.spooldir, entry_id)
            if claim is not None:
                entry = claim.entry
                claim.remove(sync=False)
                self.log(
                    f"{entry_id}: delivered to {entry.recipient} (confirmed before a restart)",
                    event="delivered",
                    id=entry_id,
                    to=entry.recipient,
                )
        if journals:
            _native.sync_dir(self.cfg.spooldir)  # the removals are durable before their record goes
        for journal in journals:
            os.unlink(journal)

    def deliver(self, entry_ids: list[str]) -> None:
        """Claim and deliver these entries: local ones one by one, remote ones grouped by
        destination so that every message for the same hosts goes over one connection."""
        from .remote import Transaction, destination

        claims: dict[str, tuple[_native.Claim, _native.QueueEntry]] = {}
        groups: dict[str, tuple[Destination, dict[str, Transaction]]] = {}
        try:
            for entry_id in entry_ids:
                claim = _native.claim(self.cfg.spooldir, entry_id)
                if claim is None:
                    continue  # another process has it, or it is gone
                entry = claim.entry
                claims[entry_id] = (claim, entry)
                if is_local(entry.recipient):
                    self.record(claim, entry, self.deliver_local(entry, str(claim.message_path)))
                    continue
                dest = destination(self.cfg, entry.sender, entry.recipient)
                by_message = groups.setdefault(dest.key, (dest, {}))[1]
                transaction = by_message.get(entry.message_id)
                if transaction is None:
                    transaction = by_message[entry.message_id] = Transaction(
                        entry.sender, str(claim.message_path), entry.dsn
                    )
                transaction.recipients.append(entry.recipient)
                transaction.entry_ids.append(entry_id)
            for results in self.deliver_remote(list(groups.values())):
                for entry_id, (status, text) in results.items():
                    claim, entry = claims[entry_id]
                    self.record(claim, entry, Outcome(status, text))
        finally:
            for claim, _ in claims.values():
                claim.release()
            if self.unsynced:
                self.unsynced = False
                try:
                    _native.sync_dir(self.cfg.spooldir)
                except OSError as e:
                    raise Fatal(
                        EX_TEMPFAIL, f"can not sync `{self.cfg.spooldir}': {e.strerror or e}"
                    ) from None

    def deliver_remote(
        self, groups: list[tuple[Destination, dict[str, Transaction]]]
    ) -> Iterator[dict[str, tuple[str, str]]]:
        """Sessions in parallel: up to CONCURRENCY in all and HOST_CONCURRENCY per destination,
        each carrying its share of the messages. Yields each session's results as it ends."""
        from concurrent.futures import ThreadPoolExecutor, as_completed

        jobs: list[tuple[Destination, list[Transaction]]] = []
        for dest, by_message in groups:
            transactions = list(by_message.values())
            share = min(self.cfg.host_concurrency, len(transactions))
            jobs += [(dest, transactions[i::share]) for i in range(share)]
        if not jobs:
            return
        with ThreadPoolExecutor(max_workers=min(self.cfg.concurrency, len(jobs))) as pool:
            futures = [pool.submit(self.session, dest, part) for dest, part in jobs]
            for future in as_completed(futures):
                yield future.result()

    def session(self, dest: Destination, part: list[Transaction]) -> dict[str, tuple[str, str]]:
        """One job of `deliver_remote`. An unexpected error defers this job's entries (and is
        logged) instead of ending the whole run."""
        from .remote import deliver, failed_all

        try:
            return deliver(self.cfg, dest, part, verbose=self.verbose, events=self.events)
        except Exception as e:  # the rest of the queue must still be delivered
            text = f"internal error, will retry: {type(e).__name__}: {e}"
            self.events.event("crit", "error", text)
            return failed_all(part, "temporary", text)

    def settle(self) -> int:
        """Bounce each message whose remaining recipients have all failed: one bounce per message.

        A failed bounce (null sender), or a bounce that cannot be queued, is held in the queue for
        the postmaster instead. Returns the number of bounces queued.
        """
        from . import bounce

        queued = 0
        entries, _ = _native.scan_queue(self.cfg.spooldir)
        by_message: dict[str, list[_native.QueueEntry]] = {}
        for e in entries:
            by_message.setdefault(e.message_id, []).append(e)
        for group in by_message.values():
            if not all(e.state == "failed" for e in group):
                continue
            claims = [_native.claim(self.cfg.spooldir, e.id) for e in group]
            held = [c for c in claims if c is not None]
            try:
                if len(held) != len(group):
                    continue  # someone else is working on it
                failed = [c.entry for c in held]
                if failed[0].sender and not bounce.wants_failure_report(failed[0].dsn):
                    self.log(bounce.discard(held), event="failed")
                    continue
                reason = "a bounce that could not be delivered" if not failed[0].sender else ""
                if not reason:
                    try:
                        bounce_id = bounce.send(self.cfg, failed, str(held[0].message_path))
                    except (Fatal, OSError, ValueError) as error:
                        reason = f"the bounce could not be queued: {error}"
                    else:
                        for c in held:
                            c.remove()
                        queued += 1
                        self.bounces += 1
                        self.log(
                            f"{failed[0].message_id}: bounced to <{failed[0].sender}> as {bounce_id}",
                            event="bounced",
                            level="notice",
                            id=failed[0].message_id,
                            to=failed[0].sender,
                            bounce=bounce_id,
                        )
                        continue
                for c, entry in zip(held, failed):
                    c.record(
                        attempts=entry.attempts,
                        next_attempt=0,
                        last_error=f"{entry.last_error}; held: {reason}",
                        state="held",
                    )
                self.log(
                    f"{failed[0].message_id}: held for the postmaster: {reason}",
                    failure=True,
                    event="held",
                    level="crit",
                    id=failed[0].message_id,
                )
            finally:
                for c in held:
                    c.release()
        return queued

    def deliver_local(self, entry: _native.QueueEntry, message_path: str) -> Outcome:
        from .local import DeliveryFailure, deliver

        try:
            deliver(entry.recipient, entry.sender, message_path, self.cfg)
        except DeliveryFailure as e:
            return Outcome("permanent" if e.permanent else "temporary", str(e))
        return Outcome("sent")

    def record(self, claim: _native.Claim, entry: _native.QueueEntry, outcome: Outcome) -> None:
        """Write an entry's outcome into the spool. A spool that takes no writes (full, read-only)
        ends the run with one line: what cannot be recorded must not be sent any further."""
        try:
            self.write_outcome(claim, entry, outcome)
        except OSError as e:
            text = f"can not record the outcome of {entry.id} in `{self.cfg.spooldir}': {e.strerror or e}"
            self.events.event("crit", "error", text, id=entry.id)
            raise Fatal(EX_TEMPFAIL, f"{text}; stopping") from None

    def write_outcome(self, claim: _native.Claim, entry: _native.QueueEntry, outcome: Outcome) -> None:
        if outcome.status == "sent":
            claim.remove(sync=False)  # synced once for the batch, in `deliver`
            self.unsynced = True
            self.sent += 1
            self.log(
                f"{entry.id}: delivered to {entry.recipient}",
                event="delivered",
                id=entry.id,
                to=entry.recipient,
                sender=entry.sender,
                detail=outcome.text or None,
            )
            return
        attempts = entry.attempts + 1
        expired = time.time() - entry.created > self.cfg.max_queue_time
        # A permanent failure is kept, marked failed, until its bounce takes it over: mail is never
        # dropped silently. Anything else is retried on the schedule.
        final = outcome.status == "permanent" or expired
        next_attempt = 0 if final else int(time.time()) + retry_delay(self.cfg, attempts)
        claim.record(
            attempts=attempts,
            next_attempt=next_attempt,
            last_error=outcome.text,
            state="failed" if final else "",
        )
        if final:
            self.failed += 1
        else:
            self.deferred += 1
        word = "failed" if final else "deferred"
        self.log(
            f"{entry.id}: delivery to {entry.recipient} {word}: {outcome.text}",
            failure=True,
            event=word,
            level="err" if final else "notice",
            id=entry.id,
            to=entry.recipient,
            sender=entry.sender,
            attempts=attempts,
            next_attempt=next_attempt or None,
            detail=outcome.text,
        )

    def counts(self) -> str:
        return f"{self.sent} sent, {self.deferred} deferred, {self.failed} failed"

    def show_progress(self) -> None:
        if self.progress:
            remaining = max(self.total - self.sent - self.deferred - self.failed, 0)
            sys.stderr.write(f"\r{self.counts()}, {remaining} remaining ")
            sys.stderr.flush()

    def summary(self) -> None:
        """The end of a foreground run: the totals, on a terminal or with -v."""
        if self.progress:
            sys.stderr.write("\n")
        if self.progress or self.verbose:
            sys.stderr.write(f"{self.name}: {self.counts()}, {self.bounces} bounces queued\n")

    def log(
        self,
        text: str,
        *,
        event: str,
        level: str = "info",
        failure: bool = False,
        **fields: str | int | None,
    ) -> None:
        """An outcome: to syslog and LOGFILE always; to stderr with -v, or for failures with -D."""
        self.events.event(level, event, text.partition(": ")[2] if "id" in fields else text, **fields)
        self.show_progress()
        if self.verbose or (failure and self.report_failures):
            sys.stderr.write(f"{self.name}: {text}\n")


def wake(cfg: Config, *, flush: bool = False) -> None:
    """Tell a running runner that new mail is queued (`wake`), or to retry everything now (`flush`)."""
    path = os.path.join(cfg.spooldir, "flush" if flush else "wake")
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o600)
    os.close(fd)
    os.utime(path)


def command(prog: str, name: str, args: list[str]) -> int:
    """`dma serve [-C FILE] [-L TAG] [-v]`: the runner, in the foreground, until the queue is idle.

    For a service manager: the systemd units of `dma install` start it when mail is dropped or
    due, and it exits when nothing is left to do. If a runner already holds the spool, it is woken
    and this one exits at once.
    """
    from . import config
    from .errors import EX_USAGE

    conf: str | None = None
    tag = "dma"
    verbose = False
    words = iter(args)
    for word in words:
        if word in ("-C", "-L"):
            value = next(words, None)
            if value is None:
                raise Fatal(EX_USAGE, f"option requires an argument: `{word}'")
            conf, tag = (value, tag) if word == "-C" else (conf, value)
        elif word == "-v":
            verbose = True
        else:
            raise Fatal(EX_USAGE, f"usage: {prog} {name} [-C FILE] [-L TAG] [-v]")
    cfg = config.load(conf)
    runner = Runner(cfg, verbose=verbose, name=prog, tag=tag)
    if not runner.acquire():
        wake(cfg)  # new work for the running runner; its retry schedule stays as it is
        return 0
    runner.serve()
    return 0
