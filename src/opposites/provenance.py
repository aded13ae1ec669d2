"""What produced a result: package versions, config, the hash of the code that ran, device, timings;
and, at start-up, whether existing results were made with other versions of the numeric packages."""

from __future__ import annotations

import hashlib
import platform
import time
from contextlib import contextmanager
from pathlib import Path
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


def meta(config: dict[str, Any], seconds: float, result: str | None = None, code: list[str] | None = None,
         **extra: Any) -> dict[str, Any]:
    """The provenance record; with `result` (the file just written) also its checksum, which every
    later read checks (analyses.load_result); with `code` (the rule's code inputs) their hash."""
    from opposites.codedeps import code_hash

    out = {"config": config, "versions": versions(), "seconds": round(seconds, 3), **extra}
    out |= {"code_sha256": code_hash(code)} if code is not None else {}
    return out | ({"sha256": sha256(result)} if result else {})


NUMERIC = ("torch", "transformer-lens", "transformers")  # packages whose version can change a result


def version_drift(results: str | Path) -> str | None:
    """A paragraph naming the numeric packages whose installed version differs from the one that
    made the results under `results` (their provenance files), or None when none differs."""
    import json

    now = versions()
    made: dict[str, dict[str, set[str]]] = {}  # package -> recorded version -> stage jobs
    for path in sorted(Path(results).glob("*/*.meta.json")):
        try:
            record = json.loads(path.read_text())
        except (OSError, ValueError):
            continue  # a damaged provenance file is reported where the result is read
        for name in NUMERIC:
            old = record.get("versions", {}).get(name)
            if old and old != now[name]:
                made.setdefault(name, {}).setdefault(old, set()).add(path.parent.name)
    if not made:
        return None
    diffs = "; ".join(f"{name} {', '.join(sorted(old))} (tasks {', '.join(sorted(set().union(*old.values())))}), "
                      f"this is {now[name]}" for name, old in made.items())
    return (f"WARNING: results in {results} were made with {diffs}. They are kept as they are and the "
            f"paper will mix them with anything rerun now. To remake them with this installation: "
            f"snakemake --cores 4 paper --forceall (or delete {results}); to keep them, carry on.")
