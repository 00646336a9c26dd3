"""Reliability campaigns: seeded, reproducible, each one command that prints its figures.

See docs/campaigns.md. Each module runs as `python -m campaigns.<name>` from `tests/` or as a
script (`python tests/campaigns/<name>.py`); tests/test_campaigns.py runs the fast variants.
"""
