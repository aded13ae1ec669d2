"""Write one outline table (a LaTeX tabular) from its result files; the item's analyses and tasks
come from the rule's params."""

from _common import finish, setup_logging

from opposites.analyses import load_all
from opposites.io import atomic_write_text
from opposites.tables import TABLES

sm = snakemake  # noqa: F821
log = setup_logging(sm)
p = sm.params
atomic_write_text(sm.output[0], TABLES[sm.wildcards.item](load_all(p.results, p.analyses, p.tasks), list(p.tasks)))
log.info("wrote table %s", sm.output[0])
finish(sm)
