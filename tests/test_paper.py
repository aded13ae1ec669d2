import re

import pytest

from opposites import outline, paper
from opposites.texutil import and_join, fmt, fmt_ci, fmt_ci_to, tex_escape


def test_fmt_and_escape():
    assert fmt(1.234) == "1.23" and fmt(-0.5) == "$-$0.50" and fmt(0.00123) == "0.0012"
    assert fmt(float("nan")) == "n/a" and fmt(0.0) == "0.00"
    assert fmt(-6.9e-05) == "$-$0.000069" and fmt(-6.4e-09) == "0.00"  # no exponent; float noise is 0
    # an interval's bounds take its estimate's decimals, in a cell and in a sentence alike
    # (a bracket breaks only where it cannot fit, \cisep; a sentence's interval breaks only before "to")
    assert fmt_ci(0.0037, [0.0011, 0.01]) == r"0.0037 [0.0011\cisep 0.0100]"
    assert fmt_ci(0.01, [-6.9e-05, 0.02]) == r"0.01 [0.00\cisep 0.02]"  # not [-0.000069, 0.02], nor -0.00
    assert fmt_ci(-0.01, [-0.02, 0.004]) == r"$-$0.01 [$-$0.02\cisep 0.00]"
    # a small estimate keeps significant digits only where its interval resolves them
    assert fmt_ci(-0.0027, [-0.0239, 0.0132]) == r"0.00 [$-$0.02\cisep 0.01]"
    assert fmt(-0.3, 0) == "0" and fmt(-0.004, 2, exact=True) == "0.00"
    assert fmt_ci_to(0.0037, [0.0011, 0.01]) == "0.0037, CI~0.0011 to~0.0100"
    assert fmt_ci_to(0.0037, [0.0011, 0.01], 2, exact=True) == "0.00, CI~0.00 to~0.01"  # beside 2-decimal numbers
    nan = float("nan")
    assert fmt_ci(0.5, [nan, nan]) == "0.50 [n too small]" and fmt_ci_to(0.5, [nan, nan]) == "0.50, n too small for an interval"
    assert [and_join(x) for x in ([], ["a"], ["a", "b"], ["a", "b", "c"])] == ["", "a", "a and b", "a, b and c"]
    assert tex_escape("a_b & 50% {x}") == r"a\_b \& 50\% \{x\}"
    assert tex_escape("ab\ufffd\u00e9") == "ab??"


def test_template_uses_latex_safe_delimiters(tmp_path):
    (tmp_path / "t.tex").write_text(r"\textbf{<< x | fmt >>} {<% if y %>yes<% endif %>} <# note #>")
    assert paper.environment(tmp_path).get_template("t.tex").render(x=2.5, y=True) == r"\textbf{2.50} {yes} "


def test_file_line_errors_show_the_source_line():
    log = "./paper.tex:2: Missing $ inserted.\n<inserted text>\n$\nl.2 a_b\n"
    out = paper.latex_errors(log, ["\\begin{document}", "a_b"])
    assert "Missing $ inserted" in out and "source line 2: a_b" in out


def test_latex_errors_are_extracted():
    log = "This is pdfTeX\n(./paper.tex\n! Undefined control sequence.\nl.12 \\foo\n           bar\n)\n"
    assert "! Undefined control sequence." in paper.latex_errors(log) and "l.12 \\foo" in paper.latex_errors(log)


def test_repo_outline_is_valid_and_drives_targets():
    o = outline.load("paper/outline.yaml", ["ioi", "size"])
    ids = [i.id for i in o.items()]
    assert len(ids) == len(set(ids)) and "head_dla" in ids
    assert o.item("head_dla").tasks == ("ioi", "size")
    assert o.item("head_dla").path("results/toy") == "results/toy/figures/head_dla.pdf"
    assert "relation_probe" not in ids and "congruence" in ids  # is-a's probe needs the isa task
    listed = {i.id for s in o.sections for i in s.supplement + s.report_only}
    assert listed == {i.id for i in o.items() if i.appendix}
    assert not {i.id for s in o.sections for i in s.supplement} & {i.id for s in o.sections for i in s.report_only}


def test_report_list_leads_stop_at_a_clause_and_never_inside_math_or_braces():
    long_label = "Transfer matrices between the tasks' circuits: at each component"
    assert paper.first_sentence(long_label) == "Transfer matrices between the tasks' circuits."
    # a short label's colon does not end the lead ("Per prompt." said nothing)
    assert paper.first_sentence("Per prompt: the head's contribution; more") == "Per prompt: the head's contribution; more"
    assert paper.first_sentence("Pull $a: b$ and {x; y} here. Then more") == "Pull $a: b$ and {x; y} here."
    long = "word " * 40 + "(a b c d e f g h i j k l m n o p q r s t u v w x y z a b c d e f g h i j k l m n o p)"
    cut = paper.first_sentence(long)
    assert cut.endswith(r"~\dots") and len(cut) < 170 and "(" not in cut


def test_main_text_cites_no_item_the_pdf_does_not_draw():
    """A report-only item (drawn in Snakemake's report, not on the pages) is never cited from the
    main text: not from a main section's text, nor from a main item's caption."""
    from pathlib import Path

    o = outline.load("paper/outline.yaml", ["ioi", "size", "antonym", "isa"])
    off_pages = {i.id for i in o.items() if not i.in_pdf}
    assert off_pages
    cited = lambda text: set(re.findall(r"\\ref\{(?:fig|tab):(\w+)\}", text)) & off_pages  # noqa: E731
    for s in o.sections:
        if s.appendix:
            continue
        text = Path(f"paper/sections/{s.id}.tex")
        assert not cited(text.read_text() if text.exists() else ""), s.id
        for item in s.main:
            assert not cited(item.caption), item.id
    assert not cited(Path("paper/sections/abstract.tex").read_text())


@pytest.mark.parametrize("item,match", [
    ({"id": "no_such_plot", "kind": "figure"}, "no @figure function no_such_plot in .*figures/dla.py"),
    ({"id": "patch_heads", "kind": "figure"}, "no @figure function patch_heads"),  # lives in another section
    ({"id": "head_dla", "kind": "movie"}, "kind must be figure or table"),
    ({"id": "head_dla", "kind": "figure", "appendix": "maybe"}, "appendix: 'maybe'; use true"),
    ({"id": "head_dla", "kind": "figure", "analyses": ["magic"]}, "unknown analyses"),
    ({"id": "head_dla", "kind": "figure", "caption": "Half (50% of) the heads"},
     r"caption of outline item 'head_dla' is LaTeX, and its '%' near 'Half \(50% of\) the h' is not escaped: write \\%"),
    ({"id": "head_dla", "kind": "figure", "caption": "DLA & more"}, r"its '&' near"),
    ({"id": "head_dla", "kind": "figure", "caption": "the W_U row"}, r"its '_' near 'the W_U row'"),
])
def test_bad_outline_rejected(tmp_path, item, match):
    import yaml

    p = tmp_path / "outline.yaml"
    p.write_text(yaml.safe_dump({"title": "t", "sections": [{"id": "dla", "title": "S", "items": [item]}]}))
    with pytest.raises(outline.OutlineError, match=match):
        outline.load(p, ["ioi"])


def test_escaped_specials_math_and_template_expressions_are_accepted():
    outline.check_latex(r"50\% of $W_U$, << (config.circuit_share * 100) | fmt(0) >>\% and \& more", "x")
    outline.check_latex(r"every $k$ is in Figure~\ref{fig:das_curve}", "x")  # a label's _ is not text
    with pytest.raises(outline.OutlineError, match="its '_' near"):
        outline.check_latex(r"Figure~\ref{fig:das_curve} of das_curve", "x")


def test_report_captions_name_cross_referenced_items_by_id():
    item = outline.Item("x", "figure", "s", [], ["ioi"], r"As Figure~\ref{fig:das_curve} and Section~\ref{sec:sharing}.")
    assert paper.caption_text(item, {}) == "As Figure 'das\\_curve' and Section 'sharing'."


def test_compile_error_shows_log_lines(tmp_path):
    import shutil

    if shutil.which("latexmk") is None:
        pytest.fail("latexmk is not installed; install texlive and latexmk (see .ci/run)")
    tex = tmp_path / "bad.tex"
    tex.write_text("\\documentclass{article}\\begin{document}\n\\nosuchmacro\n\\end{document}\n")
    with pytest.raises(paper.LatexError, match="Undefined control sequence"):
        paper.compile_pdf(tex, tmp_path / "bad.pdf")


def test_code_keeps_double_hyphens():
    from opposites.texutil import code

    assert code("snakemake --cores 1 a_b") == r"snakemake -{}-{}cores 1 a\_b"


def test_each_figure_lives_in_its_section_module_and_depends_on_it_alone():
    from opposites import codedeps, figures

    o = outline.load("paper/outline.yaml", ["ioi", "size"])
    for item in o.items("figure"):
        fn = figures.plot_function(item.section, item.id)
        assert fn is not None and fn.__module__ == f"opposites.figures.{item.section}", item.id
        code = codedeps.closure(["scripts/render_figure.py", figures.module_file(item.section)])
        modules = [str(f) for f in code if "/figures/" in str(f) and not str(f).endswith(("style.py", "__init__.py"))]
        assert modules == [figures.module_file(item.section)], item.id  # editing another section reruns nothing here


def test_figure_text_is_checked_at_the_size_the_paper_prints_it():
    """A 6 in wide figure with 7 pt text prints at 7 x 6.9/6 pt in a text-wide box, but a tall one is
    scaled down into the main-text height box and its text falls below 6 pt; crowded tick labels overlap."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from opposites.figures import layout_problem
    from opposites.outline import Item

    box = Item("x", "figure", "dla", (), (), "").print_box()
    wide, ax = plt.subplots(figsize=(6, 2))
    ax.set_title("fine", fontsize=7)
    assert layout_problem(wide, box) is None
    tall, ax = plt.subplots(figsize=(6, 8))
    ax.set_title("too small", fontsize=7)
    ax.tick_params(labelsize=12)  # large enough even scaled down: the title is the one to name
    assert re.search(r"'too small' prints at [345]\.\d pt", layout_problem(tall, box))
    crowded, ax = plt.subplots(figsize=(2, 1))
    ax.set_xticks(range(40), [f"label{i}" for i in range(40)], fontsize=7)
    assert "overlap" in layout_problem(crowded, box)
    plt.close("all")
