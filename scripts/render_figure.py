"""Draw one outline figure (a vector PDF) from its result files. The item's section, analyses and
tasks come from the rule's params, so this job runs only its own section's figure module."""

from _common import finish, setup_logging

from opposites.analyses import load_all
from opposites.figures import render

sm = snakemake  # noqa: F821
log = setup_logging(sm)
p = sm.params
render(p.section, sm.wildcards.item, load_all(p.results, p.analyses, p.tasks), list(p.tasks), sm.output[0],
       box=tuple(p.print_box))
log.info("wrote figure %s", sm.output[0])
finish(sm)
