"""Train a small GPT-2-architecture model on sentences generated from the task files (issue 13).

The corpus is every task's templates filled by its family's sampler and completed with the answer,
so the model can only predict well by implementing the tasks' mechanisms (name moving, opposites,
is-a facts): offline analyses then see real circuits instead of random weights. Training is seeded
and deterministic, and the model is written only once it has learned every task (`check_learned`).
"""

from __future__ import annotations

import json
import logging
import math
import random
import shutil
import tempfile
import time
from contextlib import contextmanager
from itertools import cycle
from pathlib import Path
from typing import Iterator

import torch
import torch.nn.functional as F
from transformers import GPT2Config, GPT2LMHeadModel

from opposites.io import share_readable
from opposites.models import gpt2_tokenizer
from opposites.prompts import CORRUPTED_ANSWER_IS_WRONG, FAMILIES, TaskError, fill, load_spec, token_ids

log = logging.getLogger(__name__)
BOS = 50256  # <|endoftext|>, prepended to every prompt as TransformerLens does

TRAIN_DEFAULTS: dict = {
    "n_layer": 4,  # IOI learns faster with depth
    "n_head": 4,
    "n_embd": 128,
    "n_positions": 64,  # sentences are at most ~20 tokens
    "steps": 800,  # benchmarks/train.py prints the time
    "batch_size": 32,
    "lr": 3e-3,
    "weight_decay": 0.01,
    "warmup": 50,
    "corpus_size": 20000,  # sentences, the tasks taking turns
    "task_weights": {"ioi": 3},  # turns per round (default 1): IOI forms last (even turns, 1000 steps: top-1 0.59)
    "corpus_seed_offset": 1000,  # corpus seed = seed + offset, never the evaluation prompts' seed
    "threads": 1,  # torch CPU threads; results are bitwise reproducible for a fixed value (the compact
    #                model's products are small: a second thread barely helps, and slows badly when shared)
}



class TrainingFailed(RuntimeError):
    """The trained model falls short of the accuracy gate on some task; `metrics` has every task's."""

    def __init__(self, message: str, metrics: dict):
        super().__init__(message)
        self.metrics = metrics


# ---- corpus -------------------------------------------------------------------------------------

def task_sentences(task: str, tokenizer, seed: int, exclude: set[str]) -> Iterator[list[int]]:
    """Endless token-id sentences of one task: BOS + filled template + answer + '.', dropping fillings
    that make_prompts would drop (a role word or the answer not one token) and excluded prompts."""
    spec = load_spec(task)
    family = spec["family"]
    sampler = FAMILIES[family]
    rng = random.Random(f"corpus-{task}-{seed}")
    misses = 0
    while misses < 10_000:
        template = rng.choice(spec["templates"])
        s = sampler(spec, rng)
        fillings = [(s.clean, s.answer)]
        if CORRUPTED_ANSWER_IS_WRONG[family]:  # the corrupted filling is a prompt too, answered by `wrong`
            fillings.append((s.corrupted, s.wrong))
        for values, answer in fillings:
            filled = fill(template, values, tokenizer, spec["roles"])
            answer_ids = token_ids(tokenizer, answer)
            if filled is None or filled[0] in exclude or len(answer_ids) != 1:
                misses += 1
                continue
            misses = 0
            yield [BOS] + token_ids(tokenizer, filled[0]) + answer_ids + token_ids(tokenizer, ".")
    raise TaskError(f"task {task!r} yields no corpus sentences: every filling is excluded or not "
                    f"single-token; check src/opposites/tasks/{task}.yaml.")


def corpus(tasks, tokenizer, size: int, seed: int, exclude=frozenset(), weights: dict | None = None) -> list[list[int]]:
    """`size` seeded sentences (token ids, BOS first), the tasks taking turns, each `weights[task]`
    times per round (default 1: an even share); no sentence's prompt part is a string in `exclude`."""
    streams = {t: task_sentences(t, tokenizer, seed, set(exclude)) for t in tasks}
    turns = cycle([t for t in tasks for _ in range((weights or {}).get(t, 1))])
    return [next(streams[next(turns)]) for _ in range(size)]


# ---- model and training -------------------------------------------------------------------------

def hyperparameters(overrides: dict) -> dict:
    """TRAIN_DEFAULTS updated by `overrides`; a misspelt key is an error, not silently ignored."""
    unknown = set(overrides) - set(TRAIN_DEFAULTS)
    if unknown:
        raise ValueError(f"unknown training hyperparameter(s) {sorted(unknown)}; known: {', '.join(TRAIN_DEFAULTS)}.")
    return {**TRAIN_DEFAULTS, **overrides}


def build(hp: dict, seed: int, vocab_size: int = 50257) -> GPT2LMHeadModel:
    """A seeded GPT-2 (GPT-2's vocabulary unless `vocab_size` is given), no dropout; LayerNorm
    biases, learned positions and tied embeddings as in GPT-2."""
    torch.manual_seed(seed)
    bos = BOS if vocab_size > BOS else None  # a compact vocabulary has no id 50256
    config = GPT2Config(vocab_size=vocab_size, n_layer=hp["n_layer"], n_head=hp["n_head"], n_embd=hp["n_embd"],
                        n_positions=hp["n_positions"], resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
                        bos_token_id=bos, eos_token_id=bos)
    return GPT2LMHeadModel(config)


def compact(net: GPT2LMHeadModel, vocab: torch.Tensor, hp: dict) -> GPT2LMHeadModel:
    """`net` (GPT-2's vocabulary) with only the embedding rows of `vocab` (GPT-2 ids, sorted): row i
    is token vocab[i]; every other weight as it is. Training starts from the seeded GPT-2 this way."""
    small = build(hp, 0, vocab_size=len(vocab))  # its initial weights are replaced below
    state = net.state_dict()
    state["transformer.wte.weight"] = state["transformer.wte.weight"][vocab]
    state["lm_head.weight"] = state["transformer.wte.weight"]
    small.load_state_dict(state)
    return small


def expand(net: GPT2LMHeadModel, vocab: torch.Tensor, hp: dict, seed: int) -> GPT2LMHeadModel:
    """The model trained on the corpus's own tokens (`vocab`: their GPT-2 ids, sorted; row i of its
    embedding is token vocab[i]) as a standard GPT-2 with GPT-2's 50,257 ids: every weight copied,
    the embedding rows of the corpus's tokens placed at their ids, and the rows of the tokens no
    sentence uses as a seeded GPT-2 initialises them (no prompt reads them)."""
    full = build(hp, seed)
    trained = net.state_dict()
    with torch.no_grad():
        for name, param in full.named_parameters():  # the tied lm_head is the embedding
            if name == "transformer.wte.weight":
                param[vocab] = trained[name]
            else:
                param.copy_(trained[name])
    return full


@contextmanager
def deterministic(threads: int):
    """Fixed thread count and deterministic kernels for the block; the previous settings after."""
    old = (torch.get_num_threads(), torch.are_deterministic_algorithms_enabled(),
           torch.utils.deterministic.fill_uninitialized_memory)
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(True)
    torch.utils.deterministic.fill_uninitialized_memory = False  # NaN-filling every new tensor cost ~8% of a step
    try:
        with torch.enable_grad():  # models.load switches gradients off process-wide
            yield
    finally:
        torch.set_num_threads(old[0])
        torch.use_deterministic_algorithms(old[1])
        torch.utils.deterministic.fill_uninitialized_memory = old[2]


def pad(sentences: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded ids (batch, pos) and the mask of real tokens (batch, pos)."""
    width = max(map(len, sentences))
    ids = torch.zeros(len(sentences), width, dtype=torch.long, device="cpu")
    mask = torch.zeros(len(sentences), width, dtype=torch.bool, device="cpu")
    for i, s in enumerate(sentences):
        ids[i, : len(s)] = torch.tensor(s, device="cpu")
        mask[i, : len(s)] = True
    return ids, mask


def lm_loss(net: GPT2LMHeadModel, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean next-token loss over the real tokens. Padding is on the right, so causal attention keeps
    it out of every real position; the unembedding runs on real positions only."""
    hidden = net.transformer(input_ids=ids).last_hidden_state  # (batch, pos, d_model)
    keep = mask[:, 1:]  # (batch, pos-1): targets that are real tokens
    logits = net.lm_head(hidden[:, :-1][keep])  # (tokens, vocab)
    return F.cross_entropy(logits, ids[:, 1:][keep])


def schedule(step: int, hp: dict) -> float:
    """Learning-rate factor: linear warm-up, then cosine decay to zero."""
    if step < hp["warmup"]:
        return (step + 1) / hp["warmup"]
    return 0.5 * (1 + math.cos(math.pi * (step - hp["warmup"]) / max(1, hp["steps"] - hp["warmup"])))


def fit(net: GPT2LMHeadModel, sentences: list[list[int]], hp: dict, seed: int, every: float = 5.0) -> list[float]:
    """AdamW on the next-token loss for hp['steps'] batches drawn without replacement per epoch;
    returns the loss of every step and logs step, loss and time left every `every` seconds.
    Bitwise reproducible for the same inputs and thread count."""
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(net.parameters(), lr=hp["lr"], weight_decay=hp["weight_decay"], fused=True)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: schedule(step, hp))
    order, losses = torch.empty(0, dtype=torch.long, device="cpu"), []
    start = last = time.perf_counter()
    net.train()
    with deterministic(hp["threads"]):
        for step in range(hp["steps"]):
            if len(order) < hp["batch_size"]:
                order = torch.cat([order, torch.randperm(len(sentences), generator=gen, device="cpu")])
            picked, order = order[: hp["batch_size"]], order[hp["batch_size"]:]
            loss = lm_loss(net, *pad([sentences[i] for i in picked]))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            losses.append(loss.item())
            now = time.perf_counter()
            if now - last >= every or step + 1 == hp["steps"]:
                last, rate = now, (step + 1) / (now - start)
                log.info("training step %d/%d, loss %.3f, %.0f s elapsed, about %.0f s left", step + 1,
                         hp["steps"], sum(losses[-20:]) / len(losses[-20:]), now - start, (hp["steps"] - step - 1) / rate)
    net.eval()
    return losses


# ---- evaluation and gate ------------------------------------------------------------------------

@torch.no_grad()
def evaluate(net: GPT2LMHeadModel, tokenizer, rows: list[dict]) -> dict:
    """Top-1 accuracy (answer is the argmax at the last position) and mean logit difference
    (answer - wrong) on the clean prompts of `rows`, BOS prepended as in the pipeline."""
    ids, mask = pad([[BOS] + token_ids(tokenizer, r["clean"]) for r in rows])
    logits = net(input_ids=ids).logits  # (batch, pos, vocab)
    last = logits[torch.arange(len(rows), device="cpu"), mask.sum(1) - 1]  # (batch, vocab)
    answer = torch.tensor([token_ids(tokenizer, r["answer"])[0] for r in rows], device="cpu")
    wrong = torch.tensor([token_ids(tokenizer, r["wrong"])[0] for r in rows], device="cpu")
    diff = last.gather(1, answer[:, None]) - last.gather(1, wrong[:, None])  # (batch, 1)
    return {"n_prompts": len(rows), "top1": (last.argmax(1) == answer).double().mean().item(),
            "logit_diff": diff.double().mean().item()}


def check_learned(metrics: dict, min_top1: float = 0.95, min_logit_diff: float = 3.0) -> None:
    """Raise TrainingFailed naming every task whose top-1 or mean logit difference is too low."""
    short = [f"{task} (top-1 {m['top1']:.3f}, logit diff {m['logit_diff']:.2f})"
             for task, m in metrics.items() if m["top1"] < min_top1 or m["logit_diff"] < min_logit_diff]
    if short:
        raise TrainingFailed(
            f"The trained model has not learned {', '.join(short)}: every task needs top-1 >= {min_top1} and "
            f"mean logit difference >= {min_logit_diff} on its evaluation prompts, so nothing was written. "
            "Train longer or bigger: raise `steps` (and `corpus_size`) under `train:` in config.yaml first, "
            "then `n_layer` or `n_embd`; check the final loss in the progress bar still falls.", metrics)


# ---- the whole run ------------------------------------------------------------------------------

def train(tasks, out_dir, seed: int, eval_rows: dict[str, list[dict]], **overrides) -> dict:
    """Train on the tasks' corpus, evaluate on `eval_rows` (task -> prompt rows), and, only if every
    task passes `check_learned`, write the model, tokenizer and training.json into `out_dir`.
    Returns the provenance record written as training.json."""
    hp = hyperparameters(overrides)
    tokenizer = gpt2_tokenizer()
    exclude = {r["clean"] for rows in eval_rows.values() for r in rows}
    start = time.perf_counter()
    sentences = corpus(tasks, tokenizer, hp["corpus_size"], seed + hp["corpus_seed_offset"], exclude, hp["task_weights"])
    # Trained on the corpus's own tokens only (a few hundred of GPT-2's 50,257: the full unembedding
    # and its softmax were nearly all of a step), then written as a standard GPT-2 (expand).
    vocab = torch.tensor(sorted({t for s in sentences for t in s}), device="cpu")
    ids = [torch.searchsorted(vocab, torch.tensor(s, device="cpu")).tolist() for s in sentences]
    net = compact(build(hp, seed), vocab, hp)
    losses = fit(net, ids, hp, seed)
    net = expand(net, vocab, hp, seed)
    wall = time.perf_counter() - start
    metrics = {task: evaluate(net, tokenizer, rows) for task, rows in eval_rows.items()}
    record = {"hyperparameters": hp, "seed": seed, "tasks": list(tasks),
              "n_parameters": sum(p.numel() for p in net.parameters()), "metrics": metrics,
              "train_seconds": round(wall, 1), "final_loss": sum(losses[-20:]) / len(losses[-20:]),
              "corpus_sentences": len(sentences), "torch": torch.__version__}
    check_learned(metrics)
    save(net, tokenizer, record, Path(out_dir))
    return record


def save(net: GPT2LMHeadModel, tokenizer, record: dict, out_dir: Path) -> None:
    """Write into a sibling temporary directory, then move it into place as a whole."""
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}-", dir=out_dir.parent))
    try:
        net.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        (tmp / "training.json").write_text(json.dumps(record, indent=1) + "\n")
        share_readable(tmp)
        shutil.rmtree(out_dir, ignore_errors=True)
        tmp.rename(out_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
