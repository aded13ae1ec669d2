"""The toy paper on a real Slurm cluster through profiles/slurm: one node on this machine, started by
.ci/slurm-up (slurmctld, slurmd, slurmdbd for `sacct`). The analysis jobs must run as Slurm jobs in
the build directory and complete; a Slurm job cancelled mid-build (`scancel`) is reported by
Snakemake, naming the rule, and a rerun finishes the paper without redoing finished jobs. Skipped,
with the reason, where no Slurm cluster is up (`bash .ci/slurm-up` starts one; CI runs it)."""

import json
import shutil
import subprocess
import sys
import time
from collections import Counter

import pytest

from conftest import copy_workflow, snakemake, workflow_env
from opposites.analyses import STAGES, stage_analyses
from opposites.cluster import LOCAL_RULES
from test_workflow import jobs

pytestmark = [pytest.mark.slurm, pytest.mark.workflow]  # -m "not workflow" leaves it out too
TASKS = ["size", "isa"]  # two analysis chains side by side
ARGS = ["--config", "model=toy", "n_prompts=8", "device=cpu", f"tasks=[{','.join(TASKS)}]"]
# first status check after 2 s, not the profile's 20 (a cluster's pace): the jobs here are short
FAST = ["--slurm-init-seconds-before-status-checks", "2"]
ANALYSIS_RULES = sorted(f"{stage}_{task}" for stage in STAGES for task in TASKS if stage_analyses(stage, task))
VICTIM = "circuits_size"  # cancelled mid-build: a side branch (lens -> patching -> heads go on without it)


def _why_no_slurm() -> str | None:
    if not shutil.which("sinfo"):
        return "Slurm is not installed here (no sinfo): `bash .ci/slurm-up` installs and starts a one-node cluster"
    probe = subprocess.run(["sinfo", "-h", "-o", "%t"], capture_output=True, text=True, timeout=30)
    states = probe.stdout.split()
    if probe.returncode != 0 or not {"idle", "mix", "alloc"} & set(states):
        detail = (probe.stderr or probe.stdout).strip() or "no node"
        return f"no Slurm node is up (sinfo: {detail}): `bash .ci/slurm-up` starts one"
    acct = subprocess.run(["sacct", "-n", "-X", "-o", "JobID", "-S", "now"], capture_output=True, text=True, timeout=30)
    if acct.returncode != 0:
        return f"Slurm accounting does not answer (sacct: {acct.stderr.strip()}): `bash .ci/slurm-up` starts slurmdbd"
    return None


@pytest.fixture(scope="module")
def cluster():
    reason = _why_no_slurm()
    if reason:
        pytest.skip(reason)
    try:
        import snakemake_executor_plugin_slurm  # noqa: F401
    except ImportError:
        pytest.fail("Slurm is up but snakemake-executor-plugin-slurm is missing: pip install -e '.[workflow]'")


def sbatch_snakemake(work, *args, **kw):
    return snakemake(work, "--profile", "profiles/slurm", *FAST, *args, *ARGS, **kw)


def sacct(work, since: str) -> list[dict[str, str]]:
    """This build's Slurm jobs (allocations, not steps), as sacct records them: the working directory
    and the start time identify the build (a test session with the same --basetemp reuses the
    directory); the comment names the rule (the executor writes rule_<name>[_wildcards_...])."""
    fields = ["JobIDRaw", "State", "Comment", "WorkDir", "ReqTRES", "Elapsed", "ExitCode"]
    out = subprocess.run(["sacct", "-X", "-n", "-P", "-a", "-S", since, "-o", ",".join(fields)],
                         capture_output=True, text=True, check=True, timeout=60).stdout
    rows = [dict(zip(fields, line.split("|"))) for line in out.splitlines() if line]
    return [{**row, "rule": _rule(row["Comment"])} for row in rows if row["WorkDir"] == str(work)]


def squeue(work) -> list[dict[str, str]]:
    """This build's queued and running Slurm jobs (sacct learns a job's comment only when it ends)."""
    out = subprocess.run(["squeue", "-h", "-o", "%i|%T|%k|%Z"], capture_output=True, text=True, check=True,
                         timeout=60).stdout
    rows = [dict(zip(("id", "state", "comment", "workdir"), line.split("|"))) for line in out.splitlines() if line]
    return [{**r, "rule": _rule(r["comment"])} for r in rows if r["workdir"] == str(work)]


def _rule(comment: str) -> str:
    return comment.removeprefix("rule_").split("_wildcards_")[0]


def outputs(work) -> dict[str, float]:
    """mtime of every result, model file and prompt file (not logs, benchmarks or figures)."""
    results = work / "results/toy"
    return {str(p.relative_to(work)): p.stat().st_mtime for p in results.rglob("*")
            if p.is_file() and p.parts[len(results.parts)] not in ("logs", "benchmarks", "figures", "tables", "paper")}


@pytest.fixture(scope="module")
def build(cluster, tmp_path_factory):
    """Build the toy paper through the Slurm profile; cancel VICTIM's Slurm job while it runs; record
    what Snakemake said and what was on disk; rerun to the end."""
    work = copy_workflow(tmp_path_factory.mktemp("slurm"))
    log = work / "first.log"
    since = time.strftime("%Y-%m-%dT%H:%M:%S")  # sacct reads local time
    with open(log, "w") as out:
        cmd = [sys.executable, "-m", "snakemake", "--profile", "profiles/slurm", *FAST, "paper", *ARGS]
        proc = subprocess.Popen(cmd, cwd=work, stdout=out, stderr=subprocess.STDOUT, env=workflow_env(work))
    victim, hung = None, False
    try:
        deadline = time.time() + 480
        while victim is None and proc.poll() is None and time.time() < deadline:
            running = [r for r in squeue(work) if r["rule"] == VICTIM and r["state"] == "RUNNING"]
            if running:
                victim = running[0]["id"]
                time.sleep(3)  # well inside the job (its own Snakemake is up), not at its first breath
                subprocess.run(["scancel", victim], check=True, timeout=60)
            else:
                time.sleep(1)
        try:
            proc.wait(timeout=max(60, deadline - time.time()))
        except subprocess.TimeoutExpired:
            hung = True
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        leftover = [r["id"] for r in squeue(work)]
        if leftover:
            subprocess.run(["scancel", *leftover], timeout=60)
    completed = {r["rule"] for r in sacct(work, since) if r["State"] == "COMPLETED"}
    first = {"returncode": proc.returncode, "output": log.read_text(), "victim": victim, "completed": completed}
    if hung:  # the rerun would only wait for the same jobs: say so in every test
        pytest.fail(f"Snakemake did not end within 8 minutes (cancelled job: {victim}):\n{first['output'][-3000:]}")
    before = outputs(work)
    planned = jobs(sbatch_snakemake(work, "-n", "paper"))
    sbatch_snakemake(work, "paper")  # the rerun: fails the fixture, with Snakemake's words, if it fails
    return {"work": work, "since": since, "first": first, "before": before, "planned": planned, "after": outputs(work)}


def test_a_cancelled_slurm_job_is_reported_naming_its_rule(build):
    first = build["first"]
    assert first["victim"], f"{VICTIM} never ran as a Slurm job:\n{first['output'][-3000:]}"
    assert first["returncode"] != 0, "Snakemake ended successfully although a Slurm job was cancelled"
    out = first["output"]
    assert f"Error in rule {VICTIM}" in out, out[-3000:]
    assert f"SLURM-job '{first['victim']}' failed" in out and "CANCELLED" in out, out[-3000:]


def test_a_rerun_resumes_without_redoing_finished_jobs(build):
    """The rerun plans the cancelled job and what needs it, nothing that finished (by sacct), and
    rewrites no finished result."""
    planned, finished = build["planned"], build["first"]["completed"]
    assert {"build_model", "prompts", "lens_size", "lens_isa"} <= finished, finished
    assert VICTIM not in finished and planned.get(VICTIM) == 1 and planned.get("paper_pdf") == 1, planned
    assert not set(planned) & finished, f"the rerun would redo finished jobs: {planned}"
    before, after = build["before"], build["after"]
    assert before and all(after[p] == t for p, t in before.items()), "a finished result was rewritten by the rerun"
    assert (build["work"] / "results/toy/paper/paper.pdf").stat().st_size > 0
    assert json.loads((build["work"] / "results/toy/size/circuit.json").read_text())


def test_analysis_jobs_ran_as_slurm_jobs_in_the_build_dir_and_completed(build):
    """sacct, not Snakemake's word: every analysis job (and the model and prompts) has a COMPLETED
    Slurm record whose working directory is the build; the cancelled one also has its CANCELLED
    record; local rules never went to Slurm; and with device=cpu no job asked for a GPU."""
    rows = sacct(build["work"], build["since"])
    completed = {r["rule"] for r in rows if r["State"] == "COMPLETED" and r["ExitCode"] == "0:0"}
    assert set(ANALYSIS_RULES) | {"build_model", "prompts"} <= completed, (sorted(completed), rows)
    cancelled = [r for r in rows if r["JobIDRaw"] == build["first"]["victim"]]
    assert cancelled and cancelled[0]["rule"] == VICTIM and cancelled[0]["State"].startswith("CANCELLED"), rows
    assert all(r["State"] == "COMPLETED" for r in rows if r not in cancelled), rows
    runs = Counter(r["rule"] for r in rows if r not in cancelled)  # each job ran once: none was redone
    assert runs == Counter({**{rule: 1 for rule in ANALYSIS_RULES}, "build_model": 1, "prompts": len(TASKS)}), runs
    assert not set(runs) & set(LOCAL_RULES), rows
    assert not any("gpu" in r["ReqTRES"] for r in rows), rows


def test_analysis_jobs_ask_slurm_for_a_gpu_unless_device_is_cpu(build, tmp_path):
    """device=auto (the default): analysis rules declare gpu=1 and the executor passes --gpus=1 to
    sbatch, which this GPU-less cluster refuses. On a copy of the build (a failed job's outputs are
    removed)."""
    work = tmp_path / "gpu"
    shutil.copytree(build["work"], work, symlinks=True)
    args = ["--profile", "profiles/slurm", *FAST, "results/toy/size/baseline.json", "--forcerun", "lens_size",
            "--config", "model=toy", "n_prompts=8", "device=auto", f"tasks=[{','.join(TASKS)}]"]
    proc = snakemake(work, *args, check=False)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0 and "Error in rule lens_size" in out, out[-3000:]
    assert "--gpus=1" in out and "Invalid generic resource (gres) specification" in out, out[-3000:]
