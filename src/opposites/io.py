"""Write results atomically: a file either is complete or does not exist."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any, Callable


def current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _atomic(path: str | Path, write: Callable[[str], None]) -> None:
    """Write through a temporary file beside `path`, then rename it into place. The file gets the
    permissions of a plainly created one (0666 less the umask; mkstemp's are 0600), so a lab sharing
    a results folder can read it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".part")
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, 0o666 & ~current_umask())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def share_readable(folder: str | Path) -> None:
    """Give `folder` and everything under it the permissions of plainly created ones (mkdtemp makes
    0700 folders, safetensors 0600 files), so that others in the group can read a shared results folder."""
    mask = current_umask()
    for p in [Path(folder), *Path(folder).rglob("*")]:
        os.chmod(p, (0o777 if p.is_dir() else 0o666) & ~mask)


def unwritable_folder(root: str | Path, outputs: tuple[str | Path, ...] = ()) -> str | None:
    """The first folder the build would write into under `root` (or its nearest existing parent)
    where no file can be created, with the reason; None when every one is writable. It tries to
    create a file rather than asking os.access, which says yes to root even where the folder is
    immutable or on a read-only file system. Folders that are themselves a rule's output (`outputs`,
    written elsewhere and moved into place) are left alone: a file created in one would change its
    modification time, and Snakemake would take every job downstream for out of date."""
    root = Path(root)
    existing = root if root.exists() else next(p for p in root.parents if p.exists())
    skip = {Path(o).resolve() for o in outputs}
    inside = (p for p in existing.rglob("*") if p.is_dir() and not any(q in skip for q in (p.resolve(), *p.resolve().parents)))
    folders = [existing] + sorted(inside) if existing == root else [existing]
    for folder in folders:
        try:
            fd, tmp = tempfile.mkstemp(dir=folder, prefix=".writable.")
            os.close(fd)
            os.remove(tmp)
        except OSError as e:
            return f"{folder} ({e.strerror})"
    return None


def atomic_write_text(path: str | Path, text: str) -> None:
    _atomic(path, lambda tmp: Path(tmp).write_text(text))


def write_json(obj: Any, path: str | Path) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def write_csv(df, path: str | Path) -> None:
    _atomic(path, lambda tmp: df.to_csv(tmp, index=False, float_format="%.6g"))


def read_json(path: str | Path) -> Any:
    with open(path) as f:
        return json.load(f)
