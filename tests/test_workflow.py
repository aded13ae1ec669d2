"""End to end: the toy paper builds, its text carries the results' numbers, rebuilds are minimal."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from conftest import TOY, copy_workflow, snakemake, workflow_env
from opposites import outline
from opposites.paper import report_categories
from opposites.analyses import STAGES
from opposites.texutil import fmt

pytestmark = pytest.mark.workflow


def jobs(proc) -> dict[str, int]:
    """Job counts from a dry run's 'Job stats' table."""
    table = proc.stdout.split("Job stats:")[1].split("Reasons")[0] if "Job stats:" in proc.stdout else ""
    return {m.group(1): int(m.group(2)) for m in re.finditer(r"^(\w+)\s+(\d+)$", table, re.M) if m.group(1) != "total"}


def test_lint_is_clean(workdir):
    out = snakemake(workdir, "--lint", *TOY)
    assert "Congratulations" in out.stdout + out.stderr


def test_dry_run_plans_every_stage(workdir):
    planned = jobs(snakemake(workdir, "-n", "paper", *TOY))
    o = outline.load(workdir / "paper/outline.yaml", ["ioi", "size", "antonym", "isa"])
    assert planned["prompts"] == 4 and planned["build_model"] == 1 and planned["paper_pdf"] == 1
    assert all(planned[f"{stage}_{task}"] == 1 for stage in STAGES for task in ("ioi", "size", "antonym", "isa"))
    assert planned["figure"] == len(o.items("figure")) and planned["table"] == len(o.items("table"))


def test_pdf_text_has_the_baseline_numbers(built):
    pdf = built / "results/toy/paper/paper.pdf"
    text = subprocess.run(["pdftotext", str(pdf), "-"], capture_output=True, text=True, check=True).stdout
    text = " ".join(text.replace("\u2212", "-").split())  # one line, real minus signs as '-' 
    for task in ("ioi", "size", "antonym", "isa"):
        base = json.loads((built / f"results/toy/{task}/baseline.json").read_text())
        for key in ("logit_diff_mean", "corrupted_logit_diff_mean"):
            assert fmt(base[key]).replace("$-$", "-") in text, (task, key)
    assert "Reproducibility" in text and "snakemake --cores 1 <target> --config model=toy" in text
    assert "(head_dla)" in text and "figures/<id>.pdf" in text  # a report item by id, and where its file is


def test_the_pdf_has_a_title_and_no_latex_source_in_its_text(built):
    """The PDF's Title metadata is the paper's title, naming the model studied (not GPT-2 on a toy
    build), and no LaTeX source leaks into the text (a table once printed `$-$0.69` literally)."""
    pdf = built / "results/toy/paper/paper.pdf"
    info = subprocess.run(["pdfinfo", str(pdf)], capture_output=True, text=True, check=True).stdout
    assert re.search(r"^Title:\s+How a GPT-2-architecture model with random weights completes opposites", info, re.M), info
    text = subprocess.run(["pdftotext", str(pdf), "-"], capture_output=True, text=True, check=True).stdout
    assert not re.findall(r".{0,20}[$\\].{0,20}", text)


def words_outside_the_text_block(pdf) -> list[str]:
    """Words of the PDF (text and the figures' own text) that reach into the left or right margin:
    paper.tex sets US letter with 2 cm margins (1 pt of slack for glyph overhang)."""
    from opposites.outline import TEXT_WIDTH_IN

    xml = subprocess.run(["pdftotext", "-bbox", str(pdf), "-"], capture_output=True, text=True, check=True).stdout
    left = (8.5 - TEXT_WIDTH_IN) / 2 * 72
    right = left + TEXT_WIDTH_IN * 72
    out, page = [], 0
    for line in xml.splitlines():
        if "<page " in line:
            page += 1
        m = re.search(r'xMin="([\d.]+)" yMin="[\d.]+" xMax="([\d.]+)" yMax="[\d.]+">(.*)</word>', line)
        if m and (float(m[1]) < left - 1 or float(m[2]) > right + 1):
            out.append(f"p.{page}: {m[3]} ({float(m[1]):.0f}-{float(m[2]):.0f} pt)")
    return out


def typesetting_defects(pdf, splits: bool = True) -> list[str]:
    """A box wider than its line or cell in the LaTeX log (paper.log beside the PDF: a table cell's
    text running into the next column), a zero printed with a minus sign ("-0.00") and, with
    `splits`, an interval's bracket split across lines ("[0.86," ending one line, "1.00]" opening the
    next). A bracket may split only where it is wider than its column (the random models' tiny values)."""
    out = [line for line in Path(pdf).with_suffix(".log").read_text(errors="replace").splitlines() if line.startswith("Overfull")]
    xml = subprocess.run(["pdftotext", "-bbox", str(pdf), "-"], capture_output=True, text=True, check=True).stdout
    words = [(m[3], float(m[2])) for m in re.finditer(r'xMin="([\d.]+)" yMin="([\d.]+)" xMax="[\d.]+" yMax="[\d.]+">(.*)</word>', xml)]
    if splits:
        out += [f"split interval: {a} / {b}" for (a, ya), (b, yb) in zip(words, words[1:])
                if re.fullmatch(r"\[[^\]]*,", a) and abs(ya - yb) > 2]
    return out + [f"signed zero: {w}" for w, _ in words if re.search(r"\u2212(?:0\.0+|0)(?![\d.])", w)]


def test_no_text_runs_into_the_margins(built):
    """A formula, a config line or a figure wider than the text once ran past the right margin; a
    table cell's interval once ran into the next column."""
    assert not words_outside_the_text_block(built / "results/toy/paper/paper.pdf")
    assert not typesetting_defects(built / "results/toy/paper/paper.pdf", splits=False)


def pdf_pages(pdf) -> list[str]:
    out = subprocess.run(["pdftotext", "-layout", str(pdf), "-"], capture_output=True, text=True, check=True).stdout
    return out.split("\f")


def test_floats_stay_in_their_section_and_the_main_text_is_short(built):
    """Main-text figures and tables appear between their section's heading and the next one (never
    floating past it), appendix items after the supplement's heading, and the main text (up to the
    references) takes at most 14 pages (26 before the supplement and the smaller floats)."""
    o = outline.load(built / "paper/outline.yaml", ["ioi", "size", "antonym", "isa"])
    pages = pdf_pages(built / "results/toy/paper/paper.pdf")

    def page_of(pattern: str) -> int:
        hits = [i for i, p in enumerate(pages) if re.search(pattern, p, re.M)]
        assert hits, pattern
        return hits[0]

    main = [s for s in o.sections if not s.appendix]
    heading = {s.id: page_of(rf"^\s*\d+\s+{re.escape(s.title)}\s*$") for s in main}
    supplement = page_of(r"^\s*A\s+Supplementary analyses, figures and tables\s*$")
    ends = [heading[s.id] for s in main[1:]] + [supplement]
    number = {"figure": 0, "table": 0}
    for section, end in zip(main, ends):
        for item in section.main:
            number[item.kind] += 1
            at = page_of(rf"^\s*{item.kind.title()} {number[item.kind]}:")
            assert heading[section.id] <= at <= end, (item.id, at, heading[section.id], end)
    appendix_order = [s for s in o.sections if not s.appendix] + [s for s in o.sections if s.appendix]
    for item in [i for s in appendix_order for i in s.supplement]:
        number[item.kind] += 1
        assert page_of(rf"^\s*{item.kind.title()} {number[item.kind]}:") >= supplement, item.id
    assert page_of(r"^\s*References\s*$") + 1 <= 12  # the trained build's budget (10 + 20) is tested below


def test_results_record_provenance(built):
    meta = json.loads((built / "results/toy/size/head_dla.meta.json").read_text())
    assert meta["config"]["model"] == "toy" and "torch" in meta["versions"] and meta["seconds"] > 0
    assert (built / "results/toy/benchmarks/analyze/size/lens.tsv").exists()
    assert (built / "results/toy/logs/analyze/size/lens.log").exists()


def test_nothing_to_do_after_a_build(built):
    """Nothing to do, and planning leaves the model folder's modification time alone (a model copied
    in, without Snakemake's timestamp file, is dated by it: every analysis would look out of date)."""
    model = built / "results/toy/model"
    before = model.stat().st_mtime_ns
    assert "Nothing to be done" in snakemake(built, "-n", "paper", *TOY).stdout
    assert model.stat().st_mtime_ns == before


def test_deleting_a_figure_rebuilds_only_it(built):
    (built / "results/toy/figures/attn_mlp.pdf").unlink()
    planned = jobs(snakemake(built, "-n", "paper", *TOY))
    assert planned == {"figure": 1, "paper_pdf": 1, "paper": 1}
    snakemake(built, "--cores", "1", "results/toy/figures/attn_mlp.pdf", *TOY)
    assert (built / "results/toy/figures/attn_mlp.pdf").exists()


def test_every_figure_has_the_same_bytes_whatever_the_hash_seed(built, tmp_path):
    """Same results, same figure files: each figure drawn in two processes with different string
    hash seeds (set iteration order) is byte-identical (circuit_graph once drew its nodes in set order)."""
    code = ("import sys; from opposites import outline; from opposites.analyses import load_all; "
            "from opposites.figures import render; out = outline.load('paper/outline.yaml', sys.argv[2].split(',')); "
            "[render(i.section, i.id, load_all('results/toy', i.analyses, i.tasks), list(i.tasks), f'{sys.argv[1]}/{i.id}.pdf') "
            "for i in out.items('figure')]")
    tasks = ",".join(yaml.safe_load((built / "config.yaml").read_text())["tasks"])
    for seed in ("1", "2"):
        (tmp_path / seed).mkdir()
        subprocess.run([sys.executable, "-c", code, str(tmp_path / seed), tasks], cwd=built, check=True,
                       env={**os.environ, "PYTHONHASHSEED": seed})
    names = sorted(p.name for p in (tmp_path / "1").iterdir())
    assert names and names == sorted(p.name for p in (tmp_path / "2").iterdir())
    assert [n for n in names if (tmp_path / "1" / n).read_bytes() != (tmp_path / "2" / n).read_bytes()] == []


def test_changing_n_prompts_reruns_prompts_and_analyses_not_the_model(built):
    planned = jobs(snakemake(built, "-n", "paper", "--config", "model=toy", "n_prompts=20"))
    assert planned["prompts"] == 4 and planned["lens_size"] == 1 and "build_model" not in planned


def test_bad_config_key_stops_with_one_sentence(workdir):
    proc = snakemake(workdir, "-n", "paper", "--config", "model=toy", "n_promts=3", check=False)
    assert proc.returncode != 0
    assert "config key(s) 'n_promts' not recognised; allowed keys are" in proc.stdout + proc.stderr


def test_fewer_prompts_than_asked_warns_at_start_up(workdir):
    proc = snakemake(workdir, "-n", "paper", "--config", "model=toy", "n_prompts=400")
    assert re.search(r"WARNING: task 'isa' yields \d+ of the 400 prompts asked for", proc.stderr)
    assert "task 'ioi' yields" not in proc.stderr


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="checks the machine without CUDA")
def test_cuda_without_cuda_stops_at_start_up_with_one_sentence(workdir):
    proc = snakemake(workdir, "-n", "paper", "--config", "model=toy", "device=cuda", check=False)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0 and "config key 'device' is 'cuda' but no CUDA device is present" in out
    assert out.count("no CUDA device is present") == 1


def test_trained_model_paper_builds_offline(tmp_path, trained_dir):
    """model=trained end to end, reusing the session's trained model (training it is the rule
    train_model; test_training.py and test_trained.py check it): the paper builds, names the model as
    trained offline, and the rule would not retrain an up-to-date model."""
    import shutil

    work = copy_workflow(tmp_path)
    shutil.copytree(trained_dir, work / "results/trained/model")
    # one model: the extra seeds (trained and analysed in test_transfer.py) would add minutes here,
    # and a seed's training gate depends on n_prompts (its corpus leaves out the evaluation prompts)
    config = work / "config.yaml"
    config.write_text(re.sub(r"(?m)^trained_seeds: .*$", "trained_seeds: [0]", config.read_text()))
    args = ["--config", "model=trained", "n_prompts=24"]
    planned = jobs(snakemake(work, "-n", "paper", *args))
    assert "train_model" not in planned and planned["paper_pdf"] == 1
    snakemake(work, "--cores", "2", "paper", *args)
    pdf = work / "results/trained/paper/paper.pdf"
    text = " ".join(subprocess.run(["pdftotext", str(pdf), "-"], capture_output=True, text=True, check=True).stdout.split())
    assert "trained offline by this pipeline" in text and "say nothing about GPT-2" in text
    assert text.startswith("How a small GPT-2-architecture model trained on the tasks completes opposites"), text[:200]
    pages = pdf_pages(pdf)
    references = next(i for i, p in enumerate(pages, 1) if re.search(r"^\s*References\s*$", p, re.M))
    assert references <= 10 and len([p for p in pages if p.strip()]) <= 20, \
        f"page budget: main text at most 10 pages (references on p. {references}), at most 20 in all ({len(pages)})"
    assert not words_outside_the_text_block(pdf) and not typesetting_defects(pdf)
    cited, missing = tables_cited_for_tasks(work / "results/trained")
    assert cited and not missing, missing  # a task's paragraph cites only tables that hold that task's rows


def tables_cited_for_tasks(results: Path, tasks=("ioi", "size", "antonym", "isa")) -> tuple[int, list]:
    """In the rendered paper.tex, per section: the tasks it gives a paragraph (opened by
    \\textbf{task.}) and the tables on the pages it cites (\\ref{tab:id}); how many (task, table)
    pairs there are, and those whose table names tasks in its rows but not this one (the text
    citing, for a task, a table that lacks its rows)."""
    tex = (results / "paper/paper.tex").read_text()
    off_pages = set(re.findall(r"refstepcounter\{reporttable\}\\label\{tab:(\w+)\}", tex))  # in the HTML report only
    count, missing = 0, []
    for section in re.split(r"\\(?:sub)?section\{", tex):
        described = set(re.findall(r"\\textbf\{([a-z]+)\.\}", section)) & set(tasks)
        for table in sorted(set(re.findall(r"\\ref\{tab:(\w+)\}", section))):
            path = results / "tables" / f"{table}.tex"
            if table in off_pages or not path.exists():
                continue
            named = [t for t in tasks if re.search(rf"(^|\n){t} ", path.read_text())]
            for task in sorted(described):
                count += 1
                if named and task not in named:
                    missing.append((task, table, named))
    return count, missing


def test_archive_round_trip_builds_the_paper_offline_and_refuses_tampering(built, tmp_path):
    """`snakemake archive` packs the toy results without the model; unpacked into a fresh copy of
    the workflow, the paper builds with no analysis, no model build and no model; a changed or
    missing file is refused at start-up, naming it."""
    import shutil
    import tarfile

    snakemake(built, "--cores", "1", "archive", *TOY)
    tar_path = built / "results/toy.tar.gz"
    with tarfile.open(tar_path) as tar:
        names = tar.getnames()
    assert "results/toy/MANIFEST.json" in names and "results/toy/size/head_dla.csv" in names
    assert not any(n.startswith("results/toy/model/") or n.startswith("results/toy/paper/") for n in names)

    def unpacked(name):
        (tmp_path / name).mkdir()
        work = copy_workflow(tmp_path / name)
        with tarfile.open(tar_path) as tar:
            tar.extractall(work, filter="data")
        return work

    fresh = unpacked("fresh")
    planned = jobs(snakemake(fresh, "-n", "paper", *TOY))
    assert set(planned) == {"paper_pdf", "paper"}, planned
    snakemake(fresh, "--cores", "1", "paper", *TOY)
    assert (fresh / "results/toy/paper/paper.pdf").stat().st_size > 0
    assert not (fresh / "results/toy/model").exists()

    tampered = unpacked("tampered")
    target = tampered / "results/toy/size/head_dla.csv"
    target.write_text(target.read_text()[: len(target.read_text()) // 2])
    proc = snakemake(tampered, "-n", "paper", *TOY, check=False)
    assert proc.returncode != 0 and "results/toy/size/head_dla.csv does not match its checksum" in proc.stdout + proc.stderr

    incomplete = unpacked("incomplete")
    (incomplete / "results/toy/isa/baseline.json").unlink()
    proc = snakemake(incomplete, "-n", "paper", *TOY, check=False)
    assert proc.returncode != 0 and "results/toy/isa/baseline.json is missing" in proc.stdout + proc.stderr
    shutil.rmtree(tmp_path / "fresh")


def test_a_killed_build_recovers_with_the_readme_command(tmp_path):
    """SIGKILL Snakemake while an analysis job runs (lock and incomplete markers left behind); the
    README's one recovery command (unlock, then rerun incomplete jobs) finishes the target."""
    import os
    import signal
    import sys
    import time

    work = copy_workflow(tmp_path)
    target = "results/toy/size/baseline.json"
    proc = subprocess.Popen([sys.executable, "-m", "snakemake", "--cores", "1", target, *TOY], cwd=work,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
                            env=workflow_env(work))
    deadline = time.time() + 300
    while not (work / "results/toy/logs/analyze/size/lens.log").exists() and time.time() < deadline:
        time.sleep(0.5)
    assert proc.poll() is None, "the build ended before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)  # Snakemake only: its job may live on, as after a lost terminal
    proc.wait()
    assert any((work / ".snakemake/locks").iterdir())
    snakemake(work, "--unlock", *TOY)
    snakemake(work, "--cores", "1", target, "--rerun-incomplete", *TOY)
    assert json.loads((work / target).read_text())["n_prompts"] == 24
    if _alive(proc.pid):  # the orphaned job, if it still runs
        os.killpg(proc.pid, signal.SIGKILL)


def _alive(pgid: int) -> bool:
    import os

    try:
        os.killpg(pgid, 0)
        return True
    except ProcessLookupError:
        return False


def test_report_lists_every_item_in_a_real_browser(built):
    """Snakemake's own report, opened in headless Chromium as a user would: after its JavaScript
    runs, every outline section is listed as a category; the report embeds every figure and table
    with its caption; and a screenshot (kept beside the report, report.png) is not blank."""
    import shutil

    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    assert chromium, "chromium is missing: .ci/install installs it (Debian package chromium)"
    snakemake(built, "--report", "report.html", *TOY)
    page = (built / "report.html").as_uri()
    browse = [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--virtual-time-budget=20000"]
    dom = subprocess.run([*browse, "--dump-dom", page], capture_output=True, text=True, timeout=300, check=True).stdout
    app = re.sub(r"<script.*?</script>|<style.*?</style>", "", dom[dom.find('id="app"'):], flags=re.S)
    shown = " ".join(re.sub(r"<[^>]+>", " ", app).split())
    o = outline.load(built / "paper/outline.yaml", ["ioi", "size", "antonym", "isa"])
    with_items = {s.id for s in o.sections if s.items}
    categories = [c.replace("&", "&amp;") for s, c in report_categories(o).items() if s in with_items]
    at = [shown.find(c) for c in categories]
    assert -1 not in at and at == sorted(at), f"categories missing or out of the paper's order: {categories}"
    raw = (built / "report.html").read_text()
    for item in o.items():
        assert f"{item.id}.{item.ext}" in raw, item.id
    shot = built / "report.png"
    subprocess.run([*browse, f"--screenshot={shot}", "--window-size=1280,900", page], capture_output=True, timeout=300, check=True)
    from PIL import Image

    colours = Image.open(shot).convert("RGB").getcolors(maxcolors=1 << 20)
    assert shot.stat().st_size > 10_000 and len(colours) > 50
