"""Wiring shared by the scripts: logging to snakemake.log and reading the config."""

import logging
import sys


def setup_threads(snakemake) -> None:
    """Use the job's own threads (Snakemake's `threads`, 1 by default), at most the cores this
    process may run on (a Slurm job's allocation): parallel jobs then share the cores instead of
    each starting one torch thread per core."""
    import os

    import torch

    torch.set_num_threads(max(1, min(snakemake.threads, len(os.sched_getaffinity(0)))))


def setup_logging(snakemake) -> logging.Logger:
    """Log to stderr and the rule's log file; and end this job if Snakemake itself is killed
    (opposites.lifeline), so that no job runs on orphaned."""
    from opposites import lifeline

    lifeline.watch()
    handlers = [logging.StreamHandler(sys.stderr)]
    if snakemake.log:
        handlers.append(logging.FileHandler(snakemake.log[0], mode="w"))
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s",
                        handlers=handlers, force=True)
    return logging.getLogger(snakemake.rule)
