"""What heads key on (analyses.shift) and the path's head set (analyses.path_set): a planted model
whose three heads key on content, absolute position and offset from END by construction, and the
trained model."""

import pytest
import torch

from opposites import models
from opposites.analyses import shift as shift_mod
from opposites.analyses.path_set import tied
from opposites.prompts import make_prompts

SEED = 0
SHARP = 1e3  # planted attention scores: softmax is one-hot


def planted(out_dir, word_ids: list[int], p: int, d: int, n_ctx: int = 24):
    """A one-layer GPT-2 whose three heads are set by hand: 0 attends to any token of word_ids
    (content), 1 to absolute position p, 2 to the position d before the query (offset from END).
    Residual: a one-hot position (n_ctx dims), a 'word' flag and a constant; LayerNorm weights 1,
    everything else 0 (the scores are large enough that the LayerNorm's centring does not matter)."""
    dh = n_ctx  # each head's query/key space holds a one-hot position
    word, const = n_ctx, n_ctx + 1

    def edit(net):
        for name, param in net.named_parameters():
            param.fill_(1.0 if ".ln_" in name and name.endswith("weight") or name == "transformer.ln_f.weight" else 0.0)
        net.transformer.wte.weight[:, const] = 1
        net.transformer.wte.weight[word_ids, word] = 1
        net.transformer.wpe.weight[:n_ctx, :n_ctx] = torch.eye(n_ctx)
        w = net.transformer.h[0].attn.c_attn.weight  # (d_model, 3 d_model): q, k, v; heads split each
        q, k = w[:, :3 * dh], w[:, 3 * dh:6 * dh]
        q[const, 0], k[word, 0] = SHARP, 1  # head 0: content
        q[const, dh + p] = SHARP  # head 1: absolute position p
        k[torch.arange(n_ctx), dh + torch.arange(n_ctx)] = 1
        for i in range(d, n_ctx):  # head 2: the query at i reads key i - d
            q[i, 2 * dh + i - d] = SHARP
        k[torch.arange(n_ctx), 2 * dh + torch.arange(n_ctx)] = 1

    return models.load("toy", models.build_gpt2(out_dir, 1, 3, 3 * dh, seed=SEED, edit=edit), "cpu")


@pytest.fixture(scope="module")
def planted_result(tokenizer, tmp_path_factory):
    rows = make_prompts("size", tokenizer, 48, seed=SEED, min_prompts=8)[0]
    layout = rows[0]["positions"]
    rows = [r for r in rows if r["positions"] == layout]  # one layout: one absolute position, one offset
    words = sorted({tokenizer.encode(" " + r["words"]["ADJ1"])[0] for r in rows})
    p = layout["ADJ1"]
    model = planted(tmp_path_factory.mktemp("planted") / "model", words, p, layout["END"] - p)
    out = shift_mod.shift(model, rows, 16, SEED)
    return {e["index"]: e for e in out["heads"] if e["role"] == "ADJ1"}, out


def test_planted_heads_are_told_apart(planted_result):
    heads, _ = planted_result
    assert [heads[h]["clean"] for h in range(3)] == pytest.approx([1.0, 1.0, 1.0], abs=1e-6)  # all read ADJ1
    assert heads[0]["keys_on"] == "content"
    assert heads[1]["keys_on"] == "absolute position"
    assert heads[2]["keys_on"] == "offset from END"


def test_planted_old_position_holds_the_inserted_copy(planted_result):
    heads, _ = planted_result
    assert heads[1]["before"]["old"] == pytest.approx(1.0)  # the position head stays where the word was
    assert heads[2]["after"]["old"] == pytest.approx(1.0)  # the offset head reads the copy behind the word
    assert heads[0]["before"]["new"] == pytest.approx(1.0) and heads[0]["after"]["new"] == pytest.approx(1.0)


def test_shifted_tokens():
    t = torch.tensor([0, 10, 11, 12, 13])
    before, new, old = shift_mod.shifted(t, 2, "before")
    assert before.tolist() == [0, 10, 10, 11, 12, 13] and (new, old) == (3, 2)
    after, new, old = shift_mod.shifted(t, 2, "after")
    assert after.tolist() == [0, 10, 11, 12, 12, 13] and (new, old) == (2, 3)
    swapped, new, old = shift_mod.swapped(t, 1, 3)
    assert swapped.tolist() == [0, 12, 11, 10, 13] and (new, old) == (3, 1)


def test_swap_partners_only_where_templates_give_both_orders(rows):
    assert shift_mod.swap_partners(rows["ioi"], ["IO", "S1", "S2"]) == {"IO": "S1", "S1": "IO"}
    assert shift_mod.swap_partners(rows["size"], ["NAME1", "ADJ1", "NAME2"]) == {}


def test_tied_heads_are_those_whose_interval_overlaps_the_largest():
    shares = [{"sender": "0.0", "value": 0.08, "ci_low": 0.05, "ci_high": 0.11},
              {"sender": "0.1", "value": 0.21, "ci_low": 0.15, "ci_high": 0.27},
              {"sender": "0.2", "value": 0.24, "ci_low": 0.19, "ci_high": 0.30}]
    assert tied(shares) == ["0.2", "0.1"]


# ---- the trained model --------------------------------------------------------------------------

@pytest.fixture(scope="module")
def trained(trained_dir):
    return models.load("trained", trained_dir, "cpu")


def test_trained_size_movers_follow_the_adjective(trained):
    """The heads the pipeline calls movers (analysis movers: patching and END attention) follow the
    word they move when it is shifted: content."""
    from opposites.analyses import heads, mechanism, patching

    rows = make_prompts("size", trained.tokenizer, 64, seed=SEED, min_prompts=8)[0]
    named = mechanism.movers(trained, rows, 32, SEED, patch_heads=patching.patch_heads(trained, rows, 32, "denoising", SEED),
                             attention=heads.attention(trained, rows, 32, SEED))["movers"]
    out = shift_mod.shift(trained, rows, 32, SEED)
    verdicts = {(e["head"], e["role"]): e["keys_on"] for e in out["heads"]}
    assert named and all(verdicts[(m["head"], m["moves"])] == "content" for m in named)


def test_trained_ioi_swap_keeps_the_task_and_heads_keep_their_position(trained):
    """Swapping IO and S1 gives the other template order: the model still does the task, and the
    layer-0 heads that read IO most from END stay with the position, not the name."""
    rows = make_prompts("ioi", trained.tokenizer, 64, seed=SEED, min_prompts=8)[0]
    out = shift_mod.shift(trained, rows, 32, SEED)
    swap = next(t for t in out["task"] if t["role"] == "IO" and t["shift"] == "swap")
    assert swap["accuracy_ci95"][0] > 0.5
    io = [e for e in out["heads"] if e["role"] == "IO" and e["clean"] >= 0.5]
    assert io and all(e["swap_keys_on"] == "position" for e in io)


def test_a_head_that_follows_only_a_little_is_not_called_content():
    """is-a's head 0.1 on the trained model: clean attention 0.98, new - old 0.11 [0.02, 0.22] when
    the word moves and 0.95 when only its offset changes: the interval clears 0, the size does not
    (less than half its clean attention), so it is not distinguished, not content."""
    weak, strong = {"follows": 0.11, "follows_ci95": [0.02, 0.22]}, {"follows": 0.95, "follows_ci95": [0.93, 0.97]}
    assert shift_mod.keys_on(weak, strong) == "content"  # the interval alone
    assert shift_mod.keys_on(weak, strong, clean=0.98) == "not distinguished"
    assert shift_mod.keys_on(strong, strong, clean=0.98) == "content"
