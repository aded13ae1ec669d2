"""Run the analyses of one stage for one model and task (one model load); write each result and
its provenance file."""

from _common import setup_logging, setup_threads

from opposites import analyses, models
from opposites.io import write_csv, write_json
from opposites.prompts import read_jsonl
from opposites.provenance import meta, timed
from opposites.seeding import seed_everything

sm = snakemake  # noqa: F821
log = setup_logging(sm)
setup_threads(sm)
model = models.load(sm.config["model"], sm.params.model_dir, sm.config["device"])
rows = read_jsonl(sm.input.prompts)
done: dict = {}
for name in sm.params.analyses:
    a = analyses.ANALYSES[name]
    seed_everything(sm.config["seed"])
    required = {dep: done[dep] if dep in done else analyses.load_result(sm.input[dep]) for dep in a.requires}
    with timed() as t:
        done[name] = analyses.run(name, model, rows, sm.config["batch_size"], sm.config, required)
    log.info("%s on %s: %d prompts in %.2f s", name, sm.params.task, len(rows), t["seconds"])
    (write_json if a.ext == "json" else write_csv)(done[name], sm.output[name])
    write_json(meta(sm.config, t["seconds"], task=sm.params.task, analysis=name,
                    device=str(model.cfg.device)), sm.output[f"{name}_meta"])
