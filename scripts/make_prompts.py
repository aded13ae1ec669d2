"""Generate results/<model>/<task>/prompts.jsonl from the task's templates and word lists."""

from _common import finish, setup_logging
from transformers import AutoTokenizer

from opposites.io import write_json
from opposites.prompts import make_prompts, write_jsonl
from opposites.provenance import meta, timed

sm = snakemake  # noqa: F821
log = setup_logging(sm)
tokenizer = AutoTokenizer.from_pretrained(sm.params.tokenizer_source)
with timed() as t:
    rows, dropped = make_prompts(sm.wildcards.task, tokenizer, sm.params.n_prompts, sm.params.seed, sm.params.min_prompts)
log.info("task %s: %d prompts kept, %d candidates dropped (%s)", sm.wildcards.task, len(rows),
         sum(dropped.values()), ", ".join(f"{k}: {v}" for k, v in dropped.items()) or "none")
write_jsonl(rows, sm.output.prompts)
write_json(meta(sm.config, t["seconds"], result=sm.output.prompts, code=sm.input.code, task=sm.wildcards.task,
                analysis="prompts", n=len(rows)), sm.output.meta)
finish(sm)
