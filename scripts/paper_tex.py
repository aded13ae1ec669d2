"""Fill paper/paper.tex from the outline and the result files."""

from _common import setup_logging

from opposites import paper
from opposites.outline import load as load_outline

sm = snakemake  # noqa: F821
log = setup_logging(sm)
results = sm.output[0].rsplit("/", 2)[0]
outline = load_outline(sm.input.outline, sm.config["tasks"])
paper.render("paper", outline, dict(sm.config), results, sm.input.bib, sm.output[0])
log.info("wrote %s", sm.output[0])
