"""Pack results/<model>/ into results/<model>.tar.gz with a manifest of checksums (no weights)."""

from _common import finish, setup_logging

from opposites.archive import pack

sm = snakemake  # noqa: F821
log = setup_logging(sm)
manifest = pack(sm.params.results, sm.output[0])
log.info("archived %d files of %s into %s", len(manifest), sm.params.results, sm.output[0])
finish(sm)
