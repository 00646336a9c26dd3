"""What the campaigns share: the test helpers on sys.path, a work directory, argument parsing and
the result every campaign returns (its printed line, and the problems that fail it)."""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

TESTS = Path(__file__).resolve().parents[1]
if str(TESTS) not in sys.path:
    sys.path.insert(0, str(TESTS))


@dataclass
class Result:
    line: str = ""
    details: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    def check(self, ok: bool, problem: str) -> None:
        if not ok:
            self.problems.append(problem)

    def report(self) -> str:
        out = [self.line, *(f"  {d}" for d in self.details)]
        out += [f"  PROBLEM: {p}" for p in self.problems]
        return "\n".join(out)


def parser(doc: str | None, seed: int) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=(doc or "").split("\n\n")[0])
    p.add_argument("--seed", type=int, default=int(os.environ.get("DMA_CAMPAIGN_SEED", seed)))
    p.add_argument(
        "--workdir", type=Path, default=None, help="kept afterwards (default: a temp dir, removed)"
    )
    return p


def main_with(run, args: argparse.Namespace, **kw) -> int:  # type: ignore[no-untyped-def]
    """Run a campaign in args.workdir (or a fresh temp dir), print its report, exit 0 if it passed."""
    keep = args.workdir is not None
    # On the disk, not a tmpfs: the syncs must cost what they cost.
    work = args.workdir or Path(tempfile.mkdtemp(prefix="dma-campaign-", dir="/var/tmp"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        result = run(work=work, seed=args.seed, **kw)
    finally:
        if not keep:
            shutil.rmtree(work, ignore_errors=True)
    print(result.report(), flush=True)
    return 1 if result.problems else 0
