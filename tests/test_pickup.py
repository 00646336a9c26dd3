"""Pickup in system mode under failure and attack (issue 10, findings 1, 3, 5, 9): real users,
the real drop directory, the real runner (`sendmail -D -q`). A drop accepted with exit 0 is
never lost: a temporary failure leaves it for the next pass, a configuration error stops the
runner, invalid content goes back to its owner's login; whatever is not a drop is removed, of any
type; a pickup repeated after a crash does not queue the message twice; halves do not linger.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import in_private_namespace
from dma_fixtures import program
from test_system_mode import VALID_ENV, User, World, message, real_users

pytestmark = [pytest.mark.skipif(os.geteuid() != 0, reason="needs root: creates users and a system spool")]


@pytest.fixture(scope="module")
def users() -> Iterator[tuple[User, User]]:
    with real_users("dmapk-a", "dmapk-b") as (a, b):
        yield a, b


@pytest.fixture
def world(users: tuple[User, User]) -> Iterator[World]:
    root = Path(tempfile.mkdtemp(prefix="dma-pickup-", dir="/tmp"))
    try:
        yield World(root)
    finally:
        shutil.rmtree(root, ignore_errors=True)


def runner(
    w: World, *, env: dict[str, str] | None = None, stale: int | None = None
) -> subprocess.CompletedProcess[bytes]:
    """`sendmail -D -q` as root; `stale` lowers drop.STALE (a ctime cannot be set back)."""
    setup = f"import dma.mail.drop; dma.mail.drop.STALE = {stale}; " if stale is not None else ""
    argv = [
        sys.executable,
        "-c",
        f"{setup}import sys; from dma.cli import main; sys.exit(main(['sendmail', '-D', '-q']))",
    ]
    r = subprocess.run(
        argv, capture_output=True, env={**w.env, **(env or {})}, cwd="/", timeout=60, check=False
    )
    assert b"Traceback" not in r.stderr, r.stderr.decode()
    return r


def deliveries(w: World, marker: bytes, user: str = "root") -> int:
    return w.mbox(user).count(marker)


# ---- finding 1: a temporary failure never costs a drop ----------------------------------------

FULL_SPOOL = r"""
import json, os, subprocess, sys
spool, conf, sendmail, uid, gid = sys.argv[1:6]
env = {"PATH": "/usr/bin:/bin", "DMA_CONF": conf, "LANG": "C.UTF-8"}
subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m,nr_inodes=64,mode=0711", "tmpfs", spool], check=True)
os.mkdir(f"{spool}/incoming"); os.chmod(f"{spool}/incoming", 0o1733)
as_user = ["setpriv", "--reuid", uid, "--regid", gid, "--clear-groups"]
sub = subprocess.run([*as_user, sendmail, "root"], input=b"Subject: s\n\nFULL-SPOOL-MAIL\n",
                     env=env, cwd="/", capture_output=True)
report = {"submit": sub.returncode}
with open(f"{spool}/filler", "wb") as f:  # root fills what is left: tmpfs keeps no reserve
    try:
        while True:
            f.write(b"x" * 65536); f.flush()
    except OSError as e:
        report["fill"] = e.errno
run = lambda: subprocess.run([sendmail, "-D", "-q"], env=env, cwd="/", capture_output=True)
r = run()
report["full"] = [r.returncode, r.stderr.decode(), sorted(os.listdir(f"{spool}/incoming"))]
os.unlink(f"{spool}/filler")
r = run()
report["after"] = [r.returncode, r.stderr.decode(), sorted(os.listdir(f"{spool}/incoming"))]
print(json.dumps(report))
"""


def test_a_drop_waits_while_the_spool_is_full_then_is_delivered(
    world: World, users: tuple[User, User]
) -> None:
    a, _ = users
    rep = in_private_namespace(
        FULL_SPOOL, str(world.spool), str(world.conf), program("sendmail"), str(a.uid), str(a.gid)
    )
    assert rep["submit"] == 0 and rep["fill"] == 28  # ENOSPC
    code, err, left = rep["full"]
    assert code == 0 and "Traceback" not in err
    assert [n[0] for n in left] == ["D", "E"], left  # kept for the next pass
    code, err, left = rep["after"]
    assert (code, left) == (0, []), err
    assert deliveries(world, b"FULL-SPOOL-MAIL") == 1


@pytest.mark.parametrize("step", ["read", "parse", "alias", "passwd", "write", "sync"])
def test_a_fault_at_any_pickup_step_keeps_the_drop(world: World, users: tuple[User, User], step: str) -> None:
    a, _ = users
    assert world.submit(a, ["root"], message("FAULTY")).returncode == 0
    for fault in ("EIO", "EMFILE"):
        r = runner(world, env={"DMA_PICKUP_FAULT": f"{step}:{fault}"})
        assert r.returncode == 0, r.stderr
        assert len(world.drops()) == 2 and world.spool_files() == [], world.spool_files()
    assert runner(world).returncode == 0
    assert world.drops() == [] and deliveries(world, b"FAULTY") == 1


def test_a_broken_aliases_file_stops_the_runner_and_keeps_the_drop(
    world: World, users: tuple[User, User]
) -> None:
    a, _ = users
    assert world.submit(a, ["root"], message("ALIASES-BEING-EDITED")).returncode == 0
    world.aliases.write_text("postmaster: root\nroot\n")  # root mid-edit: no `:' yet
    r = runner(world)
    assert r.returncode == 78 and r.stderr.count(b"\n") == 1, r.stderr
    assert len(world.drops()) == 2
    world.aliases.write_text("")
    assert runner(world).returncode == 0
    assert world.drops() == [] and deliveries(world, b"ALIASES-BEING-EDITED") == 1


def test_invalid_content_goes_back_to_the_owner_login_or_is_kept(
    world: World, users: tuple[User, User]
) -> None:
    a, _ = users
    forged = b"Sender: ceo@corp.example\nRecipient: x@-bad-.example\n"
    world.drop_pair(a, "bad1", forged, message("BAD-CONTENT"))
    # A uid without a passwd entry: no login to tell, so the drop is kept for the postmaster.
    ghost = User.__new__(User)
    ghost.name, ghost.uid, ghost.gid = "ghost", 64999, 64999
    world.drop_pair(ghost, "bad2", forged, message("GHOST-CONTENT"))
    assert runner(world).returncode == 0
    assert world.drops() == []
    notice = world.mbox(a.name)
    assert b"drop bad1 was not accepted" in notice and b"BAD-CONTENT" not in notice
    assert b"corp.example" not in world.mbox() and not (world.mail / "ceo").exists()
    kept = sorted(os.listdir(world.spool / "quarantine"))
    assert kept == ["Dbad2", "Ebad2"]
    assert b"GHOST-CONTENT" in (world.spool / "quarantine" / "Dbad2").read_bytes()


def test_per_user_cap(world: World, users: tuple[User, User]) -> None:
    a, b = users
    world.write_conf("MAXUSERMSGS 2")
    for n in range(2):  # to an unreachable host: they stay queued
        assert world.submit(a, ["x@remote.example"], message(f"held {n}")).returncode == 0
    assert runner(world).returncode == 0
    assert (world.spool / f"usage.{a.uid}").read_text().split()[0] == "2"
    r = world.submit(a, ["root"], message("one too many"))
    assert r.returncode == 75 and r.stderr.count(b"\n") == 1 and b"most allowed" in r.stderr, r.stderr
    assert world.drops() == []  # nothing of it written
    assert world.submit(b, ["root"], message("B-IS-FINE")).returncode == 0
    # A drop written past the check (a burst, or by hand) waits, never lost, never queued over the cap.
    world.drop_pair(a, "burst", VALID_ENV, message("BURST"))
    assert runner(world).returncode == 0
    assert deliveries(world, b"B-IS-FINE") == 1 and world.drops() == ["Dburst", "Eburst"]
    world.write_conf("MAXUSERMSGS 3")
    assert runner(world).returncode == 0
    assert world.drops() == [] and deliveries(world, b"BURST") == 1


def test_a_picked_up_drop_is_logged_once_with_its_id_once(world: World, users: tuple[User, User]) -> None:
    a, _ = users
    logfile = world.root / "dma.log"
    world.write_conf(f"LOGFILE {logfile}")
    assert world.submit(a, ["root"], message("LOGGED")).returncode == 0
    assert runner(world).returncode == 0 and deliveries(world, b"LOGGED") == 1
    queued = [json.loads(line) for line in logfile.read_text().splitlines()]
    queued = [r for r in queued if r["event"] == "queued" and r.get("uid") == a.uid]
    assert len(queued) == 1, queued
    assert queued[0]["text"] == f"new mail from uid {a.uid} to root", queued[0]


# ---- finding 3: whatever is not a drop is removed, of any type ---------------------------------

PLANT = r"""
import os, socket, sys
base, outside = sys.argv[1], sys.argv[2]
os.makedirs(f"{base}/Edeep/a/b")
open(f"{base}/Edeep/a/b/f", "w").write("x")
os.symlink(outside, f"{base}/Edeep/link")          # never followed
os.symlink(outside, f"{base}/Esym")
os.mkfifo(f"{base}/Efifo")
socket.socket(socket.AF_UNIX).bind(f"{base}/Esock")
os.mkdir(f"{base}/Dlone")
os.mkdir(f"{base}/junk"); open(f"{base}/junk/f", "w").write("x")
open(f"{base}/Ebad.name", "w").write("Sender: a@mail.example\nRecipient: root\n")
"""


def test_anything_that_is_not_a_drop_is_removed_whatever_its_type(
    world: World, users: tuple[User, User]
) -> None:
    a, b = users
    outside = world.root / "outside"
    outside.mkdir()
    (outside / "keep").write_text("KEEP")
    r = world.user_script(a, PLANT, str(world.incoming), str(outside))
    assert r.returncode == 0, r.stderr
    assert world.submit(b, ["root"], message("B-NEXT-TO-JUNK")).returncode == 0
    assert runner(world).returncode == 0
    assert world.drops() == []  # gone in one pass: nothing left to fire dma.path again
    assert (outside / "keep").read_text() == "KEEP"
    assert deliveries(world, b"B-NEXT-TO-JUNK") == 1
    assert os.listdir(world.spool / "quarantine") == []


# ---- finding 5: a pickup killed after its commit does not deliver twice -------------------------


def test_pickup_killed_between_commit_and_unlink_delivers_once(
    world: World, users: tuple[User, User]
) -> None:
    a, _ = users
    assert world.submit(a, ["root"], message("ONLY-ONCE")).returncode == 0
    r = runner(world, env={"DMA_PICKUP_FAULT": "unlink:KILL"})
    assert r.returncode == -9
    assert len(world.drops()) == 2 and any(f.startswith("Q") for f in world.spool_files())
    assert runner(world).returncode == 0
    assert world.drops() == [] and deliveries(world, b"ONLY-ONCE") == 1


# ---- finding 9: halves do not linger, ids cannot be guessed --------------------------------------


def test_lone_halves_are_removed_after_a_bounded_time(world: World, users: tuple[User, User]) -> None:
    a, _ = users
    r = world.user_script(
        a,
        """
        import sys
        for name in ("Dlonely", "tmp_abandoned"):
            open(f"{sys.argv[1]}/{name}", "w").write("x" * 100000)
        """,
        str(world.incoming),
    )
    assert r.returncode == 0, r.stderr
    assert runner(world).returncode == 0
    assert world.drops() == ["Dlonely", "tmp_abandoned"]  # maybe a submitter at work: not yet
    time.sleep(2.1)
    assert runner(world, stale=2).returncode == 0
    assert world.drops() == []


def test_drop_ids_are_unguessable(world: World, users: tuple[User, User]) -> None:
    a, _ = users
    for _ in range(2):
        assert world.submit(a, ["root"], message("id")).returncode == 0
    ids = sorted({n[1:] for n in world.drops()})
    assert len(ids) == 2 and all(len(i) == 29 for i in ids), ids
    # 64 random bits at the end, not the submitter's pid.
    assert ids[0][13:] != ids[1][13:] and ids[0][-16:] != ids[1][-16:]
    assert runner(world).returncode == 0 and deliveries(world, b"\n\nid\n") == 2
