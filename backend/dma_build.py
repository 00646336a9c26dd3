"""The build backend for `pip install` of the sdist: maturin's, except that without cargo it says so
in one line. (maturin would instead download a Rust toolchain from the network into a temporary
directory, or fail with a long traceback where it cannot.) It also gives the programs in
wheel-data/scripts their execute bits back: maturin's sdist stores every file as 0644."""

from __future__ import annotations

import os
import shutil
from typing import Any

from maturin import *  # noqa: F403 - every PEP 517 hook
from maturin import build_wheel as _build_wheel
from maturin import get_requires_for_build_wheel as _requires


def get_requires_for_build_wheel(config_settings: Any = None) -> list[str]:
    if not shutil.which("cargo"):
        raise SystemExit(
            "dma-mta: building from source needs Rust 1.89 or newer (cargo on PATH, e.g. from rustup.rs);"
            " the prebuilt wheels need no compiler"
        )
    return _requires(config_settings)


def build_wheel(wheel_directory: str, config_settings: Any = None, metadata_directory: Any = None) -> str:
    for name in os.listdir("wheel-data/scripts"):
        os.chmod(f"wheel-data/scripts/{name}", 0o755)
    return _build_wheel(wheel_directory, config_settings, metadata_directory)
