"""Shared fixtures. SMTP servers live in smtp_servers.py (importable from any test)."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import pytest
from dma import _native
from dma.admin import install
from smtp_servers import Certs


@pytest.fixture(scope="session")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    """A trustme CA (ca_file) with certificates for mx.test and other.test."""
    return Certs.create(tmp_path_factory.mktemp("certs"))


# Command-line test fixtures (dma_env): tests/dma_fixtures.py
from dma_fixtures import dma_env  # noqa: E402, F401


def launcher_paths() -> list[str]:
    """What `nobody` must reach to run a launcher: the interpreter, its library, dma, dnspython."""
    python = os.path.realpath(sys.executable)
    return [sys.executable, python, sys.base_prefix, sys.prefix, *install.search_path()]


@pytest.fixture
def traversable() -> Iterator[None]:
    """Give `o+x` to the directories above the interpreter and dma that lack it; put them back after."""
    changed: dict[str, int] = {}
    for path in launcher_paths():
        d = os.path.dirname(os.path.abspath(path)) if not os.path.isdir(path) else os.path.abspath(path)
        while True:
            st = os.stat(d)
            if not st.st_mode & stat.S_IXOTH and d not in changed:
                changed[d] = stat.S_IMODE(st.st_mode)
                os.chmod(d, changed[d] | stat.S_IXOTH)
            if d == "/":
                break
            d = os.path.dirname(d)
    try:
        yield
    finally:
        for d, m in changed.items():
            os.chmod(d, m)


def in_private_namespace(script: str, *args: str, net: bool = False, timeout: float = 120) -> dict[str, Any]:
    """Run the Python `script` with `args` in a private mount namespace (and network namespace with
    `net`), and return the JSON object its last line prints. The test is skipped where there are no
    namespaces, or when the script prints `{"skip": why}`."""
    unshare = ["unshare", "--mount", "--propagation", "private", *(["--net"] if net else [])]
    proc = subprocess.run(
        [*unshare, sys.executable, "-c", script, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    if proc.returncode and "unshare failed" in proc.stderr:
        pytest.skip(f"no namespaces here: {proc.stderr.strip()}")
    assert proc.returncode == 0, proc.stderr
    report: dict[str, Any] = json.loads(proc.stdout.splitlines()[-1])
    if "skip" in report:
        pytest.skip(report["skip"])
    return report


@pytest.fixture
def syncs(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every `_native.sync_spool` call (the real one still runs)."""
    calls: list[str] = []
    real = _native.sync_spool

    def spy(spooldir: str) -> None:
        calls.append(str(spooldir))
        real(spooldir)

    monkeypatch.setattr(_native, "sync_spool", spy)
    return calls
