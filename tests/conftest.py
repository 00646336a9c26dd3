"""Shared fixtures. SMTP servers live in smtp_servers.py (importable from any test)."""

from __future__ import annotations

import pytest
from smtp_servers import Certs


@pytest.fixture(scope="session")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    """A trustme CA (ca_file) with certificates for mx.test and other.test."""
    return Certs.create(tmp_path_factory.mktemp("certs"))


# Command-line test fixtures (dma_env): tests/dma_fixtures.py
from dma_fixtures import dma_env  # noqa: E402, F401
