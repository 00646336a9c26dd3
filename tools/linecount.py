"""Count the project's non-test lines: the budget of the house.

Every line (blank and comment lines too) of python/dma/**/*.py and *.pyi, and of rust/src/**/*.rs
without `#[cfg(test)]` items and the files only test code declares. Exits 1 when a file passes
FILE_LIMIT, naming it, and (with --budget) when the total passes BUDGET.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

BUDGET = 8000
FILE_LIMIT = 500
ROOT = Path(__file__).resolve().parent.parent
TEST_MOD = re.compile(r"^\s*mod\s+(\w+)\s*;")


def rust_lines(text: str) -> tuple[int, list[str]]:
    """Lines outside `#[cfg(test)]` items, and the modules declared only for tests."""
    lines = text.splitlines()
    kept, test_mods, i = 0, [], 0
    while i < len(lines):
        if lines[i].strip() != "#[cfg(test)]":
            kept += 1
            i += 1
            continue
        i += 1
        while i < len(lines) and lines[i].strip().startswith("#["):
            i += 1
        if i < len(lines) and (m := TEST_MOD.match(lines[i])):
            test_mods.append(m.group(1))
            i += 1
            continue
        depth, opened = 0, False
        while i < len(lines):
            code = lines[i].split("//")[0]
            depth += code.count("{") - code.count("}")
            opened = opened or "{" in code
            i += 1
            if (opened and depth <= 0) or (not opened and code.rstrip().endswith(";")):
                break
    return kept, test_mods


def count() -> dict[str, int]:
    sizes: dict[str, int] = {}
    for path in sorted((ROOT / "python/dma").rglob("*.py*")):
        if path.suffix in (".py", ".pyi"):
            sizes[str(path.relative_to(ROOT))] = len(path.read_text().splitlines())
    test_only: set[Path] = set()
    for path in sorted((ROOT / "rust/src").rglob("*.rs")):
        kept, mods = rust_lines(path.read_text())
        sizes[str(path.relative_to(ROOT))] = kept
        base = path.parent if path.name in ("lib.rs", "mod.rs") else path.with_suffix("")
        test_only.update(base / f"{m}.rs" for m in mods)
        test_only.update(base / m / "mod.rs" for m in mods)
    for path in test_only:
        sizes.pop(str(path.relative_to(ROOT)), None)
    return sizes


def main() -> int:
    sizes = count()
    total = sum(sizes.values())
    over = {name: n for name, n in sizes.items() if n > FILE_LIMIT}
    verbose = "-v" in sys.argv
    for name, n in sorted(sizes.items(), key=lambda item: -item[1]):
        if verbose or name in over:
            print(f"{n:6} {name}{'  (over ' + str(FILE_LIMIT) + ')' if name in over else ''}")
    print(f"{total} non-test lines in {len(sizes)} files (budget {BUDGET}, {FILE_LIMIT} a file)")
    return 1 if over or ("--budget" in sys.argv and total > BUDGET) else 0


if __name__ == "__main__":
    sys.exit(main())
