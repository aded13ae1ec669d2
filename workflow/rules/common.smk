# Validate the config, check the model is reachable, and derive every target from the outline.
import sys
from pathlib import Path

from opposites import archive, codedeps
from opposites import config as cfg
from opposites import io as results_io
from opposites import models, paths, provenance
from opposites.analyses import (ANALYSES, PRIORITY, SOURCES, STAGES, across_inputs, applies, result_path, seed_inputs,
                                settings_of, stage_analyses)
from opposites.outline import load as load_outline
from opposites.prompts import check_task, make_prompts, related_tasks

cfg.validate(config)
R = f"results/{cfg.model_slug(config['model'])}"
if _bad := results_io.unwritable_folder(R, outputs=(paths.fill(paths.MODEL_DIR, R),)):
    raise OSError(f"{_bad} is not writable, so the build cannot write its results there. Make it writable "
                  f"(chmod -R u+w {R}; chattr -R -i {R} if it was made immutable), or build in a copy of the "
                  "checkout that you may write to.")
ARCHIVED = archive.is_unpacked(R)  # results unpacked from `snakemake archive`: no model needed
if ARCHIVED:
    archive.verify(R)  # a tampered or incomplete archive stops here, naming the file
    archive.settle(R)
else:
    models.check_available(config["model"])  # a hub id neither cached nor reachable, a broken model folder
if _drift := provenance.version_drift(R):  # results made with another torch/TransformerLens/transformers
    print(_drift, file=sys.stderr)
if config["device"].startswith("cuda"):  # (auto and cpu need no check, nor torch at parse)
    models.pick_device(config["device"])  # device=cuda without CUDA: one sentence now, not a traceback per job
_tokenizer = models.gpt2_tokenizer()  # GPT-2's (every model here uses it)
for _task in config["tasks"]:
    check_task(_task, _tokenizer)  # a multi-token word or unknown placeholder: one sentence at start-up
    _n = len(make_prompts(_task, _tokenizer, config["n_prompts"], config["seed"], config["min_prompts"])[0])
    if _n < config["n_prompts"]:  # fewer than asked: say so where the user looks, not in a log file
        print(f"WARNING: task {_task!r} yields {_n} of the {config['n_prompts']} prompts asked for (n_prompts); "
              f"its word lists allow no more. Its numbers rest on n = {_n}; the paper's tasks section says so.",
              file=sys.stderr)

MODEL = config["model"]
OFFLINE = cfg.model_kind(MODEL) in models.BUILT  # toy, random:* and trained are built by the pipeline
MODEL_DIR = paths.fill(paths.MODEL_DIR, R)
if OFFLINE and not ARCHIVED and Path(MODEL_DIR).exists():
    models.check_model_dir(MODEL_DIR, built=True)  # a built model damaged since (a cut weights file)
TASKS = list(config["tasks"])
# model=trained: the other training seeds whose models' circuits the replication analysis compares
# (workflow/rules/seeds.smk); other models have no seed axis
EXTRA_SEEDS = [s for s in config.get("trained_seeds", []) if s != config["seed"]] \
    if cfg.model_kind(MODEL) == "trained" and not ARCHIVED else []
OUTLINE = load_outline("paper/outline.yaml", TASKS)
PAPER_TEX = paths.fill(paths.PAPER_TEX, R)
PAPER_PDF = paths.fill(paths.PAPER_PDF, R)
ENV = "../../environment.yml"  # conda directive paths are relative to the rule file
GPUS = 0 if config["device"] == "cpu" else 1  # analysis jobs use one GPU where one is present
# Every analysis job runs on one thread, side by side with the others (--cores N runs N at once):
# two one-thread jobs get through more work on 2 cores than one two-thread job at a time (a circuits
# job on 2 threads runs only 1.48x faster than on 1; benchmarks/paper.py). Jobs that unlock others
# start first (PRIORITY, src/opposites/analyses). Under Slurm every job asks for the cores its
# measured run kept busy (the profile).
ANALYSIS_MEM_MB = 6000  # an analysis job on GPT-2 small peaks at 3.7 GB (benchmarks/paper.py, 64 prompts)


wildcard_constraints:
    task="|".join(TASKS),


def model_input(wildcards=None):
    """The built model directory for toy/random/trained models; nothing for hub ids, local dirs and
    archived results (which ship without weights)."""
    return [MODEL_DIR] if OFFLINE and not ARCHIVED else []


SCRIPTS = Path(workflow.basedir) / "scripts"


def code(script, modules=(), tasks=()):
    """A rule's code inputs: `script` (in scripts/), every module of the opposites package it or
    `modules` import (transitively, read from the source at parse), and the package data those name
    (of the task files, those of `tasks`). Relative to the workflow, so that a moved checkout stays
    up to date. Editing any of them reruns exactly the jobs that run it."""
    files = codedeps.closure([SCRIPTS / script, *modules])
    return codedeps.relative(files + codedeps.data_files(files, tasks))


def results_of(path):
    """results/<model> of an output under results/<model>/<folder>/ (a rule param, so scripts never
    split paths themselves)."""
    return str(Path(path).parents[1])


def log(rule, **fields):
    return paths.fill(paths.LOG[rule], R, **fields)


def bench(rule, **fields):
    return paths.fill(paths.BENCH[rule], R, **fields)


def item_inputs(item):
    """Result files an outline item reads."""
    return [result_path(R, t, a) for a in item.analyses for t in item.tasks if applies(a, t)]


ALL_RESULTS = [result_path(R, t, a) for t in TASKS for a in SOURCES if applies(a, t)]
