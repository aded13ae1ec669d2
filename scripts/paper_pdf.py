"""Compile the filled LaTeX with latexmk; on failure the error lines of the LaTeX log are shown."""

from _common import setup_logging

from opposites.paper import compile_pdf

sm = snakemake  # noqa: F821
log = setup_logging(sm)
compile_pdf(sm.input[0], sm.output[0])
log.info("wrote %s", sm.output[0])
