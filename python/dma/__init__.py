"""dma: a sendmail-compatible, outbound-only mail agent with a Rust core."""

__version__ = "0.1.0"
