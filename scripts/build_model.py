"""Build an offline model (toy or random:<size>) with seeded random weights."""

from _common import finish, setup_logging

from opposites.models import build_offline_model

log = setup_logging(snakemake)  # noqa: F821
cfg = snakemake.config  # noqa: F821
out = build_offline_model(cfg["model"], snakemake.output[0], snakemake.params.seed)  # noqa: F821
log.info("built %s (seed %d) in %s", cfg["model"], snakemake.params.seed, out)  # noqa: F821
finish(snakemake)  # noqa: F821
