"""How GPT-2 completes opposites: analyses behind a reproducible paper build."""

__version__ = "0.1.0"
