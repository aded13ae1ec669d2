"""The paper outline (paper/outline.yaml): sections and, in each, figures and tables with the
analyses and tasks they draw on. The Snakefile derives its targets from it; the template iterates it."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import re

import yaml

MATH = re.compile(r"\$[^$]*\$")  # inline math, where _ and ^ are fine
LABEL = re.compile(r"\\(?:ref|label)\{[^}]*\}")  # a cross-reference's label, where _ is fine
BARE = re.compile(r"(?<!\\)[%&#_^]")  # LaTeX specials not escaped with a backslash
JINJA = re.compile(r"<<.*?>>|<%.*?%>", re.S)  # template expressions, filled before LaTeX sees them


def check_latex(text: str, where: str) -> None:
    """Captions and titles are LaTeX: a bare %, &, #, _ or ^ (outside $...$) would break the build
    with an error pointing at the generated paper.tex; name the item and the fix instead."""
    plain = LABEL.sub("", MATH.sub("", JINJA.sub("", text)))
    bad = BARE.search(plain)
    if bad:
        start = max(0, bad.start() - 30)
        raise OutlineError(f"{where} is LaTeX, and its {bad.group()!r} near '{plain[start:bad.end() + 10].strip()}' "
                           f"is not escaped: write \\{bad.group()} in paper/outline.yaml (or put it in $...$).")


class OutlineError(ValueError):
    pass


# The page paper.tex sets (article, US letter, geometry margin=2cm) and the box a figure is scaled
# into there: its width (a fraction of the text width) and at most a share of the text height.
TEXT_WIDTH_IN = 8.5 - 2 * 2 / 2.54
TEXT_HEIGHT_IN = 11 - 2 * 2 / 2.54
FLOAT_HEIGHT = {"main": 0.36, "appendix": 0.5}  # of the text height; the template reads these


@dataclass(frozen=True)
class Item:
    id: str
    kind: str  # figure | table
    section: str
    analyses: tuple[str, ...]
    tasks: tuple[str, ...]
    caption: str
    width: str = "\\linewidth"
    appendix: bool | str = False  # True: on the appendix's pages; "report": listed there, drawn in the HTML report
    height: float | None = None  # its largest share of the text height (default FLOAT_HEIGHT's)

    @property
    def folder(self) -> str:
        return "figures" if self.kind == "figure" else "tables"

    @property
    def ext(self) -> str:
        return "pdf" if self.kind == "figure" else "tex"

    def print_box(self) -> tuple[float, float]:
        """Inches (width, height) of the box the paper scales this figure into, keeping its aspect."""
        fraction = self.width.removesuffix("\\linewidth").strip() or "1"
        return float(fraction) * TEXT_WIDTH_IN, self.height_fraction * TEXT_HEIGHT_IN

    @property
    def height_fraction(self) -> float:
        return self.height or FLOAT_HEIGHT["appendix" if self.appendix else "main"]

    @property
    def in_pdf(self) -> bool:
        """Drawn on the paper's pages (else listed in its appendix and shown in Snakemake's report)."""
        return self.appendix != "report"

    def path(self, results: str) -> str:
        from opposites import paths

        return paths.fill(paths.ITEM, results, folder=self.folder, item=self.id, ext=self.ext)


@dataclass(frozen=True)
class Section:
    id: str
    title: str
    items: tuple[Item, ...] = field(default_factory=tuple)
    appendix: bool = False  # a supplementary section: its text and items follow the references

    @property
    def main(self) -> list[Item]:
        return [i for i in self.items if not i.appendix]

    @property
    def supplement(self) -> list[Item]:
        return [i for i in self.items if i.appendix and i.in_pdf]

    @property
    def report_only(self) -> list[Item]:
        return [i for i in self.items if not i.in_pdf]


@dataclass(frozen=True)
class Outline:
    title: str
    abstract: str
    sections: tuple[Section, ...]

    def items(self, kind: str | None = None) -> list[Item]:
        return [i for s in self.sections for i in s.items if kind in (None, i.kind)]

    def item(self, item_id: str) -> Item:
        return {i.id: i for i in self.items()}[item_id]

    def analyses(self) -> set[str]:
        return {a for i in self.items() for a in i.analyses}


def _appendix(it: dict, iid: str) -> bool | str:
    value = it.get("appendix", False)
    if value not in (True, False, "report"):
        raise OutlineError(f"outline item {iid!r} has appendix: {value!r}; use true (the appendix's pages), "
                           "report (listed in the appendix, drawn in Snakemake's report) or leave it out.")
    return value


def load(path: str | Path, tasks: list[str]) -> Outline:
    """Read and check the outline; `tasks` are the configured tasks (an item's `tasks` default to all
    of them, and tasks not configured are left out; an item left with no task is left out)."""
    from opposites.analyses import SOURCES, applies
    from opposites.figures import module_file, plot_function
    from opposites.tables import TABLES

    raw = yaml.safe_load(Path(path).read_text())
    sections, seen = [], set()
    for s in raw["sections"]:
        items = []
        for it in s.get("items", []):
            kind, iid = it.get("kind"), it.get("id")
            if kind not in ("figure", "table"):
                raise OutlineError(f"outline item {iid!r}: kind must be figure or table, not {kind!r}.")
            if kind == "figure" and plot_function(s["id"], iid) is None:
                raise OutlineError(f"outline figure {iid!r} of section {s['id']!r}: no @figure function {iid} in "
                                   f"{module_file(s['id'])}; add one there.")
            if kind == "table" and iid not in TABLES:
                raise OutlineError(f"outline table {iid!r}: no table function of that name; add one to "
                                   f"src/opposites/tables.py (known: {', '.join(TABLES)}).")
            if iid in seen:
                raise OutlineError(f"outline item id {iid!r} is used twice; ids name output files.")
            seen.add(iid)
            unknown = set(it.get("analyses", [])) - set(SOURCES)
            if unknown:
                raise OutlineError(f"outline item {iid!r}: unknown analyses {sorted(unknown)}; "
                                   f"known: {', '.join(SOURCES)}.")
            item_tasks = [t for t in it.get("tasks", tasks) if t in tasks
                          and all(applies(a, t) for a in it.get("analyses", []))]
            check_latex(it.get("caption", ""), f"the caption of outline item {iid!r}")
            if not item_tasks:  # none of its analyses applies to a configured task: nothing to show
                continue
            placed = _appendix(it, iid) or bool(s.get("appendix", False))  # a supplementary section's items too
            items.append(Item(iid, kind, s["id"], tuple(it.get("analyses", [])), tuple(item_tasks),
                              it.get("caption", ""), it.get("width", "\\linewidth"), placed, it.get("height")))
        check_latex(s["title"], f"the title of outline section {s['id']!r}")
        sections.append(Section(s["id"], s["title"], tuple(items), bool(s.get("appendix", False))))
    return Outline(raw["title"], raw.get("abstract", ""), tuple(sections))
