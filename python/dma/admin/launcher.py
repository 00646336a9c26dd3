"""The fast launchers `dma install` writes (docs/install.md): `python -IS` with only dma's directories
on `sys.path`, since reading every `.pth` file (`site`) costs a third more than the start-up itself.
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

    dirs = (os.path.dirname(os.path.dirname(os.path.abspath(m.__file__ or ""))) for m in (dma, dns))
    return list(dict.fromkeys(dirs))


def script(name: str) -> str:
    """The launcher that runs dma as program `name` with this interpreter."""
    return TEMPLATE.format(python=sys.executable, paths=search_path(), name=name)


def write_file(path: str, text: str, mode: int) -> None:
    """Write `text` at `path` with `mode`, atomically: a reader finds the old file or the new one."""
    tmp = f"{path}.dma-new"
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.chmod(tmp, mode)
    os.replace(tmp, path)
