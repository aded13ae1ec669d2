"""Results that travel without the weights (the cache showyourwork keeps on Zenodo).

  pack(results, out)   results/<model>/ (results, provenance, prompts, figures, tables, logs and
                       benchmarks; no model weights, no built paper) into one .tar.gz, with a
                       MANIFEST.json of SHA-256 checksums
  verify(results)      in a clone where such an archive was unpacked: every listed file present and
                       unchanged, or ArchiveError naming the bad file
  code_changes(...)    the stages whose recorded code hash differs from this checkout's code
  settle(results)      once after unpacking: give the files modification times in pipeline order,
                       newer than the clone's sources, so Snakemake sees them as up to date and the
                       paper builds offline without running any analysis

The Snakefile calls verify and settle at start-up when results/<model>/MANIFEST.json exists, and
then skips the hub check: building the paper from archived results needs no model.
"""

from __future__ import annotations

import io
import json
import os
import tarfile
import time
from pathlib import Path

from opposites.provenance import sha256

MANIFEST = "MANIFEST.json"
SETTLED = ".settled"  # written by settle(): the mtimes were set once
LEFT_OUT = ("model", "paper")  # weights (built or trained models) and the paper, which is rebuilt


class ArchiveError(RuntimeError):
    pass


def packed_files(results: str | Path) -> list[str]:
    """Relative paths under results/<model>/ that an archive holds, sorted."""
    root = Path(results)
    out = []
    for p in root.rglob("*"):
        rel = p.relative_to(root)
        if p.is_file() and rel.parts[0] not in LEFT_OUT and rel.name not in (MANIFEST, SETTLED):
            out.append(rel.as_posix())
    return sorted(out)


def pack(results: str | Path, out: str | Path) -> dict[str, str]:
    """Write the archive (atomically) and return its manifest {relative path: sha256}."""
    root = Path(results)
    files = packed_files(root)
    if not files:
        raise ArchiveError(f"{root} holds no results to archive; build them first (snakemake --cores 4 paper).")
    manifest = {f: sha256(root / f) for f in files}
    out = Path(out)
    tmp = out.with_name(out.name + ".part")
    with tarfile.open(tmp, "w:gz") as tar:
        data = json.dumps({"results": root.as_posix(), "files": manifest}, indent=1).encode()
        info = tarfile.TarInfo(f"{root.as_posix()}/{MANIFEST}")
        info.size, info.mtime = len(data), int(time.time())
        tar.addfile(info, io.BytesIO(data))
        for f in files:
            tar.add(root / f, arcname=f"{root.as_posix()}/{f}")
    tmp.replace(out)
    return manifest


def is_unpacked(results: str | Path) -> bool:
    return (Path(results) / MANIFEST).exists()


def verify(results: str | Path) -> None:
    """Every file of the manifest present and matching its checksum; raises naming the first bad one."""
    root = Path(results)
    manifest = json.loads((root / MANIFEST).read_text())["files"]
    for f, digest in manifest.items():
        p = root / f
        if not p.exists():
            raise ArchiveError(f"the archived results in {root} are incomplete: {p} is missing. Unpack the "
                               "archive again (tar xzf <archive>.tar.gz) or delete the folder to recompute.")
        if sha256(p) != digest:
            raise ArchiveError(f"the archived results in {root} were changed: {p} does not match its checksum "
                               f"in {MANIFEST}. Unpack the archive again, or delete the folder to recompute.")


def code_changes(results: str | Path, expected: dict[tuple[str, str], tuple[list[str], str]]) -> str | None:
    """A warning naming the stage jobs whose archived results record a code hash other than
    this checkout's; None when all agree. `expected`: (task, stage) -> (analyses, current hash)."""
    root, changed = Path(results), []
    for (task, stage), (names, digest) in expected.items():
        recorded = {json.loads(m.read_text()).get("code_sha256") for m in
                    (root / task / f"{name}.meta.json" for name in names) if m.exists()}
        if recorded - {digest}:
            changed.append(f"{stage}_{task}")
    if not changed:
        return None
    return (f"WARNING: the archived results of {', '.join(changed)} were made by other code than this "
            f"checkout's (their provenance records another code hash). They are kept: the paper shows them "
            f"as archived. To recompute them with this code (needs the model): snakemake --cores 4 paper "
            f"--forcerun {' '.join(changed)}.")


def _rank(rel: str) -> int:
    """Pipeline order: prompts, analysis results, figures and tables, then logs and benchmarks."""
    parts = rel.split("/")
    if parts[-1] == "prompts.jsonl":
        return 0
    if parts[0] in ("figures", "tables"):
        return 2
    if parts[0] in ("logs", "benchmarks"):
        return 3
    return 1


def settle(results: str | Path) -> bool:
    """Once per unpacking: set the archived files' modification times in pipeline order, newer than
    anything in the clone, so that no rule reruns. Returns whether it did."""
    root = Path(results)
    marker = root / SETTLED
    if marker.exists():
        return False
    manifest = json.loads((root / MANIFEST).read_text())["files"]
    now = time.time()
    for f in manifest:
        t = now + _rank(f)
        os.utime(root / f, (t, t))
    marker.write_text("modification times set after unpacking\n")
    return True
