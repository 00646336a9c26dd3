"""Fast entry points for `sendmail`, `mailq`, `newaliases` and `dma`.

An interpreter started with `site` reads every `.pth` file in site-packages before our code
starts: about a third more than its own start-up, paid by every cron job's mail. pip installs
shell scripts (wheel-data/scripts) that avoid it but pay a shell's start; a launcher written here
runs the interpreter directly, isolated and without `site` (`-I -S`), with only the directories
dma needs on `sys.path`; `dma install` puts these at `/usr/sbin/sendmail` and friends.
"""

from __future__ import annotations

import os
import sys

TEMPLATE = """#!{python} -IS
# Written by `dma install`: runs dma without `site`, for a fast start. Rewrite with `dma install`.
import sys
sys.path[:0] = {paths!r}
sys.argv[0] = {name!r}
from dma.cli import run
run()
"""


def search_path() -> list[str]:
    """The directories that hold dma and what it imports (dnspython), as this interpreter sees them."""
    import dns

    import dma

    paths: list[str] = []
    for module in (dma, dns):
        parent = os.path.dirname(os.path.dirname(os.path.abspath(module.__file__ or "")))
        if parent not in paths:
            paths.append(parent)
    return paths


def write_launcher(path: str, name: str) -> None:
    """Write an executable launcher at `path` that runs dma as program `name`, atomically."""
    text = TEMPLATE.format(python=sys.executable, paths=search_path(), name=name)
    tmp = f"{path}.dma-new"
    with open(tmp, "w") as f:
        f.write(text)
    os.chmod(tmp, 0o755)
    os.replace(tmp, path)
