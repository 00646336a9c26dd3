"""dma: a sendmail-compatible, outbound-only mail agent with a Rust core."""

from __future__ import annotations

import sys

TYPE_CHECKING = False
if TYPE_CHECKING:
    from types import ModuleType

    __version__: str  # Cargo.toml's, from the extension (pyproject.toml takes it from there too)
else:
    ModuleType = type(sys)  # without importing `types`: `sendmail` starts lean


class _Package(ModuleType):
    """`dma.submit` and `dma.Batch` load the API on first use (`sendmail` never does). Properties
    win over the `dma/submit.py` submodule that the import system sets as an attribute."""

    @property
    def __version__(self) -> str:
        from ._native import __version__

        return __version__

    @property
    def submit(self) -> object:
        from .api import submit

        return submit

    @submit.setter
    def submit(self, module: object) -> None:
        pass  # dma/submit.py stays reachable as sys.modules["dma.submit"]

    @property
    def Batch(self) -> object:
        from .api import Batch

        return Batch


sys.modules[__name__].__class__ = _Package
