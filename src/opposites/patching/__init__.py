"""Exact and attribution activation patching, fast: see engine.py for how."""
