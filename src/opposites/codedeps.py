"""The code a job runs, found from the source alone (no import, no torch): a script, every module of
this package it imports transitively (at module level or inside functions), the sibling scripts it
imports (`_common`), and the package's data files that those modules name (task files, the config
schema, data/). The Snakefile makes these every rule's `code` inputs, so that editing any of them
reruns exactly the jobs that run it; provenance records their hash.

  closure(files)                    Python files reached from `files` by imports, sorted
  data_files(modules, tasks)        the package data those modules read (task files of `tasks` only)
  code_hash(paths)                  one SHA-256 over the files' relative paths and contents
"""

from __future__ import annotations

import ast
import hashlib
import os
from functools import lru_cache
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent  # src/opposites
NAME = PACKAGE.name


def _module_file(dotted: str) -> Path | None:
    """opposites.a.b -> its .py file (a package's __init__.py), or None if it is no module here."""
    parts = dotted.split(".")
    if parts[0] != NAME:
        return None
    base = PACKAGE.joinpath(*parts[1:])
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _with_parents(dotted: str) -> list[Path]:
    """Importing opposites.a.b runs opposites/__init__.py and opposites/a/__init__.py first."""
    parts = dotted.split(".")
    found = [_module_file(".".join(parts[:i])) for i in range(1, len(parts) + 1)]
    return [f for f in found if f is not None]


def _dotted(path: Path) -> str | None:
    try:
        rel = path.relative_to(PACKAGE)
    except ValueError:
        return None
    parts = [NAME, *rel.with_suffix("").parts]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


@lru_cache(maxsize=None)
def _tree(path: Path) -> ast.Module:
    return ast.parse(path.read_text(), filename=str(path))


@lru_cache(maxsize=None)
def imports(path: Path) -> tuple[Path, ...]:
    """The files `path` imports directly: modules of this package (with their packages' __init__),
    and, for a file outside it, sibling modules in its own folder (a script's `_common`).
    `importlib.import_module(f"opposites.x.{name}")` cannot be resolved statically: callers add
    such modules themselves (an analysis's module, a figure section's module)."""
    own = _dotted(path)
    out: list[Path] = []
    for node in ast.walk(_tree(path)):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: from . import x, from .a import b
                base = own.split(".") if own else []
                base = base[: len(base) - node.level + (1 if path.name == "__init__.py" else 0)]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            # `from opposites import paper` imports the module opposites.paper; `from opposites.io import
            # write_json` imports opposites.io (write_json is no module)
            names = [module] + [f"{module}.{a.name}" for a in node.names]
        else:
            continue
        for name in names:
            out += _with_parents(name)
            sibling = path.parent / f"{name}.py"
            if own is None and "." not in name and sibling.is_file():
                out.append(sibling)
    return tuple(dict.fromkeys(p.resolve() for p in out if p.resolve() != path.resolve()))


def closure(files) -> list[Path]:
    """Every Python file reached from `files` (included, with the __init__ of each package they
    belong to, which importing them runs) by imports, sorted."""
    start = {Path(f).resolve() for f in files}
    start |= {p for f in list(start) if (name := _dotted(f)) for p in _with_parents(name)}
    return list(_closure(frozenset(start)))


@lru_cache(maxsize=None)
def _closure(files: frozenset[Path]) -> tuple[Path, ...]:
    seen: set[Path] = set()
    todo = list(files)
    while todo:
        f = todo.pop()
        if f not in seen:
            seen.add(f)
            todo += imports(f)
    return tuple(sorted(seen))


@lru_cache(maxsize=None)
def _package_data() -> tuple[Path, ...]:
    return tuple(sorted(p for p in PACKAGE.rglob("*") if p.is_file() and p.suffix in (".yaml", ".yml", ".json")
                  and "__pycache__" not in p.parts))


@lru_cache(maxsize=None)
def _strings(path: Path) -> frozenset[str]:
    return frozenset(n.value for n in ast.walk(_tree(path)) if isinstance(n, ast.Constant) and isinstance(n.value, str))


def data_files(modules, tasks) -> list[Path]:
    """Package data files that one of `modules` names in its string constants: by the file's own
    name ("config.schema.yaml"), or by its folder's name together with its suffix ("tasks" and
    ".yaml", as in joinpath("tasks", f"{task}.yaml")). Of the task files, those of `tasks`."""
    out = []
    for f in _package_data():
        rel = f.relative_to(PACKAGE)
        if any(f.name in s or (len(rel.parts) > 1 and rel.parts[0] in s and f.suffix in s)
               for s in map(lambda m: _strings(Path(m).resolve()), modules)):
            if rel.parts[0] == "tasks" and f.stem not in tasks:
                continue
            out.append(f)
    return out


def code_hash(paths) -> str:
    """SHA-256 over each file's path relative to the package's parent folder (or its name) and
    contents, in sorted order: the same code gives the same hash wherever the checkout lies."""
    h = hashlib.sha256()
    for p in sorted(Path(p).resolve() for p in paths):
        try:
            name = p.relative_to(PACKAGE.parent).as_posix()
        except ValueError:
            name = f"{p.parent.name}/{p.name}"
        h.update(name.encode() + b"\0" + p.read_bytes() + b"\0")
    return h.hexdigest()


def relative(paths, start: str | Path = ".") -> list[str]:
    """Paths relative to the workflow folder, so that a moved or copied checkout stays up to date."""
    return [os.path.relpath(p, start) for p in paths]
