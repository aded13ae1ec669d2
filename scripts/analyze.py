"""Run the analyses of one stage for one model and task (one model load); write each result and
its provenance file."""

from _common import finish, setup_logging, setup_memory, setup_threads

from opposites import analyses, models
from opposites.io import write_csv, write_json
from opposites.provenance import meta

sm = snakemake  # noqa: F821
log = setup_logging(sm)
setup_threads(sm)
setup_memory()
model = models.load(sm.config["model"], sm.params.model_dir, sm.config["device"])
rows = analyses.load_result(sm.input.prompts)  # checked against its checksum


def write(name, result, seconds):
    log.info("%s on %s: %d prompts in %.2f s", name, sm.params.task, len(rows), seconds)
    (write_json if analyses.ANALYSES[name].ext == "json" else write_csv)(result, sm.output[name])
    write_json(meta(sm.config, seconds, result=sm.output[name], code=sm.input.code, task=sm.params.task,
                    analysis=name, stage=analyses.ANALYSES[name].stage, device=str(model.cfg.device)), sm.output[f"{name}_meta"])


def load(dep, every_task=False):
    """A required result of this task, or (every_task) {task: result} of every task (across_inputs)."""
    if not every_task:
        return analyses.load_result(sm.input[dep])
    return {key.split("__", 1)[1]: analyses.load_result(path) for key, path in sm.input.items()
            if key.startswith(f"{dep}__")}


analyses.run_stage(sm.params.analyses, model, rows, sm.config["batch_size"], sm.params.settings,
                   load=load, write=write, seed=sm.config["seed"])
finish(sm)
