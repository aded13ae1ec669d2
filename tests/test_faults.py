"""Faults and bad input: each is injected into a private copy of a built toy paper; each must stop
with one sentence naming the file and the fix, and the rerun after the fix must recover, with the
same bytes as before."""

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from conftest import TOY, snakemake
from opposites.prompts import TaskError, read_jsonl

pytestmark = pytest.mark.workflow


@pytest.fixture
def copy(built, tmp_path):
    """A private copy of the built toy paper (workflow, code, results and Snakemake's records)."""
    return Path(shutil.copytree(built, tmp_path / "copy", symlinks=True))


def output(proc) -> str:
    return proc.stdout + proc.stderr


def pdf_text(pdf: Path) -> str:
    return subprocess.run(["pdftotext", str(pdf), "-"], capture_output=True, text=True, check=True).stdout


def test_a_failed_or_interrupted_latex_run_leaves_nothing_that_breaks_the_rerun(copy, tmp_path):
    """latexmk dies mid-run (as on Ctrl-C or a full disk), after writing half an .aux and its state
    file where it runs; the rerun with a working latexmk builds the same paper."""
    paper = copy / "results/toy/paper"
    before_tex, before_text = (paper / "paper.tex").read_bytes(), pdf_text(paper / "paper.pdf")
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "latexmk").write_text("#!/bin/sh\necho '\\relax \\newlabel{x' > paper.aux\n"
                                  "echo '# Fdb version 4' > paper.fdb_latexmk\nkill -INT $$\n")  # exits 0 where SIGINT is ignored
    (fake / "latexmk").chmod(0o755)
    for name in ("paper.aux", "paper.fdb_latexmk"):  # stale state beside the paper too, as a killed old build left it
        (paper / name).write_text("\\relax \\newlabel{broken\n")
    proc = snakemake(copy, "--cores", "1", "paper", "--forcerun", "paper_pdf", *TOY, check=False,
                     env={"PATH": f"{fake}:{os.environ['PATH']}"})
    assert proc.returncode != 0 and "latexmk failed on results/toy/paper/paper.tex" in output(proc), output(proc)[-6000:]
    assert not list((copy / "results/toy").glob(".paper-build-*"))  # the scratch folder is gone
    snakemake(copy, "--cores", "1", "paper", *TOY)
    assert (paper / "paper.tex").read_bytes() == before_tex and pdf_text(paper / "paper.pdf") == before_text


@pytest.mark.parametrize("damage, message", [
    ("tokenizer", "has no tokenizer files"),
    ("truncated", "has a truncated or damaged weights file, model.safetensors"),
    ("llama", "holds a 'llama' model (LlamaForCausalLM)"),
    ("vocabulary", "has a tokenizer whose vocabulary is not GPT-2's"),
])
def test_a_broken_or_foreign_local_model_folder_is_named_at_start_up(copy, tmp_path, damage, message):
    folder = tmp_path / "model"
    shutil.copytree(copy / "results/toy/model", folder)
    if damage == "tokenizer":
        (folder / "tokenizer.json").unlink()
    elif damage == "truncated":
        weights = folder / "model.safetensors"
        weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    elif damage == "llama":
        config = json.loads((folder / "config.json").read_text())
        (folder / "config.json").write_text(json.dumps(config | {"model_type": "llama", "architectures": ["LlamaForCausalLM"]}))
    else:
        tok = json.loads((folder / "tokenizer.json").read_text())
        tok["model"]["vocab"]["hello"] = len(tok["model"]["vocab"])
        (folder / "tokenizer.json").write_text(json.dumps(tok))
    proc = snakemake(copy, "-n", "paper", "--config", f"model={folder}", check=False)
    assert proc.returncode != 0 and f"The model folder {folder} {message}" in output(proc)
    assert "point model= at such a folder" in output(proc)


def test_a_damaged_built_model_is_named_and_rebuilt_the_same(copy):
    weights = copy / "results/toy/model/model.safetensors"
    good = weights.read_bytes()
    weights.write_bytes(good[:1000])
    proc = snakemake(copy, "-n", "paper", *TOY, check=False)
    assert proc.returncode != 0 and "Delete results/toy/model and rerun the same command" in output(proc)
    shutil.rmtree(copy / "results/toy/model")
    snakemake(copy, "--cores", "1", "results/toy/model", *TOY)
    assert weights.read_bytes() == good


@pytest.mark.parametrize("edit, message", [
    (("unrelated: [blue, green, wooden, French, metal, square, musical, purple, electric, Italian, golden, plastic]",
      "unrelated: []"), "src/opposites/tasks/size.yaml: key 'unrelated' has 0 entries, fewer than the 2 needed"),
    (("synonyms:\n", "synonyms: []\nx:\n"), "src/opposites/tasks/size.yaml: key 'synonyms' has 0 entries"),
    (("roles: [NAME1, ADJ1, NAME2]", "roles: [NAME1, ADJ1, NAME2"), "src/opposites/tasks/size.yaml, line"),
])
def test_a_bad_task_file_stops_at_start_up_naming_file_and_key(copy, edit, message):
    spec = copy / "src/opposites/tasks/size.yaml"
    st, good = spec.stat(), spec.read_text()
    assert edit[0] in good
    spec.write_text(good.replace(edit[0], edit[1]))
    proc = snakemake(copy, "-n", "paper", *TOY, check=False)
    assert proc.returncode != 0 and message in output(proc), output(proc)[-2000:]
    spec.write_text(good)
    os.utime(spec, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert "Nothing to be done" in snakemake(copy, "-n", "paper", *TOY).stdout


def test_cut_prompts_are_refused_naming_the_file_and_rebuilt_the_same(copy, tmp_path):
    prompts = copy / "results/toy/size/prompts.jsonl"
    good = prompts.read_bytes()
    prompts.write_bytes(b"".join(good.splitlines(keepends=True)[:20]))  # whole lines: valid JSONL, fewer rows
    proc = snakemake(copy, "--cores", "1", "paper", "--forcerun", "lens_size", *TOY, check=False)
    assert proc.returncode != 0
    assert "results/toy/size/prompts.jsonl does not match the checksum in prompts.meta.json" in output(proc)
    prompts.unlink()  # the fix the message names
    snakemake(copy, "--cores", "1", "results/toy/size/prompts.jsonl", *TOY)
    assert prompts.read_bytes() == good

    cut = tmp_path / "cut.jsonl"
    cut.write_bytes(good[: good.index(b"\n", 3000) + 40])  # mid-line
    with pytest.raises(TaskError, match=rf"{cut}, line \d+, is not valid JSON"):
        read_jsonl(cut)


def test_a_moved_checkout_is_up_to_date(built, tmp_path):
    moved = Path(shutil.copytree(built, tmp_path / "elsewhere" / "deeper", symlinks=True))
    assert "Nothing to be done" in snakemake(moved, "-n", "paper", *TOY).stdout


def test_a_results_folder_that_cannot_be_written_is_named(copy):
    figures = copy / "results/toy/figures"
    lock = ["chattr", "+i", str(figures)] if os.geteuid() == 0 else ["chmod", "a-w", str(figures)]
    unlock = ["chattr", "-i", str(figures)] if os.geteuid() == 0 else ["chmod", "u+w", str(figures)]
    subprocess.run(lock, check=True)  # root writes through chmod; an immutable folder stops it too
    try:
        proc = snakemake(copy, "--cores", "1", "results/toy/figures/head_dla.pdf", "--forcerun", "figure", *TOY, check=False)
    finally:
        subprocess.run(unlock, check=True)
    assert proc.returncode != 0
    assert "results/toy/figures (Operation not permitted) is not writable" in output(proc) or \
        "results/toy/figures (Permission denied) is not writable" in output(proc)
    assert "Traceback" not in output(proc)
    snakemake(copy, "--cores", "1", "results/toy/figures/head_dla.pdf", *TOY)
