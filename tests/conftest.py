import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from opposites import models
from opposites.prompts import make_prompts

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def tokenizer():
    return models.gpt2_tokenizer()


@pytest.fixture(scope="session")
def toy_dir(tmp_path_factory):
    return models.build_offline_model("toy", tmp_path_factory.mktemp("toy") / "model", seed=0)


@pytest.fixture(scope="session")
def toy(toy_dir):
    return models.load("toy", toy_dir, "cpu")


@pytest.fixture(scope="session")
def hf_toy(toy_dir):
    from transformers import GPT2LMHeadModel

    return GPT2LMHeadModel.from_pretrained(toy_dir).eval()


@pytest.fixture(scope="session")
def trained_dir(tmp_path_factory, tokenizer):
    """The model=trained model, trained once per test session exactly as the pipeline trains it:
    config.yaml's `train:` block and seed, evaluated on the pipeline's prompts (n_prompts, seed)."""
    import yaml

    from opposites import training
    from opposites.config import validate

    if os.environ.get("OPPOSITES_TRAINED_DIR"):  # a model already trained with this config (saves minutes)
        return Path(os.environ["OPPOSITES_TRAINED_DIR"])
    config = validate(yaml.safe_load((REPO / "config.yaml").read_text()))
    rows = {t: make_prompts(t, tokenizer, config["n_prompts"], config["seed"], config["min_prompts"])[0]
            for t in config["tasks"]}
    out = tmp_path_factory.mktemp("trained") / "model"
    training.train(config["tasks"], out, config["seed"], rows, **config.get("train", {}))
    return out


@pytest.fixture(scope="session")
def rows(tokenizer):
    """A few prompts of every task, several template lengths mixed."""
    return {t: make_prompts(t, tokenizer, 12, seed=0, min_prompts=4)[0] for t in ("ioi", "size", "antonym", "isa")}


WORKFLOW_FILES = ("Snakefile", "config.yaml", "environment.yml", "workflow", "scripts", "paper", "profiles", "src")


def copy_workflow(dest: Path) -> Path:
    """A copy of the workflow files and of the package's source, so that workflow tests never touch
    the repo's results/ and may edit the code (snakemake() runs the copy's package)."""
    for name in WORKFLOW_FILES:
        src = REPO / name
        if src.is_dir():
            shutil.copytree(src, dest / name, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
        else:
            shutil.copy2(src, dest / name)
    return dest


@pytest.fixture
def workdir(tmp_path):
    return copy_workflow(tmp_path)


def workflow_env(workdir, **extra) -> dict[str, str]:
    """The environment a workflow test runs Snakemake in: the copy's own package first on the path
    (its code inputs are that package's files; a run on the installed package would depend on other
    files, and a later run on the copy's would rightly redo every job)."""
    return {**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONPATH": str(Path(workdir) / "src"), **extra}


def snakemake(workdir, *args, check=True, timeout=900, env=None):
    """Run snakemake in `workdir` on that copy's own package (PYTHONPATH=<workdir>/src)."""
    env = workflow_env(workdir, **(env or {}))
    proc = subprocess.run([sys.executable, "-m", "snakemake", *args], cwd=workdir, capture_output=True, text=True, timeout=timeout, env=env)
    if check and proc.returncode != 0:
        raise AssertionError(f"snakemake {' '.join(args)} failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}")
    return proc


@pytest.fixture(scope="session")
def toy64(toy_dir):
    """The toy model in float64: patching metrics divide by (clean - corrupted), which is small on
    random models, so exactness is checked where rounding cannot hide a convention error."""
    return models.load("toy", toy_dir, "cpu", dtype=torch.float64)


TOY = ["--config", "model=toy", "n_prompts=24"]


@pytest.fixture(scope="session")
def built(tmp_path_factory):
    """The toy paper, built once per session in a private copy of the workflow and code."""
    work = copy_workflow(tmp_path_factory.mktemp("build"))
    snakemake(work, "--cores", "2", "paper", *TOY)
    return work
