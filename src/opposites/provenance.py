"""What produced a result: package versions, config, device, timings."""

from __future__ import annotations

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


def meta(config: dict[str, Any], seconds: float, **extra: Any) -> dict[str, Any]:
    return {"config": config, "versions": versions(), "seconds": round(seconds, 3), **extra}
