"""`python -m dma ...`: the `dma` program (`python -m dma -q`, `python -m dma doctor`)."""

import sys

from .cli import run

sys.argv[0] = "dma"
run()
