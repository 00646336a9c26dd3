"""The queue runner: delivers what is due, then lingers for more (docs/runner.md). `mailq` lives
in control.py.

One runner per spool, held by an `flock` on `<spool>/lock`; a second `dma -q` touches
`<spool>/flush` to wake the running one instead of starting another. The main thread schedules:
it claims due entries, hands them to delivery threads (one per SMTP session or local delivery;
Rust releases the GIL), records each outcome as its thread ends, and sleeps in `Spool.wait`
(inotify, no polling) until mail comes, a thread ends or a retry is due. Open connections are kept
for LINGER seconds after the last delivery.
"""

from __future__ import annotations

import _thread
import posix
import time

from dma import _native
from dma.errors import Fatal

from .ledger import Ledger, Outcome
from .log import Log
from .routing import is_local

TYPE_CHECKING = False
if TYPE_CHECKING:
    from dma.config import Config

    from .remote import Destination, Link

STALE_AGE = 24 * 3600
# Entries claimed at once (each holds its queue file open and locked): a batch's messages share
# connections, so it should be large; past SMALL_BATCH the open-file limit is raised to allow it.
BATCH = 1000
SMALL_BATCH = 200
# "failed": waiting for its bounce; "held": kept for the postmaster, never retried by itself.
FINAL_STATES = ("failed", "held")
# A user's mbox lock is waited for this long, then the delivery is retried later (their lock must
# not hold up anyone's mail).
LOCK_WAIT = 3.0
# Longest sleep while sessions run; a retry or new mail wakes the runner before it anyway.
NAP = 3600.0


class Selection:
    """The entries `-qI<id>` (a message or entry id) or `-qR<domain>` (a recipient domain) flush;
    or `messages` only (`-D`, after their submission)."""

    __slots__ = ("domain", "idents")

    def __init__(self, queue_arg: str, messages: list[str] | None = None) -> None:
        kind, value = queue_arg[:1], queue_arg[1:]
        self.idents = set(messages or ()) | ({value} if kind == "I" and value else set())
        self.domain = value.lower() if kind == "R" and value else None

    @property
    def selective(self) -> bool:
        return bool(self.idents) or self.domain is not None

    def wants(self, e: _native.QueueEntry) -> bool:
        if self.idents and e.id not in self.idents and e.message_id not in self.idents:
            return False
        return self.domain is None or e.recipient.rpartition("@")[2].lower() == self.domain


class Job:
    """Work for one delivery thread: a destination's messages (`groups` of entry ids, one per
    message) over one connection, or one local entry (`dest` None)."""

    __slots__ = ("dest", "groups", "key", "link", "outcomes")

    def __init__(
        self, key: str, dest: Destination | None, groups: list[list[str]], link: Link | None
    ) -> None:
        self.key = key
        self.dest = dest
        self.groups = groups
        self.link = link
        self.outcomes: dict[str, tuple[str, str]] = {}


class Runner(Ledger):
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
        super().__init__()
        self.cfg = cfg
        self.name = name
        self.events = Log(cfg, tag)
        # Only the spool's owner may take drops (and only it can read them).
        self.drop_dir = f"{cfg.spooldir}/incoming"  # drop.NAME, without importing drop
        self.system_drop = not cfg.user_mode and posix.access(self.drop_dir, posix.F_OK)
        self.verbose = verbose
        self.report_failures = report_failures
        self.progress = progress
        self.spool_: _native.Spool | None = None
        self.entries: dict[str, _native.QueueEntry] = {}  # claimed here, by id
        # Claimed, waiting for a thread: destination key -> (destination, message id -> entry ids)
        self.waiting: dict[str, tuple[Destination, dict[str, list[str]]]] = {}
        self.local: list[str] = []  # local entries waiting for a thread
        self.busy: dict[str, int] = {}  # key -> running jobs ("" for local ones)
        self.running = 0
        self.finished: list[Job] = []  # appended by delivery threads
        self.idle: dict[str, list[Link]] = {}  # the connection cache
        self.last_activity = time.time()
        self.replayed = False
        self.stopping = False
        self.tried: set[str] | None = None  # a one-pass run: the entries it has tried

    @property
    def spool(self) -> _native.Spool:
        if self.spool_ is None:
            self.spool_ = _native.Spool(self.cfg.spooldir, self.drop_dir if self.system_drop else None)
        return self.spool_

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
        try:
            return self.spool.lock()
        except OSError as e:
            from .submit import os_failure

            raise os_failure(e, f"can not lock the queue in `{self.cfg.spooldir}'") from None

    def release(self) -> None:
        self.spool.unlock()

    def run(self, *, only: Selection | None = None, force: bool = False, resident: bool = False) -> None:
        """Deliver due entries (those `only` selects, when given) until none is left.

        `force` makes deferred entries due now. `resident` lingers LINGER seconds after the last
        delivery (keeping connections open), then stays asleep while retries are pending.
        """
        spool = self.spool
        self.tried = None if resident else set()
        _native.clean_stale(self.cfg.spooldir, STALE_AGE)
        try:
            while not self.stopping:
                self.collect()
                waits = self.pick_up()[1]
                if not self.running and not self.replayed:
                    self.replay_journal()
                now = time.time()
                due, next_retry, failing = spool.due(int(now), force)
                force = False
                if waits:  # a drop that could not be taken yet: try again in 10 s
                    next_retry = min(next_retry or int(now) + 10, int(now) + 10)
                if only is not None:
                    due = [e for e in due if only.wants(e)]
                if self.tried is not None:  # one pass: a retry that falls due meanwhile waits
                    due = [e for e in due if e.id not in self.tried]
                self.dispatch(due)
                if self.settle(self.finals.union(failing)):
                    continue  # deliver the bounces too
                if self.running or self.waiting or self.local:
                    timeout = NAP
                elif not resident:
                    return
                elif now - self.last_activity < self.cfg.linger:
                    timeout = self.cfg.linger - (now - self.last_activity)
                else:
                    self.close_links()
                    if next_retry is None and not due:
                        return
                    timeout = 1.0 if due else NAP  # due but held by another process: look again soon
                if next_retry is not None:
                    timeout = min(timeout, max(0.0, next_retry - now + 0.01))
                force = spool.wait(timeout)[1]
        finally:
            self.collect()  # a stop (SIGTERM) still records what has finished
            self.close_links()
            for _, per in self.waiting.values():
                for entry_id in (i for ids in per.values() for i in ids):
                    spool.release(entry_id)
            for entry_id in self.local:
                spool.release(entry_id)
            self.waiting.clear()
            self.local.clear()

    def stop(self, signum: int, frame: object) -> None:
        """SIGTERM: finish what has been recorded, close connections, and exit."""
        self.stopping = True
        self.spool.notify()

    def serve(self, *, force: bool = False) -> None:
        """Run resident until the queue is idle, then release the lock.

        After releasing, look once more: a submission that found the lock held just before we let
        go relies on this look to have its message delivered.
        """
        import _signal  # type: ignore[import-not-found]  # `signal`, without the enum it imports

        _signal.signal(_signal.SIGTERM, self.stop)
        while True:
            self.run(force=force, resident=True)
            self.release()
            if self.stopping or not self.spool.due(int(time.time()), False)[0] or not self.acquire():
                return
            force = False

    def pick_up(self) -> tuple[int, int]:
        """System mode: take what users left in the drop directory; (taken, waiting) drops."""
        if not self.system_drop:
            return 0, 0
        from .drop import pick_up

        return pick_up(self.cfg, self.events)

    def replay_journal(self) -> None:
        """Remove entries the server confirmed before a crash kept us from recording it.

        The journal files go only after their entries: a crash in between replays them again.
        """
        self.replayed = True
        entry_ids, journals = _native.journal_take(self.cfg.spooldir)
        for entry in self.spool.claim(entry_ids) if entry_ids else []:
            self.spool.remove(entry.id)
            self.log(
                f"{entry.id}: delivered to {entry.recipient} (confirmed before a restart)",
                event="delivered",
                id=entry.id,
                to=entry.recipient,
            )
        if journals:
            self.sync()  # the removals are durable before their record goes
        for journal in journals:
            posix.unlink(journal)

    def dispatch(self, due: list[_native.QueueEntry]) -> None:
        """Claim due entries and queue them for delivery threads: local ones one by one, remote
        ones grouped by destination and message, so that a message's recipients there share one
        transaction and a destination's messages share connections."""
        from . import authconf  # noqa: F401 - here, not first in two threads at once: CPython 3.9 then
        from .remote import destination  # hands one of them a partly initialised module

        room = (self.batch_size() if len(due) > SMALL_BATCH else SMALL_BATCH) - len(self.entries)
        if due and room > 0:
            claimed = self.spool.claim([e.id for e in due[:room]])
            self.total += len(claimed)
            for entry in claimed:
                self.entries[entry.id] = entry
                if is_local(entry.recipient):
                    self.local.append(entry.id)
                    continue
                dest = destination(self.cfg, entry.sender, entry.recipient)
                per = self.waiting.setdefault(dest.key, (dest, {}))[1]
                per.setdefault(entry.message_id, []).append(entry.id)
        while self.local and self.busy.get("", 0) < self.cfg.concurrency:
            self.start(Job("", None, [[self.local.pop(0)]], None))
        for key in list(self.waiting):
            slots = min(
                self.cfg.host_concurrency - self.busy.get(key, 0),
                self.cfg.concurrency - self.remote_running(),
            )
            if slots <= 0:
                continue
            dest, per = self.waiting.pop(key)
            groups = list(per.values())
            share = min(slots, len(groups))
            cached = self.idle.get(key, [])
            for i in range(share):
                self.start(Job(key, dest, groups[i::share], cached.pop() if cached else None))

    def remote_running(self) -> int:
        return self.running - self.busy.get("", 0)

    def start(self, job: Job) -> None:
        self.running += 1
        self.busy[job.key] = self.busy.get(job.key, 0) + 1
        self.last_activity = time.time()
        _thread.start_new_thread(self.work, (job,))

    def work(self, job: Job) -> None:
        """A delivery thread. An unexpected error defers the job's entries (and is logged) instead
        of ending the whole run."""
        try:
            if job.dest is None:
                entry_id = job.groups[0][0]
                outcome = self.deliver_local(self.entries[entry_id], self.spool.message_path(entry_id))
                job.outcomes = {entry_id: (outcome.status, outcome.text)}
            else:
                from .remote import deliver

                job.outcomes, job.link = deliver(
                    self.cfg,
                    self.spool,
                    job.dest,
                    job.groups,
                    job.link,
                    verbose=self.verbose,
                    events=self.events,
                )
        except Exception as e:  # the rest of the queue must still be delivered
            text = f"internal error, will retry: {type(e).__name__}: {e}"
            self.events.event("crit", "error", text)
            job.outcomes = {i: ("temporary", text) for ids in job.groups for i in ids}
            job.link = None
        self.finished.append(job)
        self.spool.notify()

    def collect(self) -> None:
        """Record the outcomes of the threads that have ended; keep their open connections."""
        if not self.finished:
            return
        removed = False
        while self.finished:
            job = self.finished.pop()
            self.running -= 1
            self.busy[job.key] -= 1
            if job.link is not None:
                self.idle.setdefault(job.key, []).append(job.link)
            if self.tried is not None:
                self.tried.update(job.outcomes)
            for entry_id, (status, text) in job.outcomes.items():
                removed |= status == "sent"
                self.record(self.entries.pop(entry_id), Outcome(status, text))
        self.last_activity = time.time()
        self.replayed = False
        if removed:
            self.sync()

    def close_links(self) -> None:
        """QUIT every cached connection."""
        for links in self.idle.values():
            for link in links:
                if link.conn is not None:
                    link.conn.close()
        self.idle.clear()

    def deliver_local(self, entry: _native.QueueEntry, message_path: str) -> Outcome:
        from .local import DeliveryFailure, deliver

        try:
            deliver(entry.recipient, entry.sender, message_path, self.cfg, lock_timeout=LOCK_WAIT)
        except DeliveryFailure as e:
            return Outcome("permanent" if e.permanent else "temporary", str(e))
        return Outcome("sent")


def wake(cfg: Config, *, flush: bool = False) -> None:
    """Tell a running runner that new mail is queued (`wake`), or to retry everything now (`flush`)."""
    path = f"{cfg.spooldir}/{'flush' if flush else 'wake'}"
    posix.close(posix.open(path, posix.O_WRONLY | posix.O_CREAT | posix.O_CLOEXEC, 0o600))
    posix.utime(path)


def command(prog: str, name: str, args: list[str]) -> int:
    """`dma serve [-C FILE] [-L TAG] [-v]`: the runner, in the foreground, until the queue is idle.

    For a service manager: the systemd units of `dma install` start it when mail is dropped or
    due, and it exits when nothing is left to do. If a runner already holds the spool, it is woken
    and this one exits at once.
    """
    from dma import config
    from dma.errors import EX_USAGE

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
