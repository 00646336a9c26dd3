"""dma: a sendmail-compatible, outbound-only mail agent with a Rust core.

`cli` is the sendmail command line, `config` and `errors` are shared by all; `mail/` is the path a
message takes (submission, queue, delivery, bounces); `admin/` holds the tools (install, doctor,
queue control); `api`, `django_backend` and `logging_handler` are the integrations for programs.
"""

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
