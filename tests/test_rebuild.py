"""A rebuild is never stale and never more than needed: editing any module of the package (or a task
file) in a built copy schedules exactly the jobs whose code runs it, plus what their new outputs
feed; every job ran only code among its inputs; results record the hash of that code."""

import json
import os
import re
from pathlib import Path

import pytest

from conftest import TOY, snakemake
from opposites import outline
from opposites.analyses import STAGES

pytestmark = pytest.mark.workflow
TASKS = ["ioi", "size", "antonym", "isa"]


def dry_run(workdir, *extra) -> dict[str, tuple[str, set[str]]]:
    """{job: (reason, inputs)} of `snakemake -n paper`; a job is its rule, with its wildcards if any
    ('figure:item=dla_heads', 'prompts:task=size', 'lens_size')."""
    out = snakemake(workdir, "-n", "paper", *TOY, *extra).stdout
    planned = {}
    for block in re.split(r"^\[.*?\]\nrule ", out, flags=re.M)[1:]:
        rule = block.split(":", 1)[0]
        wildcards = re.search(r"^\s+wildcards: (.*)$", block, re.M)
        inputs = re.search(r"^\s+input: (.*)$", block, re.M)
        reason = re.search(r"^\s+reason: (.*)$", block, re.M).group(1)
        planned[f"{rule}:{wildcards.group(1)}" if wildcards else rule] = (reason, set(inputs.group(1).split(", ")) if inputs else set())
    return planned


def edited(path: Path):
    """Append a comment line to `path`; the returned function restores its bytes and times."""
    st, data = path.stat(), path.read_bytes()
    path.write_bytes(data + b"\n# edited by a test\n")

    def restore():
        path.write_bytes(data)
        os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))

    return restore


@pytest.fixture(scope="module")
def code_inputs(built):
    """{job: its inputs} of every job of the build (a forced dry run lists them all)."""
    return {job: inputs for job, (_, inputs) in dry_run(built, "--forceall").items()}


def test_every_job_ran_only_code_among_its_inputs(built):
    """The static import graph misses nothing a job actually ran: each job compares the package
    modules it loaded with its code inputs at its end and logs any miss."""
    logs = list((built / "results/toy/logs").rglob("*.log"))
    assert len(logs) > 40
    assert [str(p) for p in logs if "code dependency missed" in p.read_text()] == []


def test_editing_any_module_reruns_exactly_the_jobs_that_run_it(built, code_inputs):
    """For every module of src/opposites and every task file: edit it, dry-run, and the jobs
    scheduled for their own inputs are exactly those whose code inputs hold it; every other
    scheduled job is scheduled only because an input of it will be remade."""
    package = built / "src/opposites"
    files = sorted(package.rglob("*.py")) + sorted((package / "tasks").glob("*.yaml"))
    assert len(files) > 40
    triggered_by = {}
    for path in files:
        rel = path.relative_to(built).as_posix()
        restore = edited(path)
        try:
            planned = dry_run(built) if any(rel in inputs for inputs in code_inputs.values()) else {}
        finally:
            restore()
        runs_it = {job for job, inputs in code_inputs.items() if rel in inputs}
        assert runs_it <= set(planned), (rel, runs_it - set(planned))
        for job, (reason, _) in planned.items():  # the others only because an input of theirs is remade
            assert job in runs_it or reason.startswith("Input files updated by another job"), (rel, job, reason)
        triggered_by[rel] = runs_it
    assert "Nothing to be done" in snakemake(built, "-n", "paper", *TOY).stdout  # every file restored

    # what the issue names: a figure module reruns its section's figures and the PDF; the prose
    # reruns the PDF and no analysis; the patching engine reruns analysis stages only
    o = outline.load(built / "paper/outline.yaml", TASKS)
    dla = {f"figure:item={i.id}" for i in o.items("figure") if i.section == "dla"}
    assert triggered_by["src/opposites/figures/dla.py"] == dla | {"paper_pdf"}
    assert triggered_by["src/opposites/summary.py"] == {"paper_pdf"}
    engine = triggered_by["src/opposites/patching/engine.py"]
    stage_jobs = {f"{stage}_{task}" for stage in STAGES for task in TASKS}
    assert engine and engine <= stage_jobs, engine - stage_jobs  # no figure, table, prompts or lens job
    assert not any(job.startswith("lens_") for job in engine), engine
    assert {"prompts:task=size", "lens_size", "lens_isa"} <= triggered_by["src/opposites/tasks/size.yaml"]  # isa's neurons read size
    assert "prompts:task=ioi" not in triggered_by["src/opposites/tasks/size.yaml"]
    for module in ("stats.py", "prompts.py", "core.py", "patching/edges.py", "overlap.py"):
        assert triggered_by[f"src/opposites/{module}"], module  # each was missed before


def test_results_record_the_hash_of_their_code(built):
    """Every result's provenance carries the code hash of its job; the analyses of one stage job
    share it; the paper's reproducibility appendix prints it."""
    import subprocess

    from opposites.analyses import ANALYSES, STAGES

    metas = {p.name: json.loads(p.read_text()) for p in (built / "results/toy/size").glob("*.meta.json")}
    assert all(re.fullmatch(r"[0-9a-f]{64}", m["code_sha256"]) for m in metas.values()), metas.keys()
    for stage, names in STAGES.items():
        assert len({metas[f"{n}.meta.json"]["code_sha256"] for n in names if f"{n}.meta.json" in metas}) == 1, stage
    assert metas["baseline.meta.json"]["code_sha256"] != metas["edges.meta.json"]["code_sha256"]  # lens vs circuits
    text = subprocess.run(["pdftotext", str(built / "results/toy/paper/paper.pdf"), "-"], capture_output=True,
                          text=True, check=True).stdout
    assert ANALYSES["baseline"].stage == "lens" and metas["baseline.meta.json"]["code_sha256"][:12] in text


def test_results_are_readable_by_the_group(built):
    """No file the build writes is private to its owner (mkstemp and safetensors make 0600 files)."""
    private = [str(p) for p in (built / "results/toy").rglob("*") if p.is_file() and not p.stat().st_mode & 0o044]
    assert private == []


def test_a_changed_package_version_is_named_at_start_up(built, tmp_path):
    """Results made with another torch are named with both versions and the fix; nothing reruns."""
    import shutil

    work = tmp_path / "copy"
    shutil.copytree(built, work, symlinks=True)
    meta = work / "results/toy/size/baseline.meta.json"
    record = json.loads(meta.read_text())
    record["versions"]["torch"] = "1.0.0"
    st = meta.stat()
    meta.write_text(json.dumps(record))
    os.utime(meta, ns=(st.st_atime_ns, st.st_mtime_ns))
    proc = snakemake(work, "-n", "paper", *TOY)
    assert "results in results/toy were made with torch 1.0.0 (tasks size), this is" in proc.stderr
    assert "--forceall" in proc.stderr and "Nothing to be done" in proc.stdout
