"""The trained model (issue 13): it learns every task, deterministically, without seeing the
evaluation prompts, and loads through TransformerLens."""

import json

import pytest
import torch
from transformers import GPT2LMHeadModel

from opposites import models, training
from opposites.prompts import load_spec, make_prompts, token_ids

TASKS = ("ioi", "size", "antonym", "isa")


def eval_rows(tokenizer) -> dict[str, list[dict]]:
    """The pipeline's evaluation prompts: 64 per task, seed 0."""
    return {t: make_prompts(t, tokenizer, 64, seed=0, min_prompts=8)[0] for t in TASKS}


def test_every_task_passes_the_gate(trained_dir):
    record = json.loads((trained_dir / "training.json").read_text())
    training.check_learned(record["metrics"])
    assert set(record["metrics"]) == set(TASKS) and record["n_parameters"] > 0


def test_training_is_bitwise_deterministic(tokenizer):
    hp = training.hyperparameters({"n_layer": 1, "n_embd": 32, "steps": 3, "batch_size": 8})
    sentences = training.corpus(TASKS, tokenizer, 64, seed=5)
    nets = [training.build(hp, seed=1) for _ in range(2)]
    losses = [training.fit(net, sentences, hp, seed=1) for net in nets]
    assert losses[0] == losses[1]
    a, b = (net.state_dict() for net in nets)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_the_compact_model_expands_to_gpt2_ids_with_the_same_logits(tokenizer):
    """Training runs on the corpus's own tokens; the expanded model, with GPT-2's 50,257 ids, gives
    every corpus token the logit the compact model gave it, at every position."""
    hp = training.hyperparameters({"n_layer": 1, "n_embd": 32, "steps": 3, "batch_size": 8})
    sentences = training.corpus(TASKS, tokenizer, 64, seed=5)
    vocab = torch.tensor(sorted({t for s in sentences for t in s}))
    compact = training.build(hp, seed=1, vocab_size=len(vocab))
    training.fit(compact, [torch.searchsorted(vocab, torch.tensor(s)).tolist() for s in sentences], hp, seed=1)
    full = training.expand(compact, vocab, hp, seed=1)
    ids = torch.tensor(sentences[:4][0])[None]
    with torch.no_grad():
        small = compact(input_ids=torch.searchsorted(vocab, ids)).logits  # (1, pos, len(vocab))
        big = full(input_ids=ids).logits  # (1, pos, 50257)
    assert big.shape[-1] == 50257 and torch.allclose(big[..., vocab], small, atol=1e-5)
    assert full.transformer.wte.weight.data_ptr() == full.lm_head.weight.data_ptr()  # still tied


def test_corpus_is_even_and_never_contains_an_evaluation_prompt(tokenizer):
    rows = eval_rows(tokenizer)
    exclude = {r["clean"] for task_rows in rows.values() for r in task_rows}
    sentences = training.corpus(TASKS, tokenizer, 2000, seed=1000, exclude=exclude)
    assert all(s[0] == training.BOS for s in sentences)
    prompts = {tokenizer.decode(s[1:-2]) for s in sentences}  # drop BOS, answer and '.'
    assert not prompts & exclude
    texts = [tokenizer.decode(s[1:]) for s in sentences]  # the tasks take turns: ioi, size, antonym, isa
    assert all(" gave " in t for t in texts[0::4]) and all(" kind of " in t or " type of " in t for t in texts[3::4])


def test_corpus_completes_prompts_with_their_answers(tokenizer):
    sentences = training.corpus(TASKS, tokenizer, 400, seed=0)
    text = {tokenizer.decode(s[1:]) for s in sentences}
    assert any(t.startswith("When ") and t.endswith(".") for t in text)
    for t in text:
        if t.startswith(("A ", "The ")):  # is-a: the answer is the entity's own category
            entity, category = t.split()[1], t.split()[-1].rstrip(".")
            assert entity in load_spec("isa")["categories"][category]


def test_gate_names_the_tasks_that_fell_short():
    metrics = {"ioi": {"top1": 0.5, "logit_diff": 1.2}, "isa": {"top1": 1.0, "logit_diff": 6.0}}
    with pytest.raises(training.TrainingFailed) as e:
        training.check_learned(metrics)
    assert "ioi (top-1 0.500, logit diff 1.20)" in str(e.value) and "isa" not in str(e.value)
    assert "steps" in str(e.value) and "train:" in str(e.value) and e.value.metrics == metrics
    training.check_learned({"isa": {"top1": 1.0, "logit_diff": 6.0}})


def test_unknown_hyperparameter_is_rejected():
    with pytest.raises(ValueError, match="n_layers"):
        training.hyperparameters({"n_layers": 3})


def test_transformer_lens_bridge_agrees_with_hf(trained_dir, tokenizer):
    row = eval_rows(tokenizer)["ioi"][0]
    answer, wrong = (token_ids(tokenizer, row[k])[0] for k in ("answer", "wrong"))
    bridge = models.load(str(trained_dir), None, "cpu")
    tokens = bridge.to_tokens(row["clean"])  # (1, pos), BOS first
    lens = bridge(tokens)[0, -1]  # (vocab,)
    hf = GPT2LMHeadModel.from_pretrained(trained_dir).eval()
    with torch.no_grad():
        ref = hf(input_ids=tokens).logits[0, -1]  # (vocab,)
    assert abs((lens[answer] - lens[wrong]) - (ref[answer] - ref[wrong])).item() < 1e-4
    assert (ref[answer] - ref[wrong]).item() > 0
