"""Train the offline model (model=trained), or one more from another training seed for replication
(rule train_seed), on the configured tasks' sentences; evaluate it on the pipeline's own evaluation
prompts (the same rows the prompts rule writes, drawn with the config's seed and never in the
training corpus) and write it only if it learned every task."""

from _common import finish, setup_logging

from opposites import training
from opposites.models import gpt2_tokenizer
from opposites.prompts import make_prompts

sm = snakemake  # noqa: F821
log = setup_logging(sm)
p = sm.params
tokenizer = gpt2_tokenizer()
eval_rows = {t: make_prompts(t, tokenizer, p.n_prompts, p.seed, p.min_prompts)[0] for t in p.tasks}
record = training.train(p.tasks, sm.output[0], p.train_seed, eval_rows, **p.train)
log.info("seed %d: trained %d parameters in %.1f s; %s", p.train_seed, record["n_parameters"], record["train_seconds"],
         "; ".join(f"{t}: top-1 {m['top1']:.3f}, logit diff {m['logit_diff']:.2f}" for t, m in record["metrics"].items()))
finish(sm)
