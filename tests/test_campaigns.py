"""The fast variants of the reliability campaigns (tests/campaigns/, docs/campaigns.md), for CI:
the same code and checks as the full runs, with fewer trials and messages. Each prints its line.

Full size: `python tests/campaigns/<name>.py` (see docs/campaigns.md).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from campaigns import faults, load, neighbours, pickup, runner_crash, submit_crash
from campaigns.common import Result

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="tmpfs mounts need root")


def check(result: Result) -> None:
    print()
    print(result.report())
    assert result.problems == [], result.report()


def test_submit_crash_campaign(tmp_path: Path) -> None:
    check(submit_crash.run(tmp_path, trials=60, inputs=10))


def test_runner_crash_campaign(tmp_path: Path) -> None:
    # tests/test_crash.py runs the same campaign with 100 trials; this is the quick look.
    check(runner_crash.run(tmp_path, min_trials=25))


@needs_root
def test_fault_campaign(tmp_path: Path) -> None:
    check(faults.run(tmp_path, quick=True, log=None))


@pytest.fixture
def shared_dir() -> Iterator[Path]:
    """A work directory that the campaigns' users can reach (pytest's tmp_path is root's only)."""
    work = Path(tempfile.mkdtemp(prefix="dma-campaign-", dir="/var/tmp"))
    try:
        yield work
    finally:
        shutil.rmtree(work, ignore_errors=True)


@needs_root
def test_pickup_fault_campaign(shared_dir: Path) -> None:
    check(pickup.run(shared_dir, seed=pickup.SEED, quick=True))


@needs_root
def test_hostile_neighbour_campaign(shared_dir: Path) -> None:
    check(neighbours.run(shared_dir, seed=neighbours.SEED, quick=True))


def test_load(tmp_path: Path) -> None:
    check(load.run(tmp_path, messages=1000, processes=4, deadline=120))
