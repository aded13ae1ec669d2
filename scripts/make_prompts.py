"""Generate results/<model>/<task>/prompts.jsonl from the task's templates and word lists."""

from _common import finish, setup_logging
from transformers import AutoTokenizer

from opposites.prompts import make_prompts, write_jsonl

sm = snakemake  # noqa: F821
log = setup_logging(sm)
tokenizer = AutoTokenizer.from_pretrained(sm.params.tokenizer_source)
rows, dropped = make_prompts(sm.wildcards.task, tokenizer, sm.params.n_prompts, sm.params.seed, sm.params.min_prompts)
log.info("task %s: %d prompts kept, %d candidates dropped (%s)", sm.wildcards.task, len(rows),
         sum(dropped.values()), ", ".join(f"{k}: {v}" for k, v in dropped.items()) or "none")
write_jsonl(rows, sm.output[0])
finish()
