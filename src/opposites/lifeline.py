"""A job ends with the Snakemake that started it.

Snakemake killed with SIGKILL (an out-of-memory kill, `kill -9`, a lost terminal session) cannot stop
its jobs, and an analysis job would keep running orphaned for minutes. Each job therefore watches the
nearest `snakemake` process above it and exits when that process is gone. Nothing half-written
remains: every result is written atomically, so the rerun redoes the job. Linux only (/proc);
elsewhere, and outside Snakemake, watch() does nothing.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from pathlib import Path
from typing import Callable


def _stat(pid: int) -> tuple[int, int] | None:
    """(parent pid, start time in clock ticks) of a live process, None if there is none."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return int(fields[1]), int(fields[19])  # after the name: state ppid ... starttime (field 22)


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def snakemake_ancestor(pid: int | None = None) -> tuple[int, int] | None:
    """(pid, start time) of the nearest process above `pid` (default: this one) that runs snakemake."""
    info = _stat(os.getpid() if pid is None else pid)
    while info is not None and info[0] > 1:
        parent = info[0]
        info = _stat(parent)
        if info is not None and "snakemake" in _cmdline(parent):
            return parent, info[1]
    return None


def alive(pid: int, start: int) -> bool:
    """The process is still there (and is the same one: pids are reused)."""
    info = _stat(pid)
    return info is not None and info[1] == start


def _stop(pid: int) -> None:
    print(f"snakemake (pid {pid}) is gone: stopping this job so it does not run on orphaned; "
          f"its outputs were not written, and the next build reruns it.", file=sys.stderr, flush=True)
    os._exit(1)


def watch(interval: float = 2.0, on_gone: Callable[[int], None] = _stop) -> threading.Thread | None:
    """Start a daemon thread that calls on_gone(pid) once the snakemake above this process is gone."""
    found = snakemake_ancestor()
    if found is None:
        return None
    pid, start = found

    def run() -> None:
        while alive(pid, start):
            time.sleep(interval)
        on_gone(pid)

    thread = threading.Thread(target=run, name="lifeline", daemon=True)
    thread.start()
    return thread
