"""The queue runner (docs/runner.md): one per spool, holding `<spool>/lock`, it hands due entries
to delivery threads and records each outcome, bounce and log line as its thread ends."""

from __future__ import annotations

import _thread
import posix
import sys
import time

from dma import _native
from dma.errors import EX_OSERR, EX_TEMPFAIL, Fatal, RouteError, getopts

from .log import Log

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any

    from dma.config import Config

    from .remote import Destination, Link

    Groups = list[list[_native.QueueEntry]]  # claimed entries, one list per message
    Selection = Callable[[_native.QueueEntry], bool]

# Entries claimed at once (each holds its queue file open and locked): a batch's messages share
# connections, so it should be large; past SMALL_BATCH the open-file limit is raised to allow it.
BATCH = 1000
SMALL_BATCH = 200
# Longest sleep while sessions run; a retry or new mail wakes the runner before it anyway.
NAP = 3600.0
# Delivered entries' removals are synced within this, once for all of them: a power failure may
# repeat the deliveries of the last SYNC_EVERY seconds, as the journal's own syncs allow (journal.rs).
SYNC_EVERY = 0.1


def selection(queue_arg: str, messages: list[str] | None = None) -> Selection | None:
    """Whether an entry is one `-qI<id>` (a message or entry id) or `-qR<domain>` (a recipient
    domain) flushes, or of `messages` (`-D`, after their submission); None: every entry is."""
    kind, value = queue_arg[:1], queue_arg[1:]
    idents = set(messages or ()) | ({value} if kind == "I" and value else set())
    domain = value.lower() if kind == "R" and value else None
    if not idents and domain is None:
        return None
    return lambda e: (
        (not idents or e.id in idents or e.message_id in idents)
        and (domain is None or e.recipient.rpartition("@")[2].lower() == domain)
    )


class Runner:
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
        # Only the spool's owner may take drops (and only it can read them).
        drop_dir = f"{cfg.spooldir}/incoming"  # drop.NAME, without importing drop
        self.drop_dir = drop_dir if not cfg.user_mode and posix.access(drop_dir, posix.F_OK) else None
        self.verbose = verbose
        self.report_failures = report_failures
        self.progress = progress
        self.spool = _native.Spool(cfg.spooldir, self.drop_dir)
        self.claimed = 0  # entries held here
        # Claimed, waiting for a thread: destination key -> (destination, message id -> entries);
        # local entries under None (no destination), by entry id
        self.waiting: dict[str | None, tuple[Destination | None, dict[str, list[_native.QueueEntry]]]] = {}
        self.busy: dict[str | None, int] = {}  # key -> running threads
        # (key, groups, entry id -> (status, text), link): appended by delivery threads
        self.finished: list[tuple[str | None, Groups, dict[str, tuple[str, str]], Link | None]] = []
        self.idle: dict[str | None, list[Link]] = {}  # the connection cache
        self.last_activity = time.time()
        self.replayed = False
        self.unreplayed = 0  # deliveries recorded in the journal since its last replay
        self.unsynced = 0.0  # when the oldest removal not yet synced was made; 0: none
        self.stopping = False
        self.bounces = 0
        self.done = {"sent": 0, "deferred": 0, "failed": 0}  # entries by outcome

    def acquire(self) -> bool:
        try:
            return self.spool.lock()
        except OSError as e:
            from .submit import os_failure

            raise os_failure(e, f"can not lock the queue in `{self.cfg.spooldir}'") from None

    def run(self, *, only: Selection | None = None, force: bool = False, resident: bool = False) -> None:
        """Deliver due entries (those `only` selects) until none is left; `force`: deferred ones are
        due now; `resident`: linger LINGER seconds, then sleep while retries are pending."""
        self.tried: set[str] | None = None if resident else set()  # one pass: the entries it has tried
        self.spool.clean_stale(24 * 3600)  # what a crash left, a day on
        try:
            while not self.stopping:
                self.collect()
                waits = 0
                if self.drop_dir:  # take what users left in the drop directory
                    from .drop import pick_up

                    waits = pick_up(self.cfg, self.events)
                if not sum(self.busy.values()) and (not self.replayed or self.unreplayed >= 100):
                    self.replay_journal()
                now = time.time()
                due, next_retry, failing = self.spool.due(int(now), force)
                force = False
                if waits:  # a drop that could not be taken yet: try again in 10 s
                    next_retry = min(next_retry or int(now) + 10, int(now) + 10)
                # Those `only` selects; in one pass, not those tried already (a retry falling due waits).
                due = [e for e in due if (only is None or only(e)) and e.id not in (self.tried or ())]
                self.dispatch(due)
                bounces = self.bounces
                self.settle(failing)
                if self.bounces > bounces:
                    continue  # deliver the bounces too
                if self.claimed:
                    timeout = NAP
                elif not resident:
                    return
                elif now - self.last_activity < self.cfg.linger:
                    timeout = self.cfg.linger - (now - self.last_activity)
                else:
                    self.close_links()
                    if self.unreplayed:  # the journal goes before we do
                        self.replayed = False
                        continue
                    if next_retry is None and not due:
                        return
                    timeout = 1.0 if due else NAP  # due but held by another process: look again soon
                if next_retry is not None:
                    timeout = min(timeout, max(0.0, next_retry - now + 0.01))
                if self.unsynced:
                    timeout = min(timeout, max(0.0, self.unsynced + SYNC_EVERY - now))
                force = self.spool.wait(timeout)[1]
        finally:
            self.collect()  # a stop (SIGTERM) still records what has finished
            if self.unsynced:
                self.sync()
            self.close_links()
            for _, per in self.waiting.values():  # claimed, never handed to a thread: free them
                for entry in (entry for group in per.values() for entry in group):
                    self.spool.release(entry.id)
                    self.claimed -= 1
            self.waiting.clear()

    def stop(self, signum: int, frame: object) -> None:
        """SIGTERM: finish what has been recorded, close connections, and exit."""
        self.stopping = True
        self.spool.notify()

    def replay_journal(self) -> None:
        """Remove entries the server confirmed before a crash kept us from recording it. The
        journal files go only after their entries: a crash in between replays them again."""
        self.replayed, self.unreplayed = True, 0
        entry_ids, journals = self.spool.journal_take()
        removed = self.spool.claim(entry_ids)  # the others are gone, or another process holds them
        for entry in removed:
            self.spool.remove(entry.id)
            self.log(
                f"{entry.id}: delivered to {entry.recipient} (confirmed before a restart)",
                event="delivered",
                id=entry.id,
                to=entry.recipient,
            )
        if removed or self.unsynced:
            self.sync()  # the removals are durable before their record goes
        for journal in journals:
            try:
                posix.unlink(journal)
            except FileNotFoundError:  # a `-D` runner, which holds no lock, replayed it too
                pass

    def dispatch(self, due: list[_native.QueueEntry]) -> None:
        """Claim due entries and start delivery threads: one per local entry; per destination,
        up to HOST_CONCURRENCY sharing its messages, a message's recipients in one transaction."""
        if not due and not self.waiting:
            return  # as after every session: nothing to claim or start
        # What the delivery threads import on first use is imported here, in this one thread: when
        # two threads import a module at once, CPython 3.9 can hand one of them a partial module.
        from . import authconf  # noqa: F401
        from .remote import Destination

        if self.cfg.xoauth2_command or self.cfg.authpath:
            from . import oauth  # noqa: F401

        room = SMALL_BATCH
        if len(due) > SMALL_BATCH:  # raise the open-file limit toward the hard one for BATCH files
            import resource

            soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
            want = BATCH + 256 if hard == resource.RLIM_INFINITY else min(BATCH + 256, hard)
            if soft != resource.RLIM_INFINITY and soft < want:
                resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
            room = max(16, want - 256)
        claimed = self.spool.claim([e.id for e in due[: max(0, room - self.claimed)]])
        self.claimed += len(claimed)
        for entry in claimed:  # a local recipient (no domain left, as C dma) has no destination
            dest = Destination(self.cfg, entry.sender, entry.recipient) if "@" in entry.recipient else None
            key, group = (dest.key, entry.message_id) if dest is not None else (None, entry.id)
            self.waiting.setdefault(key, (dest, {}))[1].setdefault(group, []).append(entry)
        if None in self.waiting:
            from . import local  # noqa: F401
        for key, (dest, per) in list(self.waiting.items()):
            # CONCURRENCY threads for local deliveries, as many again for remote sessions
            running = sum(n for k, n in self.busy.items() if (k is None) == (key is None))
            limit = self.cfg.concurrency if key is None else self.cfg.host_concurrency
            share = min(self.cfg.concurrency - running, limit - self.busy.get(key, 0), len(per))
            if share <= 0:
                continue
            if key is None:  # a thread for each local entry; the others wait for a free one
                groups = [per.pop(entry_id) for entry_id in list(per)[:share]]
            else:  # the destination's messages are shared out over its new sessions
                groups = list(self.waiting.pop(key)[1].values())
            cached = self.idle.get(key, [])
            self.busy[key] = self.busy.get(key, 0) + share
            self.last_activity = time.time()
            for i in range(share):
                link = cached.pop() if cached else None
                _thread.start_new_thread(self.work, (key, dest, groups[i::share], link))

    def work(self, key: str | None, dest: Destination | None, groups: Groups, link: Link | None) -> None:
        """A delivery thread: a destination's messages over one connection, or one local entry
        (`dest` None). Any error defers the entries (and is logged) instead of ending the run."""
        try:
            if dest is None:
                from . import local

                [[entry]] = groups
                local.deliver(entry.recipient, entry.sender, self.spool.message_path(entry.id), self.cfg)
                outcomes = {entry.id: ("sent", "")}
            else:
                from . import remote

                ids = [[entry.id for entry in group] for group in groups]
                outcomes, link = remote.deliver(
                    self.cfg, self.spool, dest, ids, link, self.events, verbose=self.verbose
                )
        except RouteError as e:  # local.DeliveryFailure (remote.deliver turns its own into outcomes)
            outcome = ("permanent" if e.permanent else "temporary", str(e))
            outcomes = {entry.id: outcome for group in groups for entry in group}
        except BaseException as e:  # a Rust panic too: the rest of the queue must still be delivered
            text = f"internal error, will retry: {type(e).__name__}: {e}"
            self.events.event("crit", "error", text)
            outcomes = {entry.id: ("temporary", text) for group in groups for entry in group}
            link = None
        self.finished.append((key, groups, outcomes, link))
        self.spool.notify()

    def collect(self) -> None:
        """Record the outcomes of the threads that have ended; keep their open connections."""
        sent = self.done["sent"]
        while self.finished:
            key, groups, outcomes, link = self.finished.pop()
            self.busy[key] -= 1
            self.last_activity = time.time()
            # Delivered entries are removed here, so the journal names no other unless an outcome
            # was lost after the server's 250 (a failed thread): then it is replayed at once.
            if self.tried is not None or any(status != "sent" for status, _ in outcomes.values()):
                self.replayed = False
            if link is not None:
                self.idle.setdefault(key, []).append(link)
            if self.tried is not None:
                self.tried.update(outcomes)
            for entry in (entry for group in groups for entry in group):
                self.claimed -= 1
                self.record(entry, *outcomes[entry.id])
        if self.done["sent"] > sent:
            self.unreplayed += self.done["sent"] - sent
            self.unsynced = self.unsynced or time.time()
        if self.unsynced and time.time() - self.unsynced >= SYNC_EVERY:
            self.sync()

    def close_links(self) -> None:
        """QUIT every cached connection."""
        for links in self.idle.values():
            for conn, _ in links:
                conn.close()
        self.idle.clear()

    def sync(self) -> None:
        try:
            self.spool.sync()
        except OSError as e:
            raise Fatal(EX_TEMPFAIL, f"can not sync `{self.cfg.spooldir}': {e.strerror or e}") from None
        self.unsynced = 0.0

    def settle(self, message_ids: list[str]) -> None:
        """Bounce each of these messages whose remaining recipients have all failed, once per message."""
        for message_id in message_ids:
            group = _native.scan_queue(self.cfg.spooldir, message_id)
            if not group or not all(e.state == "failed" for e in group):
                continue
            held = self.spool.claim([e.id for e in group])
            try:
                if len(held) == len(group):  # else someone else is working on it
                    self.bounce(held)
            finally:
                for e in held:
                    self.spool.release(e.id)

    def bounce(self, failed: list[_native.QueueEntry]) -> None:
        """Queue one message's bounce (unless NOTIFY asked for none) and remove its entries, or hold
        them for the postmaster when the bounce itself failed (null sender) or can not be queued."""
        from . import bounce

        first = failed[0]
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
                if bounce_id is None:
                    self.log(
                        f"{first.message_id}: failed, not bounced, as asked ({first.dsn})", event="failed"
                    )
                    return
                self.bounces += 1
                self.log(
                    f"{first.message_id}: bounced to <{first.sender}> as {bounce_id}",
                    event="bounced",
                    level="notice",
                    id=first.message_id,
                    to=first.sender,
                    bounce=bounce_id,
                )
                return
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

    def record(self, entry: _native.QueueEntry, status: str, text: str) -> None:
        """Write an entry's outcome ("sent", "temporary" or "permanent"). A spool that takes no writes
        ends the run (what can not be recorded must not be sent on); a failed entry awaits its bounce."""
        text = text.replace("\n", " ").replace("\r", " ")
        attempts = entry.attempts + 1
        final = status == "permanent" or time.time() - entry.created > self.cfg.max_queue_time
        # RETRY_MIN doubling up to RETRY_MAX, ±25% (jitter from urandom: no `random` import)
        delay = min(self.cfg.retry_max, self.cfg.retry_min * (2 ** min(attempts - 1, 30)))
        jitter = int.from_bytes(posix.urandom(2), "big") / 65535.0
        next_attempt = 0 if final else int(time.time()) + max(1, int(delay * (0.75 + jitter / 2)))
        try:
            if status == "sent":
                self.spool.remove(entry.id)  # synced by `collect` within SYNC_EVERY
            else:
                state = "failed" if final else ""
                self.spool.record(
                    entry.id, attempts=attempts, next_attempt=next_attempt, last_error=text, state=state
                )
        except OSError as e:
            text = f"can not record the outcome of {entry.id} in `{self.cfg.spooldir}': {e.strerror or e}"
            self.events.event("crit", "error", text, id=entry.id)
            raise Fatal(EX_TEMPFAIL, f"{text}; stopping") from None
        word = "sent" if status == "sent" else "failed" if final else "deferred"
        self.done[word] += 1
        fields: dict[str, Any] = {"id": entry.id, "to": entry.recipient, "sender": entry.sender}
        if status == "sent":
            self.log(
                f"{entry.id}: delivered to {entry.recipient}",
                event="delivered",
                **fields,
                detail=text or None,
            )
            return
        self.log(
            f"{entry.id}: delivery to {entry.recipient} {word}: {text}",
            failure=True,
            event=word,
            level="err" if final else "notice",
            **fields,
            attempts=attempts,
            next_attempt=next_attempt or None,
            detail=text,
        )

    def counts(self) -> str:
        return ", ".join(f"{n} {word}" for word, n in self.done.items())

    def log(
        self, text: str, *, event: str, level: str = "info", failure: bool = False, **fields: str | int | None
    ) -> None:
        """An outcome: to syslog and LOGFILE always; to stderr with -v, or for failures with -D;
        the progress line on a terminal."""
        self.events.event(level, event, text.partition(": ")[2] if "id" in fields else text, **fields)
        if self.progress:
            sys.stderr.write(f"\r{self.counts()}, {self.claimed} remaining ")
            sys.stderr.flush()
        if self.verbose or (failure and self.report_failures):
            sys.stderr.write(f"{self.name}: {text}\n")


def wake(cfg: Config, *, flush: bool = False) -> None:
    """Tell a running runner that new mail is queued (`wake`), or to retry everything now (`flush`)."""
    path = f"{cfg.spooldir}/{'flush' if flush else 'wake'}"
    posix.close(posix.open(path, posix.O_WRONLY | posix.O_CREAT | posix.O_CLOEXEC, 0o600))
    posix.utime(path)


def take_over(runner: Runner, *, flush: bool = False, detach: bool = True) -> int:
    """Become the spool's runner (`detach`: in a daemon), resident until the queue is idle, or wake
    the one that holds it (`flush`: everything is due now; else its retry schedule stays as it is)."""
    if not runner.acquire():
        wake(runner.cfg, flush=flush)
        return 0
    if detach:
        try:
            pid = posix.fork()
        except OSError as e:
            raise Fatal(EX_OSERR, f"can not fork: {e.strerror}") from e
        if pid:
            return 0
        posix.setsid()
        devnull = posix.open("/dev/null", posix.O_RDWR)
        for fd in (0, 1, 2):
            posix.dup2(devnull, fd)
        posix.close(devnull)
    import _signal  # type: ignore[import-not-found]  # `signal`, without the enum it imports

    _signal.signal(_signal.SIGTERM, runner.stop)
    while True:
        runner.run(force=flush, resident=True)
        runner.spool.unlock()
        # Look once more: a submission that found the lock held just before we let go relies on it.
        if runner.stopping or not runner.spool.due(int(time.time()), False)[0] or not runner.acquire():
            return 0
        flush = False


def command(prog: str, name: str, args: list[str]) -> int:
    """`dma serve`: the runner in the foreground, for a service manager (the units of `dma
    install`), until the queue is idle. If a runner holds the spool, it is woken instead."""
    from dma import config

    opts, _ = getopts(args, f"usage: {prog} {name} [-C FILE] [-L TAG] [-v]", "C:L:v", operands=False)
    runner = Runner(config.Config(opts.get("-C")), verbose="-v" in opts, name=prog, tag=opts.get("-L", "dma"))
    return take_over(runner, detach=False)
