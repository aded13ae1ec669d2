"""What produced a result: package versions, config, device, timings."""

from __future__ import annotations

import hashlib
import platform
import time
from contextlib import contextmanager
from importlib import metadata
from typing import Any, Iterator

PACKAGES = ("opposites", "torch", "transformer-lens", "transformers", "numpy", "pandas",
            "matplotlib", "jinja2", "snakemake")


def versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


@contextmanager
def timed() -> Iterator[dict[str, float]]:
    t: dict[str, float] = {}
    start = time.perf_counter()
    try:
        yield t
    finally:
        t["seconds"] = time.perf_counter() - start


def sha256(path) -> str:
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def meta(config: dict[str, Any], seconds: float, result: str | None = None, **extra: Any) -> dict[str, Any]:
    """The provenance record; with `result` (the file just written) also its checksum, which every
    later read checks (analyses.load_result)."""
    out = {"config": config, "versions": versions(), "seconds": round(seconds, 3), **extra}
    return out | ({"sha256": sha256(result)} if result else {})
