"""Fill the LaTeX template from the outline and result files, and compile it with latexmk."""

from __future__ import annotations

import csv
import os
import re
import shutil
import subprocess
from pathlib import Path

import jinja2

from opposites import paths
from opposites.io import current_umask
from opposites.analyses import ANALYSES, SOURCES, load_all
from opposites.config import model_kind
from opposites.outline import Item, Outline
from opposites.provenance import versions
from opposites.summary import summarize
from opposites import circuit_metrics, derived, findings, overlap, sharing
from opposites.texutil import and_join, code, component_runs, fmt, fmt_ci, fmt_ci_to, pct, tex_escape


class LatexError(RuntimeError):
    pass


def environment(template_dir: str | Path) -> jinja2.Environment:
    """Jinja2 with LaTeX-safe delimiters: <% block %>, << variable >>, <# comment #>."""
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(template_dir)), block_start_string="<%",
        block_end_string="%>", variable_start_string="<<", variable_end_string=">>",
        comment_start_string="<#", comment_end_string="#>", trim_blocks=True, lstrip_blocks=True,
        undefined=jinja2.StrictUndefined, autoescape=False, keep_trailing_newline=True)
    env.filters |= {"fmt": fmt, "ci": fmt_ci, "pct": pct, "tex": tex_escape, "code": code, "runs": component_runs, "cito": fmt_ci_to, "andjoin": and_join,
                    "codes": lambda xs: and_join(f"\\texttt{{{tex_escape(x)}}}" for x in xs)}
    return env


LATEX_TEXT = [(r"\\ref\{(?:fig|tab|sec|app):([^}]*)\}", r"'\1'"), (r"\\%", "%"), (r"\\&", "&"), (r"\\_", "_"), (r"\\to\b", "→"), (r"\\rho\b", "ρ"),
              (r"\\(?:emph|textbf|texttt|textit)\{([^}]*)\}", r"\1"), (r"~", " "), (r"\$", "")]


METHODS = {"circuits": circuit_metrics, "derived": derived, "findings": findings, "overlap": overlap, "sharing": sharing}  # constants that captions and prose name


def caption_text(item: Item, config: dict) -> str:
    """An outline caption as plain reStructuredText for Snakemake's report: its template filled from
    the config, LaTeX markup turned into text, and rst's markup characters escaped."""
    text = environment(".").from_string(item.caption).render(config=config, methods=METHODS)
    for pattern, repl in LATEX_TEXT:
        text = re.sub(pattern, repl, text)
    return re.sub(r"([|*`_\\])", r"\\\1", " ".join(text.split()))


def read_benchmark(path: str | Path) -> dict | None:
    if not Path(path).exists():
        return None
    with open(path) as f:
        row = next(csv.DictReader(f, delimiter="\t"))
    return {"seconds": float(row["s"]), "max_rss_mb": float(row["max_rss"]) if row.get("max_rss", "NA") != "NA" else None}


def item_jobs(item: Item, results: str, model: str) -> list[dict]:
    """The rule runs behind one figure/table, with their wall time and peak memory."""
    jobs = []
    if model_kind(model) in ("toy", "random"):
        jobs.append(("build_model", "build model", {}))
    elif model_kind(model) == "trained":
        jobs.append(("train_model", "train model", {}))
    for task in item.tasks:
        jobs.append(("prompts", f"prompts {task}", {"task": task}))
        needed = [a for a in item.analyses if a != "prompts"]
        needed += [dep for a in needed for dep in ANALYSES[a].requires]
        stages = dict.fromkeys(ANALYSES[a].stage for a in needed)  # ordered, unique
        jobs += [("analyze", f"{stage} {task}", {"task": task, "stage": stage}) for stage in stages]
    jobs.append((item.kind, f"{item.kind} {item.id}", {"item": item.id}))
    out = []
    for rule, label, fields in jobs:
        bench = read_benchmark(paths.fill(paths.BENCH[rule], results, **fields))
        out.append({"label": label, **(bench or {"seconds": None, "max_rss_mb": None})})
    return out


def code_hashes(results: str, tasks: list[str]) -> dict[str, dict[str, str]]:
    """{stage: {task: the first 12 hex digits of the hash of the code that made its results}} from
    the provenance files (the prompts count as a stage)."""
    from opposites.io import read_json

    out: dict[str, dict[str, str]] = {}
    for task in tasks:
        for name in SOURCES:
            meta = Path(paths.fill(paths.META, results, task=task, analysis=name))
            digest = read_json(meta).get("code_sha256") if meta.exists() else None
            if digest:
                out.setdefault("prompts" if name == "prompts" else ANALYSES[name].stage, {})[task] = digest[:12]
    return out


GPT2_NAMES = {"gpt2": "GPT-2 small", "gpt2-medium": "GPT-2 medium", "gpt2-large": "GPT-2 large", "gpt2-xl": "GPT-2 XL"}


def model_name(model: str) -> str:
    """How the title and abstract name the model studied: GPT-2 only when it is GPT-2."""
    kind = model_kind(model)
    if kind == "trained":
        return "a small GPT-2-architecture model trained on the tasks"
    if kind in ("toy", "random"):
        return "a GPT-2-architecture model with random weights"
    return GPT2_NAMES.get(Path(model).name.removeprefix("openai-community/"), Path(model).name)


MIN_LEAD = 40  # a colon or semicolon this early closes a label ("Per prompt:"), not a lead


def first_sentence(text: str, limit: int = 150) -> str:
    """A caption's lead, for the appendix's list: up to its first sentence's end or first colon or
    semicolon after MIN_LEAD characters, cut at a word boundary after `limit` characters (with an
    ellipsis); never inside braces or $...$, so the LaTeX stays balanced."""
    depth, math, last_space = 0, False, None
    for i, ch in enumerate(text):
        if ch == "$" and (i == 0 or text[i - 1] != "\\"):
            math = not math
        elif ch in "{(" and not math:
            depth += 1
        elif ch in "})" and not math:
            depth -= 1
        if depth or math:
            continue
        if (ch in ":;" and i >= MIN_LEAD) or (ch == "." and re.match(r"\.\s+[A-Z]", text[i:i + 3])):
            return text[:i] + "."
        if ch == " ":
            if i > limit and last_space is not None:
                return text[:last_space] + r"~\dots"
            last_space = i
    return text


def report_categories(outline: Outline) -> dict[str, str]:
    """Section id -> the report's category for its figures and tables: the section's number and title,
    zero-padded so that the report (which sorts categories as text) lists them in the paper's order."""
    width = len(str(len(outline.sections)))
    return {s.id: f"{i:0{width}d}. {s.title}" for i, s in enumerate(outline.sections, 1)}


def context(outline: Outline, config: dict, results: str, bib: str) -> dict:
    tasks = list(config["tasks"])
    data = load_all(results, SOURCES, tasks)
    figure_rel = Path("..")  # paper.tex lives in <results>/paper/
    items = {}
    for item in outline.items():
        jobs = item_jobs(item, results, config["model"])
        items[item.id] = {
            "file": str(figure_rel / item.folder / f"{item.id}.{item.ext}"),
            "command": f"snakemake --cores 1 {item.path(results)} --config model={config['model']}",
            "target": item.path(results),
            "jobs": jobs,
            "seconds": sum(j["seconds"] or 0.0 for j in jobs),
            "max_rss_mb": max((j["max_rss_mb"] for j in jobs if j["max_rss_mb"]), default=None),
        }
    return {"outline": outline, "config": config, "model": config["model"], "tasks": tasks,
            "S": summarize(data, tasks), "data": data, "items": items, "versions": versions(),
            "code_hashes": code_hashes(results, tasks),
            "bib": Path(bib).stem, "methods": METHODS,
            "model_name": model_name(config["model"])}


def render(template_dir: str | Path, outline: Outline, config: dict, results: str, bib: str, out: str | Path,
           mechanism_out: str | Path | None = None) -> None:
    """paper.tex from the templates; with mechanism_out, each task's mechanism in fields (JSON)."""
    from opposites.io import atomic_write_text, write_json

    env = environment(template_dir)
    ctx = context(outline, config, results, bib)
    ctx["title"] = env.from_string(outline.title).render(ctx)  # the title names the model studied
    # Captions and section prose are templates too, rendered with the same context.
    ctx["caption"] = lambda item: env.from_string(item.caption).render(ctx)
    ctx["first_sentence"] = first_sentence
    ctx["section_text"] = lambda sid: env.get_template(f"sections/{sid}.tex").render(ctx) \
        if Path(template_dir, "sections", f"{sid}.tex").exists() else ""
    atomic_write_text(out, env.get_template("paper.tex").render(ctx))
    shutil.copy(bib, Path(out).parent / Path(bib).name)
    if mechanism_out:
        write_json([ctx["S"]["tasks"][t]["mechanism"]["glance"] for t in ctx["tasks"]], mechanism_out)


def latex_errors(log_text: str, tex_lines: list[str] | None = None, context_lines: int = 4) -> str:
    """The errors of a LaTeX log ('!' lines, or 'file:line:' ones with -file-line-error), each with
    the lines after it and, where the line number is known, the offending source line."""
    lines = log_text.splitlines()
    picked = []
    for i, line in enumerate(lines):
        m = re.match(r"^(?:\./)?paper\.tex:(\d+): ", line)
        other = re.match(r"^\S*\.tex:\d+: ", line)
        if line.startswith("!") or m or other:
            block = "\n".join(lines[i:i + context_lines])
            if m and tex_lines and int(m.group(1)) <= len(tex_lines):
                block += f"\n  source line {m.group(1)}: {tex_lines[int(m.group(1)) - 1].strip()}"
            picked.append(block)
    return "\n---\n".join(dict.fromkeys(picked)) or "\n".join(lines[-30:])


def compile_pdf(tex: str | Path, out_pdf: str | Path) -> None:
    """Compile `tex` with latexmk in a fresh scratch folder beside its own (so that its relative
    figure paths still resolve) and move the PDF into place: an interrupted or failed compile leaves
    no LaTeX state behind for the next run to trip on. The LaTeX log is kept beside the .tex."""
    import tempfile

    tex = Path(tex)
    for stale in tex.parent.parent.glob(f".{tex.parent.name}-build-*"):  # left by a killed compile
        shutil.rmtree(stale, ignore_errors=True)
    build = Path(tempfile.mkdtemp(dir=tex.parent.parent, prefix=f".{tex.parent.name}-build-"))
    try:
        for f in tex.parent.iterdir():
            if f.suffix in (".tex", ".bib"):
                shutil.copy(f, build / f.name)
        cmd = ["latexmk", "-pdf", "-interaction=nonstopmode", "-halt-on-error", "-file-line-error", tex.name]
        proc = subprocess.run(cmd, cwd=build, capture_output=True, text=True)
        log = build / f"{tex.stem}.log"
        if log.exists():
            shutil.copy(log, tex.with_suffix(".log"))
        if proc.returncode != 0:
            text = log.read_text(errors="replace") if log.exists() else proc.stdout + proc.stderr
            errors = latex_errors(text, tex.read_text(errors="replace").splitlines())
            raise LatexError(f"latexmk failed on {tex} (exit {proc.returncode}). From {tex.with_suffix('.log')}:\n{errors}")
        built = build / f"{tex.stem}.pdf"
        if not built.exists():  # exit 0 and no PDF: a latexmk stopped by a signal its parent ignores, or a broken one
            raise LatexError(f"latexmk failed on {tex}: it exited without writing {tex.stem}.pdf; rerun the build, "
                             f"and if it recurs run `latexmk -pdf {tex.name}` in {tex.parent} to see why.")
        os.chmod(built, 0o666 & ~current_umask())
        os.replace(built, out_pdf)
    finally:
        shutil.rmtree(build, ignore_errors=True)
