"""Slurm resources from benchmark files (src/opposites/cluster.py, scripts/slurm_resources.py) and the
committed profiles: rule names, headroom, the rendered profile, the local rules. No Slurm needed
(tests/test_slurm.py runs the profile on a real cluster)."""

import re
import subprocess
import sys

import pytest
import yaml

from conftest import REPO, copy_workflow, snakemake
from opposites import cluster, paths
from opposites.analyses import STAGES, stage_analyses

HEADER = "s\th:m:s\tmax_rss\tmax_vms\tmax_uss\tmax_pss\tio_in\tio_out\tmean_load\tcpu_time\n"


def bench(results, rule, s, rss, cpu, **fields):
    path = results.parent / paths.fill(paths.BENCH[rule], results.name, **fields)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(HEADER + f"{s}\t0:00:00\t{rss}\t0\t0\t0\t0\t0\t0\t{cpu}\n")


@pytest.fixture
def results(tmp_path):
    r = tmp_path / "toy"
    bench(r, "build_model", 6.0, 450.0, 5.5)
    bench(r, "prompts", 7.0, 300.0, 3.0, task="size")
    bench(r, "prompts", 9.0, 320.0, 4.0, task="isa")
    bench(r, "analyze", 600.0, 5000.0, 1140.0, task="ioi", stage="circuits")
    bench(r, "analyze", 15.0, 700.0, 7.0, task="size", stage="lens")
    bench(r, "figure", 4.0, 200.0, 3.0, item="head_dla")
    bench(r, "table", 3.0, 200.0, 2.0, item="datasets")
    bench(r, "paper_pdf", 4.0, 210.0, 3.0)
    return r


def test_benchmarks_map_to_rule_names_and_local_rules_are_left_out(results):
    m = cluster.measure(results)
    assert list(m) == ["build_model", "circuits_ioi", "lens_size", "prompts"]
    assert m["prompts"].jobs == 2 and m["prompts"].s == 9.0 and m["prompts"].max_rss_mb == 320.0


def test_resources_are_the_measurement_with_headroom(results):
    m = cluster.measure(results)
    big = m["circuits_ioi"].resources()  # 600 s, 5000 MB, 1.9 cores busy
    assert big == {"mem_mb": 8700, "runtime": 21, "cpus_per_task": 2}  # 5000*1.5+1200; (1200+35)/60 up
    assert m["lens_size"].resources() == {"mem_mb": 2300, "runtime": cluster.MIN_RUNTIME_MIN, "cpus_per_task": 1}
    # a job on two threads that kept 1.5 cores busy asks for both; 1.1 (one thread and its helpers) for one
    for cores, cpus in ((1.5, 2), (1.1, 1), (0.5, 1), (2.3, 3)):
        assert cluster.Measured("r", 1, 100.0, 1000.0, cores).resources()["cpus_per_task"] == cpus


def test_no_benchmarks_says_build_first(tmp_path):
    with pytest.raises(FileNotFoundError, match="build first"):
        cluster.measure(tmp_path)


def test_a_benchmark_without_its_columns_is_named(tmp_path):
    path = tmp_path / "toy/benchmarks/build_model.tsv"
    path.parent.mkdir(parents=True)
    path.write_text("s\tmax_rss\n1.0\t\n")
    with pytest.raises(ValueError, match=r"build_model.tsv: column 'max_rss'"):
        cluster.measure(tmp_path / "toy")


def test_script_writes_a_profile_and_keeps_site_settings(results, tmp_path):
    out = tmp_path / "profiles/slurm/config.yaml"
    run = [sys.executable, str(REPO / "scripts/slurm_resources.py"), str(results), "--out", str(out), "--note", "test"]
    subprocess.run(run, check=True, capture_output=True, text=True)
    profile = yaml.safe_load(out.read_text())
    assert profile["executor"] == "slurm" and profile["slurm-status-command"] == "squeue"
    assert profile["set-resources"]["circuits_ioi"] == {"mem_mb": 8700, "runtime": 21, "cpus_per_task": 2}
    assert not any("gpu" in r for r in profile["set-resources"].values())  # GPUs come from the rules (device)
    profile["default-resources"]["slurm_account"] = "lab"  # a site's own setting, added by hand
    out.write_text(yaml.safe_dump(profile))
    subprocess.run(run, check=True, capture_output=True, text=True)
    text = out.read_text()
    assert yaml.safe_load(text)["default-resources"]["slurm_account"] == "lab"
    assert "Measured on: " in text and "scripts/slurm_resources.py" in text


def test_the_committed_slurm_profile_covers_every_rule_that_goes_to_slurm():
    profile = yaml.safe_load((REPO / "profiles/slurm/config.yaml").read_text())
    tasks = yaml.safe_load((REPO / "config.yaml").read_text())["tasks"]
    analysis = {f"{s}_{t}" for s in STAGES for t in tasks if stage_analyses(s, t)}
    assert set(profile["set-resources"]) == analysis | {"build_model", "prompts"}
    assert profile["executor"] == "slurm"
    text = (REPO / "profiles/slurm/config.yaml").read_text()
    assert re.search(r"^# Measured on: results/\S+ \(model=", text, re.M), "the header must say what was measured"


def test_snakefile_localrules_are_the_ones_the_profile_leaves_out():
    text = (REPO / "Snakefile").read_text()
    block = re.search(r"^localrules:\n((?:    \w+,?\n)+)", text, re.M)
    assert block and tuple(re.findall(r"\w+", block.group(1))) == cluster.LOCAL_RULES


@pytest.mark.workflow
def test_the_profiles_resources_reach_the_jobs(tmp_path):
    """A dry run through each profile: the Slurm profile's measured mem_mb and runtime reach an
    analysis job, its gpu follows `device`; the local profile is today's --cores 4 and plans the paper."""
    pytest.importorskip("snakemake_executor_plugin_slurm", reason="the Slurm executor plugin is not installed")
    work = copy_workflow(tmp_path)
    want = yaml.safe_load((work / "profiles/slurm/config.yaml").read_text())["set-resources"]["lens_size"]
    for device, gpu in (("cpu", 0), ("auto", 1)):
        out = snakemake(work, "-n", "--profile", "profiles/slurm", "results/toy/size/baseline.json",
                        "--config", "model=toy", f"device={device}").stdout
        job = out[out.index("rule lens_size:"):]
        res = job[job.index("resources:"):].splitlines()[0]
        assert f"mem_mb={want['mem_mb']}," in res and f"runtime={want['runtime']}" in res and f"gpu={gpu}" in res, res
    assert yaml.safe_load((work / "profiles/local/config.yaml").read_text()) == {"cores": 4}
    out = snakemake(work, "-n", "--profile", "profiles/local", "paper", "--config", "model=toy").stdout
    assert "paper_pdf" in out
