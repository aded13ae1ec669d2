"""Run one registered analysis for one model and task; write its result and a provenance file."""

from _common import setup_logging

from opposites import analyses, models
from opposites.io import write_csv, write_json
from opposites.prompts import read_jsonl
from opposites.provenance import meta, timed
from opposites.seeding import seed_everything

sm = snakemake  # noqa: F821
log = setup_logging(sm)
name = sm.params.analysis
seed_everything(sm.config["seed"])
model = models.load(sm.config["model"], sm.params.model_dir, sm.config["device"])
rows = read_jsonl(sm.input.prompts)
required = {dep: analyses.load_result(sm.input[dep]) for dep in analyses.ANALYSES[name].requires}
with timed() as t:
    result = analyses.run(name, model, rows, sm.config["batch_size"], sm.config, required)
log.info("%s on %s: %d prompts in %.2f s", name, sm.wildcards.task, len(rows), t["seconds"])
(write_json if analyses.ANALYSES[name].ext == "json" else write_csv)(result, sm.output.result)
write_json(meta(sm.config, t["seconds"], task=sm.wildcards.task, analysis=name,
                device=str(model.cfg.device)), sm.output.meta)
