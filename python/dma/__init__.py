"""dma: a sendmail-compatible, outbound-only mail agent with a Rust core."""

from __future__ import annotations

import sys

__version__ = "0.1.0"

TYPE_CHECKING = False
if TYPE_CHECKING:
    from types import ModuleType

    from .api import Batch as Batch
else:
    ModuleType = type(sys)  # without importing `types`: `sendmail` starts lean


class _Package(ModuleType):
    """`dma.submit` is the API's function although `dma/submit.py` exists: a property on the
    package's type wins over the submodule that the import system sets as an attribute."""

    @property
    def submit(self) -> object:
        from .api import submit

        return submit

    @submit.setter
    def submit(self, module: object) -> None:
        pass  # the import of dma.submit (reachable as sys.modules["dma.submit"])


sys.modules[__name__].__class__ = _Package


def __getattr__(name: str) -> object:
    """`dma.Batch`, imported on first use: `sendmail` never loads the API."""
    if name == "Batch":
        from .api import Batch

        return Batch
    raise AttributeError(f"module 'dma' has no attribute {name!r}")
