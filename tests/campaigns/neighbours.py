"""The hostile-neighbour campaign (issue 10): one local user attacks the drop directory and the
spool in every way we know while two other real users send mail; for each attack, the delay it
caused to their mail.

    .venv/bin/python tests/campaigns/neighbours.py [--seed N] [--workdir DIR] [--only WORD ...]

prints one line per attack, then `hostile-neighbour campaign: attacks=N passed=P max_delay=S`.
Needs root (three users, a tmpfs spool). The runner is run as dma.path and dma.timer would run
it: `sendmail -D -q` again and again. A victim's message counts from its `sendmail` exiting 0 to
its arrival in the mbox; an attack passes when every accepted message arrives, none later than 60 s
after the attack's start (for the fill attacks: after the space comes back), none twice.

Attacks: SIGSTOP and SIGTSTP of the attacker's own `sendmail`s mid-message (all that runs as the
attacker: with mboxes no delivery runs as a user); files of every type planted in the drop
directory; ids squatted; forged envelopes; `sendmail` floods up to the per-user cap; the spool's
blocks, then its inodes, filled by hand; and (full run only: it needs the runner's scheduler) a
locked mbox.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from dma_fixtures import program
from test_system_mode import PY, User, World, real_users

from campaigns.common import Result, main_with, parser

SEED = 1733
LIMIT = 60.0


class Site:
    """A system install on a tmpfs spool, its runner kept going, and the victims' mail watched."""

    def __init__(self, work: Path, users: list[User], inodes: int) -> None:
        work.mkdir(mode=0o755)
        self.w = World(work)
        options = f"size=8m,nr_inodes={inodes},mode=0711"
        subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(self.w.spool)], check=True)
        self.w.incoming.mkdir()
        os.chmod(self.w.incoming, 0o1733)
        self.w.write_conf("MAXUSERMSGS 40", "MAXUSERBYTES 2M")
        self.attacker, self.victims = users[0], users[1:]
        self.sent: dict[str, float] = {}
        self.arrived: dict[str, float] = {}
        self.refused = 0
        self.back = 0.0  # when the space came back (the fill attacks)
        self.n = 0
        self.holders: list[subprocess.Popen[bytes]] = []
        self.stop = threading.Event()
        self.running = threading.Event()
        self.running.set()
        self.threads = [threading.Thread(target=self.run_runner), threading.Thread(target=self.watch)]
        for t in self.threads:
            t.start()

    def close(self) -> None:
        for p in self.holders:
            p.kill()
            p.wait()
        self.stop.set()
        for t in self.threads:
            t.join()
        subprocess.run(["umount", str(self.w.spool)], check=False)

    def run_runner(self) -> None:
        while not self.stop.is_set():
            if self.running.is_set():
                subprocess.run(
                    [program("sendmail"), "-D", "-q"],
                    env=self.w.env,
                    cwd="/",
                    capture_output=True,
                    timeout=300,
                )
            time.sleep(0.3)

    def watch(self) -> None:
        while not self.stop.is_set():
            box = self.w.mbox()
            for marker in self.sent.keys() - self.arrived.keys():
                if marker.encode() in box:
                    self.arrived[marker] = time.monotonic()
            time.sleep(0.1)

    def victims_send(self) -> None:
        for v in self.victims:
            self.n += 1
            marker = f"NB-{self.n}-{v.name}-"
            if self.w.submit(v, ["root"], f"Subject: n\n\n{marker}\n".encode()).returncode == 0:
                self.sent[marker] = time.monotonic()
            else:
                self.refused += 1

    def as_attacker(self, script: str, *args: str) -> None:
        self.w.user_script(self.attacker, script, str(self.w.incoming), *args)

    def settle(self, since: float) -> tuple[float, int, int]:
        """Wait for every accepted message; returns the longest delay from `since` (or from its
        submission if later), how many had not arrived after LIMIT + 5 s, and how many twice."""
        deadline = time.monotonic() + LIMIT + 5
        while self.sent.keys() - self.arrived.keys() and time.monotonic() < deadline:
            time.sleep(0.2)
        missing = len(self.sent.keys() - self.arrived.keys())
        box = self.w.mbox()
        twice = sum(box.count(f"\n{m}\n".encode()) > 1 for m in self.sent)
        delay = max((t - max(since, self.sent[m]) for m, t in self.arrived.items()), default=0.0)
        self.sent.clear()
        self.arrived.clear()
        return delay, missing, twice


def during(site: Site, seconds: float, attack: Callable[[], None]) -> None:
    """Victims send every second while `attack` runs (once or in a loop, as it likes)."""
    end = time.monotonic() + seconds
    worker = threading.Thread(target=attack)
    worker.start()
    while time.monotonic() < end:
        site.victims_send()
        time.sleep(1)
    worker.join()


def stopped_submitters(site: Site, seconds: float) -> str:
    procs = []
    for sig in (signal.SIGSTOP, signal.SIGTSTP) * 3:
        p = subprocess.Popen(
            site.attacker.argv(program("sendmail"), "root"),
            stdin=subprocess.PIPE,
            env=site.w.env,
            cwd="/",
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        assert p.stdin is not None
        p.stdin.write(b"Subject: held\n\n" + b"x" * 100000)
        p.stdin.flush()
        time.sleep(0.2)
        os.kill(p.pid, sig)
        procs.append(p)
    during(site, seconds, lambda: None)
    for p in procs:
        os.kill(p.pid, signal.SIGKILL)
        p.wait()
        try:
            p.stdin.close()  # type: ignore[union-attr]
        except BrokenPipeError:
            pass
    return "6 of the attacker's sendmail stopped mid-message"


PLANT = r"""
import os, socket, sys, time
base, end = sys.argv[1], float(sys.argv[2])
n = 0
while time.time() < end:
    n += 1
    try:
        os.makedirs(f"{base}/Edir{n}/a/b"); open(f"{base}/Edir{n}/a/b/f", "w").write("x")
        os.symlink("/etc/shadow", f"{base}/Esym{n}"); os.symlink("/etc", f"{base}/Dsym{n}")
        open(f"{base}/Esym{n}x", "w").write("Sender: a@b\nRecipient: root\n")
        os.mkfifo(f"{base}/Efifo{n}"); os.mkdir(f"{base}/Dlone{n}")
        socket.socket(socket.AF_UNIX).bind(f"{base}/Esock{n}")
        open(f"{base}/Ehard{n}", "w").write("Sender: a@b\nRecipient: root\n")
        open(f"{base}/Dhard{n}", "w").write("Subject: h\n\nh\n"); os.link(f"{base}/Dhard{n}", f"{base}/zz{n}")
        open(f"{base}/E.bad{n}", "w").write("x")
    except OSError:
        pass
    time.sleep(0.2)
"""


def planted(site: Site, seconds: float) -> str:
    during(site, seconds, lambda: site.as_attacker(PLANT, str(time.time() + seconds)))
    return "directories (non-empty), symlinks, FIFOs, sockets, hard links, lone halves, bad names"


SQUAT = r"""
import os, sys, time
base = sys.argv[1]
now = int(time.time())
n = 0
for secs in range(now, now + 20):
    for pid in range(os.getpid(), os.getpid() + 40):
        for prefix in ("D", "E", "tmp_", "tmp_E"):
            try:
                open(f"{base}/{prefix}{secs:08x}00000{pid:x}", "w").close(); n += 1
            except OSError:
                pass
print(n)
"""


def squatted(site: Site, seconds: float) -> str:
    during(site, seconds, lambda: site.as_attacker(SQUAT))
    return "3200 guessed drop names taken first"


FORGE = r"""
import os, sys
base, victim = sys.argv[1], sys.argv[2]
envs = [f"Sender: {victim}@mail.example\nRecipient: root\n",
        "Sender: a@x> AUTH=<ceo@corp.example\nRecipient: root\n",
        "Sender: a@x\nRecipient: root> NOTIFY=SUCCESS\n",
        f"Sender: a@x\nRecipient: root\nRecipient: {victim}\n" + "Recipient: root\n" * 1000]
for i, env in enumerate(envs):
    open(f"{base}/Dforge{i}", "w").write(f"Received: from {victim} (uid 0)\nSubject: forged\n\nFORGED\n")
    open(f"{base}/Eforge{i}", "w").write(env)
"""


def forged(site: Site, seconds: float) -> str:
    during(site, seconds, lambda: site.as_attacker(FORGE, site.victims[0].name))
    forged_mail = [m for m in site.w.mbox().split(b"\nFrom ") if b"\nFORGED\n" in m]
    ours = f"\nReceived: from {site.attacker.name} (uid {site.attacker.uid})\n".encode()
    under_attacker = all(m.split(b"\nReceived: ")[1].startswith(ours[11:]) for m in forged_mail)
    return (
        "envelopes claiming a victim, carrying SMTP parameters, 1000 recipients:"
        f" {len(forged_mail)} delivered, each under the attacker's uid: {under_attacker}"
    )


def flood(site: Site, seconds: float) -> str:
    counts = {"accepted": 0, "refused": 0}

    def attack() -> None:
        for _ in range(60):
            r = site.w.submit(site.attacker, ["x@unreachable.example"], b"Subject: f\n\n" + b"f" * 20000)
            counts["accepted" if r.returncode == 0 else "refused"] += 1

    during(site, seconds, attack)
    return f"sendmail to an unreachable host: accepted={counts['accepted']} refused(75)={counts['refused']}"


FILL = r"""
import os, sys
base, inodes = sys.argv[1], sys.argv[2] == "1"
n = 0
try:
    if not inodes:
        with open(f"{base}/Dfill", "wb") as f:
            while True:
                f.write(b"x" * 65536); f.flush()
    while True:
        open(f"{base}/Dfill{n}", "w").close(); n += 1
except OSError:
    pass
"""


def filled(inodes: bool) -> Callable[[Site, float], str]:
    def attack(site: Site, seconds: float) -> str:
        site.running.clear()  # mail accepted now waits in the drop directory when the fill comes
        time.sleep(1.5)
        site.victims_send()
        site.as_attacker(FILL, "1" if inodes else "0")
        site.back = time.monotonic()  # over its cap, the attacker's files go at the next pass
        site.running.set()
        during(site, seconds, lambda: None)
        left = [n for n in os.listdir(site.w.incoming) if n.startswith("Dfill")]
        return f"the fill removed by the runner: {not left}; victims' refused submissions: {site.refused}"

    return attack


LOCK = r"""
import fcntl, os, sys, time
fd = os.open(sys.argv[1], os.O_RDWR)
fcntl.flock(fd, fcntl.LOCK_EX)
time.sleep(float(sys.argv[2]))
"""


def locked_mbox(site: Site, seconds: float) -> str:
    box = site.w.mail / site.attacker.name
    site.w.submit(site.victims[0], [site.attacker.name], b"Subject: first\n\ncreates the mbox\n")
    deadline = time.monotonic() + 30
    while not box.exists() and time.monotonic() < deadline:
        time.sleep(0.2)
    holder = subprocess.Popen(site.attacker.argv(PY, "-c", LOCK, str(box), str(seconds + 120)), cwd="/")
    time.sleep(0.5)
    for _ in range(3):
        site.w.submit(site.victims[0], [site.attacker.name], b"Subject: to the locked box\n\nx\n")
    during(site, seconds, lambda: None)
    site.holders.append(holder)  # held until the end: as long as the attacker likes
    return "the attacker holds its own mbox's lock; mail for it queued first"


ATTACKS: list[tuple[str, Callable[[Site, float], str], bool]] = [  # name, attack, fills the spool
    ("sigstop", stopped_submitters, False),
    ("plant", planted, False),
    ("squat", squatted, False),
    ("forge", forged, False),
    ("flood", flood, False),
    ("fill-blocks", filled(False), True),
    ("fill-inodes", filled(True), True),
    ("locked-mbox", locked_mbox, False),
]


def run(work: Path, seed: int, quick: bool = False, only: tuple[str, ...] = ()) -> Result:
    rng = random.Random(seed)
    attacks = [a for a in ATTACKS if not only or any(w in a[0] for w in only)]
    rng.shuffle(attacks)
    seconds = 4.0 if quick else 15.0
    result = Result()
    worst = 0.0
    passed = 0
    os.chmod(work, 0o755)
    with real_users("dmanb-m", "dmanb-a", "dmanb-b") as users:
        for n, (name, attack, fills) in enumerate(attacks):
            site = Site(work / f"site{n}", users, 600 if name == "fill-inodes" else 20000)
            try:
                start = time.monotonic()
                what = attack(site, seconds)
                delay, missing, twice = site.settle(site.back if fills else start)
                drops_left = [
                    d for d in site.w.drops() if os.lstat(site.w.incoming / d).st_uid != site.attacker.uid
                ]
            finally:
                site.close()
            ok = (
                missing == 0 and twice == 0 and delay <= LIMIT and not drops_left and "uid: False" not in what
            )
            passed += ok
            worst = max(worst, delay)
            mark = "ok  " if ok else "FAIL"
            result.details.append(
                f"{mark} {name}: {what}; victims' worst delay {delay:.1f}s"
                f"{' after the space came back' if fills else ''}, late={missing}, twice={twice}"
            )
            result.check(ok, f"{name}: delay={delay:.1f} missing={missing} twice={twice} left={drops_left}")
    result.line = f"hostile-neighbour campaign: attacks={len(attacks)} passed={passed} max_delay={worst:.1f}s"
    result.details.insert(0, f"seed={seed} attack length={seconds}s")
    return result


def main() -> int:
    p = parser(__doc__, SEED)
    p.add_argument("--only", nargs="*", default=[], help="attacks whose name contains one of these words")
    args = p.parse_args()
    return main_with(run, args, only=tuple(args.only))


if __name__ == "__main__":
    sys.exit(main())
