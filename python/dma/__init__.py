"""dma: a sendmail-compatible, outbound-only mail agent with a Rust core (the layout: README.md)."""

from __future__ import annotations

TYPE_CHECKING = False
if TYPE_CHECKING:
    __version__: str


def __getattr__(name: str) -> object:
    """`dma.submit` and `dma.Batch` load the API on first use (`sendmail` never does);
    `__version__` is Cargo.toml's (as pyproject.toml's is), from the extension."""
    if name == "__version__":
        from ._native import __version__

        return __version__
    if name in ("submit", "Batch"):
        from . import api

        return getattr(api, name)
    raise AttributeError(f"module 'dma' has no attribute {name!r}")
