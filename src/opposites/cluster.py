"""Slurm resources from measured benchmarks, not guesses. Every job of a build writes a Snakemake
benchmark file (paths.BENCH: wall seconds `s`, peak resident memory `max_rss` in MB, `cpu_time`);
this reads a finished build's files and turns them into the Slurm profile's per-rule `set-resources`
(mem_mb, runtime in minutes, cpus_per_task), with headroom, and renders profiles/slurm/config.yaml.
`scripts/slurm_resources.py` is the command line."""

from __future__ import annotations

import csv
import json
import math
import re
import textwrap
from dataclasses import dataclass
from pathlib import Path

from opposites import paths

# Rules that run on the submitting machine, never as Slurm jobs (the Snakefile's `localrules`): they
# only read results and write figures, tables and the PDF, and need LaTeX, which compute nodes may lack.
LOCAL_RULES = ("paper", "figures", "figure", "table", "paper_pdf", "archive")

# Headroom over the measured peaks: a cluster node may be slower or busier than the measuring
# machine, and a rerun with other prompts or library versions may need more.
MEM_HEADROOM = 1.5
RUNTIME_HEADROOM = 2.0
# What a Slurm job adds to its rule: the executor runs the rule inside two Snakemake processes (the
# batch step's, and the job step's that srun starts), each of which parses the workflow (torch
# imported: about 600 MB resident) before the rule starts. Measured on the toy build through
# profiles/slurm on .ci/slurm-up's cluster (2 CPU cores, loaded), sacct's MaxRSS of the batch and job
# steps together and Elapsed, minus the rule's own benchmark: 745-1162 MB and 17-33 s over 11 jobs.
JOB_OVERHEAD_MB = 1200
JOB_OVERHEAD_S = 35
# Slurm counts time limits in minutes, and a limit a minute away from the measured time kills jobs
# on any slower node, so no rule asks for less than this.
MIN_RUNTIME_MIN = 5
CORE_SLACK = 0.2  # cores kept busy are rounded up past this: a job on 2 threads that kept 1.5 busy
#                   needs both, a one-thread job whose helper threads added 0.1 does not


@dataclass(frozen=True)
class Measured:
    """The largest of a rule's benchmark files (a rule with wildcards has one file per job)."""

    rule: str
    jobs: int
    s: float
    max_rss_mb: float
    cores: float  # cpu_time / s: the mean number of cores the job kept busy

    def resources(self) -> dict[str, int]:
        """Slurm resources for this rule: measured peak times headroom, plus the job's own overhead."""
        mem = math.ceil((self.max_rss_mb * MEM_HEADROOM + JOB_OVERHEAD_MB) / 100) * 100
        runtime = max(MIN_RUNTIME_MIN, math.ceil((self.s * RUNTIME_HEADROOM + JOB_OVERHEAD_S) / 60))
        return {"mem_mb": mem, "runtime": runtime, "cpus_per_task": max(1, math.ceil(self.cores - CORE_SLACK))}


def _pattern(rule: str) -> re.Pattern:
    """paths.BENCH[rule] as a regex over paths relative to results/<model>, fields as named groups."""
    rel = paths.BENCH[rule].replace("{R}/", "")
    parts = re.split(r"\{(\w+)\}", rel)
    regex = "".join(re.escape(p) if i % 2 == 0 else f"(?P<{p}>[^/]+)" for i, p in enumerate(parts))
    return re.compile(regex + r"\Z")


def rule_name(bench_key: str, fields: dict[str, str]) -> str:
    """The Snakemake rule a benchmark file belongs to: analysis jobs are one rule per stage and task
    (`<stage>_<task>`, workflow/rules/analyses.smk); every other key is its rule's name."""
    return f"{fields['stage']}_{fields['task']}" if bench_key == "analyze" else bench_key


def _read(tsv: Path) -> dict[str, float]:
    with open(tsv, newline="") as f:
        rows = list(csv.DictReader(f, delimiter="\t"))
    if not rows:
        raise ValueError(f"{tsv} holds no benchmark row")
    row = rows[-1]  # `repeat` benchmarks have several rows; the last run is the one a job makes
    out = {}
    for key in ("s", "max_rss", "cpu_time"):
        try:
            out[key] = float(row[key])
        except (KeyError, TypeError, ValueError):
            raise ValueError(f"{tsv}: column {key!r} is missing or not a number ({row.get(key)!r})") from None
    return out


@dataclass(frozen=True)
class Job:
    """One job's benchmark file: its rule, wildcards and measurements (s, max_rss in MB, cpu_time)."""

    rule: str
    fields: dict
    s: float
    max_rss_mb: float
    cpu_time: float


def jobs(results: str | Path) -> list[Job]:
    """Every job's benchmark under results/<model>/benchmarks/, local rules included, in path order."""
    results = Path(results)
    patterns = {key: _pattern(key) for key in paths.BENCH}
    out = []
    for tsv in sorted((results / "benchmarks").rglob("*.tsv")):
        rel = tsv.relative_to(results).as_posix()
        for key, pattern in patterns.items():
            m = pattern.match(rel)
            if m:
                row = _read(tsv)
                out.append(Job(rule_name(key, m.groupdict()), m.groupdict(), row["s"], row["max_rss"], row["cpu_time"]))
                break
    if not out:
        raise FileNotFoundError(f"no benchmark files under {results / 'benchmarks'}: build first "
                                f"(snakemake --cores 2 paper ...), then measure")
    return out


def measure(results: str | Path) -> dict[str, Measured]:
    """Every rule's measurements under results/<model>/benchmarks/, by rule name (sorted); the local
    rules are left out: they never go to Slurm."""
    runs: dict[str, list[Job]] = {}
    for job in jobs(results):
        runs.setdefault(job.rule, []).append(job)
    out = {}
    for rule in sorted(runs):
        if rule in LOCAL_RULES:
            continue
        rows = runs[rule]
        out[rule] = Measured(rule, len(rows), max(r.s for r in rows), max(r.max_rss_mb for r in rows),
                             max(r.cpu_time / r.s if r.s > 0 else 0.0 for r in rows))
    return out


def build_settings(results: str | Path) -> dict:
    """The config a build ran with, from the provenance of one of its results (for the profile's header)."""
    for meta in sorted(Path(results).glob("*/*.meta.json")):
        return json.loads(meta.read_text()).get("config", {})
    return {}


def _yaml_map(d: dict[str, int]) -> str:
    return "{" + ", ".join(f"{k}: {v}" for k, v in d.items()) + "}"


MEASURED_KEYS = ("mem_mb", "runtime", "cpus_per_task")


def _comment(*paragraphs: str, width: int = 100) -> str:
    return "\n#\n".join(textwrap.fill(p, width, initial_indent="# ", subsequent_indent="# ") for p in paragraphs)


def render_profile(measured: dict[str, Measured], measured_on: str, command: str, site: dict | None = None) -> str:
    """profiles/slurm/config.yaml: the executor, the local rules' cores, and per-rule resources.
    `site`: default-resources a cluster needs besides the measured ones (slurm_account, ...)."""
    if not measured:
        raise ValueError("no rule to give resources to")
    site = {k: v for k, v in (site or {}).items() if k not in MEASURED_KEYS}
    widest = max(len(r) for r in measured)
    rows = []
    for rule, m in measured.items():
        rows.append(f"  {rule + ':':<{widest + 1}} {_yaml_map(m.resources())}"
                    f"  # {m.jobs} job(s): {m.s:.1f} s, {m.max_rss_mb:.0f} MB, {m.cores:.2f} cores")
    res = [m.resources() for m in measured.values()]
    default = {"mem_mb": max(r["mem_mb"] for r in res), "runtime": max(r["runtime"] for r in res),
               "cpus_per_task": 1, **site}
    header = _comment(
        "Snakemake profile for a Slurm cluster: `snakemake --profile profiles/slurm paper` (needs "
        "snakemake-executor-plugin-slurm: pip install -e \".[workflow]\"). Run it on the cluster's login "
        "node from the repository on a shared filesystem: every job's working directory is this one, and "
        "the compute nodes need the same Python environment.",
        "GENERATED by scripts/slurm_resources.py from measured benchmark files, not guessed. Regenerate "
        "the resources from a finished build of the model you will run (it keeps site settings such as "
        "slurm_account and slurm_partition that you add under default-resources):",
    ) + f"\n#   {command}\n" + _comment(
        f"Measured on: {measured_on}.",
        f"Per rule (its largest job): mem_mb = peak RSS x {MEM_HEADROOM} + {JOB_OVERHEAD_MB} MB (the job's "
        f"own two Snakemake processes); runtime = wall time x {RUNTIME_HEADROOM} + {JOB_OVERHEAD_S} s, in "
        f"minutes, at least {MIN_RUNTIME_MIN}; cpus_per_task = the cores the job kept busy (cpu_time / s) "
        f"less {CORE_SLACK}, rounded up, at least 1. Numbers measured on one model do not carry over to "
        "another: measure a build of the model you will run (a toy build under-asks for GPT-2).",
        "GPUs: analysis rules declare `resources: gpu=1` unless `--config device=cpu` "
        "(workflow/rules/common.smk), and the executor turns that into `sbatch --gpus=1`; with device=cpu "
        "they ask for none. The paper, figure and table rules run on the submitting machine "
        "(`localrules` in the Snakefile).",
    )
    return f"""{header}

executor: slurm
jobs: 50                 # Slurm jobs in flight at once
local-cores: 2           # cores for the local rules on the submitting machine
latency-wait: 60         # seconds to wait for a job's outputs to appear on a shared filesystem
slurm-init-seconds-before-status-checks: 20
# Job states from squeue, not sacct: plugin 2.8.0 takes sacct's "CANCELLED by <uid>" (a job
# scancel'ed by a user or an admin) for a running job and waits forever; squeue says CANCELLED.
# squeue keeps a finished job for Slurm's MinJobAge (300 s by default); below 3x the interval
# above, the plugin falls back to sacct by itself.
slurm-status-command: squeue

default-resources:       # for rules no build measured (a new task's analyses keep their own mem_mb)
""" + "".join(f"  {k}: {v}\n" for k, v in default.items()) + "\nset-resources:\n" + "\n".join(rows) + "\n"
