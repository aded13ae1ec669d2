"""Render one outline item (a figure PDF or a LaTeX table) from its result files."""

from _common import finish, setup_logging

from opposites.analyses import load_all
from opposites.figures import render
from opposites.io import atomic_write_text
from opposites.outline import load as load_outline
from opposites.tables import TABLES

sm = snakemake  # noqa: F821
log = setup_logging(sm)
item = load_outline("paper/outline.yaml", sm.config["tasks"]).item(sm.wildcards.item)
data = load_all(sm.params.results, item.analyses, item.tasks)
if item.kind == "figure":
    render(item.section, item.id, data, list(item.tasks), sm.output[0])
else:
    atomic_write_text(sm.output[0], TABLES[item.id](data, list(item.tasks)))
log.info("wrote %s %s", item.kind, sm.output[0])
finish()
