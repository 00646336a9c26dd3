"""The pickup fault campaign (issue 10): a real user's drop, in system mode, meets a failure at
every step of the runner's pickup; nothing accepted may be lost, nothing delivered twice outside
the named window, and the drop must be delivered once the fault is gone.

    .venv/bin/python tests/campaigns/pickup.py [--seed N] [--workdir DIR] [--only WORD ...]

prints one line per case, then `pickup fault campaign: cases=N passed=P lost=L duplicates=D
(window W)`. Needs root (a user, tmpfs mounts).

Faults:
- injected at each step (read, parse, alias, passwd, write, sync, unlink) x (ENOSPC, EMFILE, EIO,
  SIGKILL) through drop.fault, the injection point that only DMA_PICKUP_FAULT=<step>:<what> in
  the runner's environment makes act (there is no device-mapper here for a real EIO);
- real ones: a tmpfs spool whose blocks, then whose inodes, are used up; RLIMIT_NOFILE from 6 to
  40 descriptors (prlimit); the aliases file mid-edit (a syntax error); a drop from a uid without
  a passwd entry; SIGKILL of the runner at random times while it takes 20 drops.

The window: a drop whose unlink fails after its message was queued is not queued again by that
runner, but a later runner process that finds it after the message was delivered takes it again.
"""

from __future__ import annotations

import os
import random
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from dma_fixtures import program
from test_system_mode import User, World, real_users

from campaigns.common import Result, main_with, parser

SEED = 10
STEPS = ("read", "parse", "alias", "passwd", "write", "sync", "unlink")
FAULTS = ("ENOSPC", "EMFILE", "EIO", "KILL")
GHOST_UID = 64998  # no passwd entry


def runner(w: World, *prefix: str, **env: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [*prefix, program("sendmail"), "-D", "-q"],
        capture_output=True,
        env={**w.env, **env},
        cwd="/",
        timeout=120,
        check=False,
    )


def send(w: World, user: User, marker: str) -> int:
    return w.submit(user, ["root"], f"Subject: {marker}\n\n{marker}\n".encode()).returncode


def tmpfs_spool(w: World, options: str) -> None:
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"{options},mode=0711", "tmpfs", str(w.spool)], check=True)
    w.incoming.mkdir()
    os.chmod(w.incoming, 0o1733)


def fill(where: Path, inodes: bool) -> None:
    """Use up the file system's blocks (one file) or inodes (empty files), as root."""
    n = 0
    try:
        with open(where / "filler", "wb") as f:
            while not inodes:
                f.write(b"x" * 65536)
                f.flush()
        while True:
            n += 1
            (where / f"filler{n}").touch()
    except OSError:
        pass


def unfill(where: Path) -> None:
    for p in where.iterdir():
        if p.name.startswith("filler"):
            p.unlink()


# A case: (world, user) -> (runner outcomes while faulty, deliveries expected to be allowed) after
# which the campaign removes the fault, runs the runner and counts.
Case = Callable[[World, User], str]


def hooked(step: str, fault: str) -> Case:
    def case(w: World, a: User) -> str:
        r = runner(w, DMA_PICKUP_FAULT=f"{step}:{fault}")
        left = len(w.drops())
        return f"rc={r.returncode} drops_left={left}"

    return case


def spool_full(inodes: bool) -> Case:
    def case(w: World, a: User) -> str:
        fill(w.spool, inodes)
        r = runner(w)
        detail = f"rc={r.returncode} drops_left={len(w.drops())}"
        unfill(w.spool)
        return detail

    return case


def nofile(w: World, a: User) -> str:
    seen = []
    for n in range(3, 41):
        r = runner(w, "prlimit", f"--nofile={n}:{n}")
        seen.append(f"{n}:{r.returncode}/{len(w.drops())}")
        if not w.drops():
            break
    return "limit:rc/drops " + " ".join(seen)


def aliases_mid_edit(w: World, a: User) -> str:
    w.aliases.write_text("postmaster: root\nroot\n")
    r = runner(w)
    one_line = r.stderr.count(b"\n") == 1
    w.aliases.write_text("")
    return f"rc={r.returncode} one_line={one_line} drops_left={len(w.drops())}"


def random_kills(trials: int, seed: int) -> Callable[[World, User], str]:
    """Rounds of three drops, the runner killed at a random time until a run gets through. The
    drops are for an unreachable host, so each stays queued and is counted in the spool: a kill
    during a local delivery is the runner crash campaign's business, not pickup's."""

    def case(w: World, a: User) -> str:
        rng = random.Random(seed)
        kills = 0
        runner(w)  # the marker's local delivery first: a kill in the middle of it may deliver it twice
        for t in range(trials):
            for j in range(3):
                w.submit(a, ["x@remote.example"], f"Subject: k\n\nKILLED-{t * 3 + j}-\n".encode())
            while any(d.startswith("E") for d in w.drops()):  # a kill may leave a lone D: garbage
                p = subprocess.Popen(
                    [program("sendmail"), "-D", "-q"], env=w.env, cwd="/", stderr=subprocess.DEVNULL
                )
                time.sleep(rng.uniform(0.05, 0.3))
                kills += p.poll() is None
                p.kill()
                p.wait()
        return f"kills={kills}"

    return case


def run(work: Path, seed: int, quick: bool = False, only: tuple[str, ...] = ()) -> Result:
    rng = random.Random(seed)
    kill_trials = 5 if quick else 40
    cases: list[tuple[str, Case, bool]] = []  # name, case, whether the named window applies
    for step in STEPS:
        for fault in FAULTS:
            if not quick or fault in ("EIO", "KILL") or step in ("write", "sync"):
                cases.append((f"{step}:{fault}", hooked(step, fault), step == "unlink" and fault != "KILL"))
    cases += [
        ("real: spool blocks full (tmpfs)", spool_full(False), False),
        ("real: spool inodes full (tmpfs)", spool_full(True), False),
        ("real: RLIMIT_NOFILE sweep", nofile, False),
        ("real: aliases file mid-edit", aliases_mid_edit, False),
        ("real: uid without passwd entry", lambda w, a: f"rc={runner(w).returncode}", False),
        ("real: SIGKILL at random times", random_kills(kill_trials, rng.randrange(1 << 30)), False),
    ]
    cases = [c for c in cases if not only or any(word in c[0] for word in only)]
    result = Result()
    lost = duplicates = in_window = 0
    with real_users("dmapick-a") as (a,):
        os.chmod(work, 0o755)  # the user reaches the drop directory through it
        for n, (name, case, window) in enumerate(cases):
            (work / f"case{n}").mkdir()
            w = World(work / f"case{n}")
            mounted = name.startswith("real: spool")
            if mounted:
                tmpfs_spool(w, "size=2m" if "blocks" in name else "size=8m,nr_inodes=200")
            try:
                marker = f"PICKUP-{n}-"
                if "uid without" in name:
                    ghost = User.__new__(User)
                    ghost.name, ghost.uid, ghost.gid = "ghost", GHOST_UID, GHOST_UID
                    accepted = send(w, ghost, marker) == 0
                else:
                    accepted = send(w, a, marker) == 0
                detail = case(w, a)
                for _ in range(2):
                    runner(w)  # the fault is gone: what waited is delivered
                mbox = w.mbox()
                got = mbox.count(f"\n{marker}\n".encode())
                ok = accepted and got >= 1 and not [d for d in w.drops() if d.startswith("E")]
                if "SIGKILL at random" in name:
                    queued = b"".join(p.read_bytes() for p in w.spool.glob("M*"))
                    each = [queued.count(f"\nKILLED-{i}-\n".encode()) for i in range(kill_trials * 3)]
                    detail += f" messages={len(each)} queued_once={each.count(1)}"
                    ok = ok and set(each) == {1}
                    duplicates += sum(each) - len(each)
                    lost += each.count(0)
                lost += int(got == 0)
                if got > 1:
                    duplicates += got - 1
                    in_window += (got - 1) if window else 0
                    ok = ok and window
                result.details.append(f"{'ok  ' if ok else 'FAIL'} {name}: {detail}; delivered={got}")
                result.check(ok, f"{name}: accepted={accepted} delivered={got} left={w.drops()} {detail}")
            finally:
                if mounted:
                    subprocess.run(["umount", str(w.spool)], check=False)
    passed = sum(1 for d in result.details if d.startswith("ok"))
    result.line = (
        f"pickup fault campaign: cases={len(cases)} passed={passed} lost={lost} duplicates={duplicates}"
        f" (in the named window: {in_window})"
    )
    result.check(lost == 0, "accepted mail lost")
    result.details.insert(0, f"seed={seed}")
    return result


def main() -> int:
    p = parser(__doc__, SEED)
    p.add_argument("--only", nargs="*", default=[], help="cases whose name contains one of these words")
    args = p.parse_args()
    return main_with(run, args, only=tuple(args.only))


if __name__ == "__main__":
    sys.exit(main())
