"""Moved: `Route` to dma.config, `choose` to dma.mail.routing (this name stays for remote.py)."""

from dma.config import Route as Route
from dma.mail.routing import choose as choose
