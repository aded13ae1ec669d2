"""Fill paper/paper.tex from the outline and the result files, then compile it with latexmk (on
failure the error lines of the LaTeX log are shown)."""

from _common import finish, setup_logging

from opposites import paper
from opposites.outline import load as load_outline

sm = snakemake  # noqa: F821
log = setup_logging(sm)
outline = load_outline(sm.input.outline, sm.config["tasks"])
paper.render("paper", outline, dict(sm.config), sm.params.results, sm.input.bib, sm.output.tex, sm.output.mechanism)
paper.compile_pdf(sm.output.tex, sm.output.pdf)
log.info("wrote %s and %s", sm.output.tex, sm.output.pdf)
finish(sm)
