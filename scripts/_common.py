"""Wiring shared by the scripts: logging to snakemake.log and reading the config."""

import logging
import os
import sys


def setup_threads(snakemake) -> None:
    """Use the job's own threads (Snakemake's `threads`, 1 by default), at most the cores this
    process may run on (a Slurm job's allocation): parallel jobs then share the cores instead of
    each starting one torch thread per core."""
    import os

    import torch

    torch.set_num_threads(max(1, min(snakemake.threads, len(os.sched_getaffinity(0)))))


def setup_memory() -> None:
    """Keep freed memory in the process for the next tensors instead of handing it back to the
    system: by default glibc unmaps large freed blocks and trims the heap after frees, so every large
    temporary of a patching or circuit forward faulted its pages in afresh (up to 0.6 million page
    faults in three patching sweeps; a tenth of an exact circuit evaluation's time went to the
    system, measured). Blocks up to 32 MB (glibc's most) then come
    from the heap, which is trimmed only past 2 GB free; peak memory stays the same (measured). No
    effect where the C library is not glibc. Python's cycle collector runs less often too (below)."""
    import ctypes
    import gc

    gc.set_threshold(50_000, 10, 10)  # Python's cycle collector 70x less often (first generation at 50,000 new
    #   objects, not 700): circuit discovery makes 10^5 edge objects per ranking, and collections took
    #   4.4 s of is-a's 139 s circuit analysis, 1.9 s after (measured)
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return
    M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # mallopt's parameter numbers (malloc.h)
    libc.mallopt(M_MMAP_THRESHOLD, 32 * 2**20)
    libc.mallopt(M_TRIM_THRESHOLD, 2**31 - 1)


def setup_logging(snakemake) -> logging.Logger:
    """Log to stderr and the rule's log file; and end this job if Snakemake itself is killed
    (opposites.lifeline), so that no job runs on orphaned."""
    from opposites import lifeline

    lifeline.watch()
    handlers = [logging.StreamHandler(sys.stderr)]
    if snakemake.log:
        handlers.append(logging.FileHandler(snakemake.log[0], mode="w"))
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s: %(message)s",
                        handlers=handlers, force=True)  # libraries' INFO chatter (fontTools) stays out
    for name in ("opposites", snakemake.rule):
        logging.getLogger(name).setLevel(logging.INFO)
    return logging.getLogger(snakemake.rule)


def check_code_inputs(snakemake) -> None:
    """Warn (in the job's log) about any module of the opposites package this job ran that is not
    among its rule's `code` inputs: an import the static import graph (opposites.codedeps) could not
    see, so editing that module would not rerun this job."""
    from pathlib import Path

    declared = {Path(p).resolve() for p in snakemake.input.get("code", [])}
    ran = {Path(m.__file__).resolve() for name, m in list(sys.modules.items())
           if (name == "opposites" or name.startswith("opposites.")) and getattr(m, "__file__", None)}
    for path in sorted(ran - declared):
        logging.getLogger(snakemake.rule).warning(
            "code dependency missed: this job ran %s, which is not among the rule's code inputs; "
            "editing it would not rerun this job (see opposites/codedeps.py)", path)


def finish(snakemake) -> None:
    """End a job whose outputs are all written: check its code inputs (check_code_inputs), flush
    the logs and exit without Python's teardown of its modules, which does nothing a finished job
    needs and takes over a second once torch, transformers and TransformerLens are loaded. Called as
    a script's last line only: a job that fails raises before it, with Python's usual exit."""
    check_code_inputs(snakemake)
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
