"""Attention, copy/opposite scores, similarity, neurons and the mechanism's ablations: planted
circuits with known answers, TransformerLens references, invariants, and ranges."""

import pytest
import torch

from opposites import models
from opposites.analyses import head_dla, heads, logit_lens, meaning
from opposites.words import copy_words, opposites


def planted_ov(tmp_path, task: str):
    """2 layers, 2 heads of width 64, d_model 128. Layer 0 writes nothing and positions embed to 0, so
    the residual after layer 0 at a word is its token embedding. Layer 1: head 0's OV projects onto
    the span of the task's words (it copies them); head 1's OV maps each word to its opposite."""
    tok = models.gpt2_tokenizer()
    words = copy_words(task)
    ids = [tok(w)["input_ids"][0] for w in words]
    opp = opposites(task)

    def edit(net):
        n = 128
        blk0, blk1 = net.transformer.h
        for p in (blk0.attn.c_proj.weight, blk0.attn.c_proj.bias, blk0.mlp.c_proj.weight, blk0.mlp.c_proj.bias):
            p.zero_()
        net.transformer.wpe.weight.zero_()
        E = net.transformer.wte.weight
        X = E[ids] - E[ids].mean(-1, keepdim=True)
        X = X / X.pow(2).mean(-1, keepdim=True).sqrt()  # what layer 1's LayerNorm outputs
        Q, _ = torch.linalg.qr(X.T)  # (d_model, words): orthonormal basis of the words' span
        W_V, W_O = blk1.attn.c_attn.weight[:, 2 * n:], blk1.attn.c_proj.weight  # (128, 128), rows = head dims
        W_V.zero_()
        W_O.zero_()
        r = Q.shape[1]
        W_V[:, :r], W_O[:r] = Q, Q.T  # head 0: x -> projection of x (copy)
        if opp:
            target = torch.stack([E[tok(sorted(opp[w])[0])["input_ids"][0]] for w in words])
            M = torch.linalg.pinv(X) @ target  # x_word -> embedding of an opposite
            U, S, Vh = torch.linalg.svd(M)
            W_V[:, 64:64 + r], W_O[64:64 + r] = U[:, :r] * S[:r], Vh[:r]  # head 1: opposite map
        blk1.attn.c_attn.bias.zero_()
        blk1.attn.c_proj.bias.zero_()

    d = models.build_gpt2(tmp_path / f"planted-{task}", 2, 2, 128, seed=0, edit=edit)
    return models.load("toy", d, "cpu", dtype=torch.float64)


def scores(df, kind):
    return df[df.score_type == kind].set_index(["layer", "head"]).value


def test_planted_copy_head_ranks_first(tmp_path, rows):
    model = planted_ov(tmp_path, "ioi")
    df = heads.copy_scores(model, rows["ioi"], 8)
    copy = scores(df, "copy")
    assert copy.idxmax() == (1, 0) and copy[(1, 0)] > 0.9
    assert copy.drop((1, 0)).max() < 0.2  # random heads sit near chance
    assert df.value.between(0, 1).all()


def test_negative_copy_is_the_copy_score_of_the_negated_ov_circuit(tmp_path, rows, monkeypatch):
    """negative_copy reads -OV from the same unembedding as copy: it must equal the copy score of a
    model whose OV writes are negated (computed from scratch), and the planted copy head, which
    pushes each word up, must not push it up under -OV."""
    model = planted_ov(tmp_path, "ioi")
    df = heads.copy_scores(model, rows["ioi"], 8)
    ov_writes = heads.ov_writes
    monkeypatch.setattr(heads, "ov_writes", lambda m, words, position: -ov_writes(m, words, position))
    negated = heads.copy_scores(model, rows["ioi"], 8)
    assert scores(df, "negative_copy").equals(scores(negated, "copy"))
    assert scores(df, "copy").equals(scores(negated, "negative_copy"))
    assert scores(df, "negative_copy")[(1, 0)] < 0.1 < 0.9 < scores(df, "copy")[(1, 0)]


def test_heads_read_the_embedding_in_layer_0_and_the_residual_after_mlp_0_later(toy64, rows):
    """Layer 0's input at a word is its token plus position embedding (W_E + W_pos, computed by hand);
    later layers' is the residual after MLP 0 of "<|endoftext|> word" (TransformerLens's cache); the
    copy-score table says which each layer read."""
    words = copy_words("size")[:5]
    ids = torch.tensor([toy64.to_single_token(w) for w in words])
    got = heads.head_inputs(toy64, words, 3)
    assert torch.allclose(got[0], toy64.W_E[ids] + toy64.W_pos[3], atol=1e-12, rtol=0)
    bos = toy64.tokenizer.bos_token_id
    _, cache = toy64.run_with_cache(torch.tensor([[bos, int(i)] for i in ids]))
    for layer in range(1, toy64.cfg.n_layers):
        assert torch.allclose(got[layer], cache["blocks.0.hook_resid_post"][:, 1], atol=1e-12, rtol=0)
    assert not torch.allclose(got[0], got[1], atol=1e-3)
    df = heads.copy_scores(toy64, rows["size"], 8)
    at = [r["positions"]["ADJ1"] for r in rows["size"]]
    position = max(sorted(set(at)), key=at.count)  # the source word's most common position
    assert set(df[df.layer == 0].reads) == {f"embedding at position {position}"}
    assert set(df[df.layer > 0].reads) == {"after MLP 0"}


def test_planted_opposite_head_ranks_first(tmp_path, rows):
    model = planted_ov(tmp_path, "size")
    df = heads.copy_scores(model, rows["size"], 8)
    opp, copy = scores(df, "opposite"), scores(df, "copy")
    assert opp.idxmax() == (1, 1) and opp[(1, 1)] > 0.9
    assert copy.idxmax() == (1, 0) and opp.drop((1, 1)).max() < 0.3


def test_planted_neuron_ranks_first(tmp_path, rows, tokenizer):
    layer, neuron = 1, 7
    size = rows["size"]
    ans = torch.tensor([tokenizer(r["answer"])["input_ids"][0] for r in size])
    wrong = torch.tensor([tokenizer(r["wrong"])["input_ids"][0] for r in size])

    def edit(net):
        mlp = net.transformer.h[layer].mlp
        mlp.c_fc.weight[:, neuron] = 0
        mlp.c_fc.bias[neuron] = 3.0  # constant activation gelu(3) ~ 3
        E = net.transformer.wte.weight
        mlp.c_proj.weight[neuron] = 5.0 * (E[ans] - E[wrong]).mean(0)

    d = models.build_gpt2(tmp_path / "neuron", 4, 4, 64, seed=0, edit=edit)
    model = models.load("toy", d, "cpu", dtype=torch.float64)
    df = meaning.neurons(model, size, 8, seed=0, k=5)
    assert (df.iloc[0].layer, df.iloc[0].neuron) == (layer, neuron) and df.iloc[0].value > 0
    top = df.iloc[0]
    assert top.act_task == pytest.approx(top.act_control, rel=1e-6)  # input-independent neuron
    # its activation is the same on every prompt: a zero-width interval; its effect varies with the answer
    assert top.act_task_ci_low == pytest.approx(top.act_task) and top.act_task_ci_high == pytest.approx(top.act_task)
    assert top.ci_low < top.value < top.ci_high and top.n == len(size) and top.n_control >= 1


def test_neuron_effects_sum_to_the_mlp_lens(toy64, rows):
    """All neurons of a layer plus b_out give that MLP's direct effect in the logit lens."""
    r = rows["antonym"]
    effects, _ = meaning.neuron_effects(toy64, r, 6)  # (layer, d_mlp, prompt)
    lens = logit_lens.run(toy64, r, 6, seed=0)
    mlp = lens[(lens.kind == "decomposed") & (lens.label == "mlp")].sort_values("layer").value.to_numpy()
    from opposites.core import batches, end_state, read_out

    bias = torch.cat([read_out(toy64, s, toy64.b_out[:, None, :].expand(-1, len(b.rows), -1))
                      for b in batches(toy64, r, 6) for s in [end_state(toy64, b)]], dim=-1)  # (layer, prompt)
    total = (effects.sum(1) + bias).mean(-1)
    torch.testing.assert_close(total.double(), torch.tensor(mlp, dtype=torch.float64), atol=1e-6, rtol=0)


def plant_layer0_pattern(model, monkeypatch, edit) -> None:
    """Make run_with_cache return layer 0's attention pattern as edit(pattern (head, q, k), tokens)
    leaves it, prompt by prompt (the model's own forward is unchanged)."""
    original = model.run_with_cache

    def planted(tokens, **kwargs):
        logits, cache = original(tokens, **kwargs)
        cache = {name: cache[name] for name in cache.keys()}
        pattern = cache["blocks.0.attn.hook_pattern"].clone()  # (batch, head, q, k)
        for i, seq in enumerate(tokens):
            edit(pattern[i], seq)
        cache["blocks.0.attn.hook_pattern"] = pattern
        return logits, cache

    monkeypatch.setattr(model, "run_with_cache", planted)


def test_attention_finds_a_planted_pattern_at_its_role(toy, rows, monkeypatch):
    """Head 0.1's pattern is replaced (as the model returns it) by one that puts all of every query's
    weight on the position of the token equal to the answer (IOI: the IO name, which occurs once),
    found from the tokens, not from the rows' role positions; BOS where that comes later. The
    role-by-role table must put that weight at IO: misaligned roles (say every position shifted by -2)
    would move it elsewhere. Rows still sum to 1, and intervals bracket the means."""
    r = rows["ioi"]
    answer_of = {tuple(toy.to_tokens(x["clean"])[0].tolist()): toy.to_single_token(x["answer"]) for x in r}

    def edit(pattern, seq):  # (head, q, k) of one prompt
        k = (seq == answer_of[tuple(seq.tolist())]).nonzero()[0, 0].item()
        pattern[1] = 0
        pattern[1, k:, k] = 1
        pattern[1, :k, 0] = 1

    plant_layer0_pattern(toy, monkeypatch, edit)
    att = heads.attention(toy, r, 8, seed=0).set_index(["layer", "head", "dest_role", "src_role"])
    head = att.loc[(0, 1)]
    assert head.loc[("END", "IO"), "value"] == pytest.approx(1.0)
    assert head.loc[("S2", "IO"), "value"] == pytest.approx(1.0)
    assert head.loc[("IO", "IO"), "value"] == pytest.approx(1.0)
    assert head.loc[("S1", "BOS"), "value"] == pytest.approx(sum(x["positions"]["S1"] < x["positions"]["IO"] for x in r) / len(r))
    for src in ("S1", "S2", "END", "other"):
        assert head.loc[("END", src), "value"] == pytest.approx(0.0, abs=1e-12)
    assert att.groupby(level=["layer", "head", "dest_role"]).value.sum().between(1 - 1e-5, 1 + 1e-5).all()
    assert ((att.ci_low <= att.value + 1e-12) & (att.value <= att.ci_high + 1e-12)).all()
    assert (att.n == len(r)).all()


def test_head_logit_contributions_difference_is_dla(toy64, rows):
    """A head's contribution to the answer logit minus its contribution to the wrong logit (rows with
    answer and wrong swapped) is its direct logit attribution, prompt by prompt."""
    from opposites.core import batches

    r = rows["size"]
    dla = head_dla.run(toy64, r, 8, seed=0)
    swapped = [{**x, "answer": x["wrong"], "wrong": x["answer"]} for x in r]
    to_answer = heads.head_logit(toy64, r, 8, head_dla=dla).set_index(["prompt", "layer", "head"]).contribution
    to_wrong = heads.head_logit(toy64, swapped, 8, head_dla=dla).set_index(["prompt", "layer", "head"]).contribution
    per_prompt = head_dla.per_prompt(toy64, r, 8)  # (layer, head, prompt in batch order)
    order = [x["id"] for b in batches(toy64, r, 8) for x in b.rows]
    assert len(to_answer) == 3 * len(r)
    for (pid, layer, head), value in (to_answer - to_wrong).items():
        assert value == pytest.approx(per_prompt[layer, head, order.index(pid)].item(), abs=1e-8)


def test_similarity_finds_planted_opposites_and_centres_the_residual(tmp_path, tokenizer, rows):
    """Embeddings planted so that each opposite pair is mirrored (cosine -1) and each synonym pair
    identical (cosine +1): the table must say so, pair by pair; and the residual cosines are those of
    the centred residuals (mean over the compared words subtracted), checked against a direct run."""
    from opposites.prompts import load_spec
    from opposites.words import relation_pairs

    spec = load_spec("size")

    def plant(net):
        E = net.transformer.wte.weight
        for a, b in spec["pairs"]:
            E[tokenizer(" " + b)["input_ids"][0]] = -E[tokenizer(" " + a)["input_ids"][0]]
        for a, b in spec["synonyms"]:
            if not any(b in p for p in spec["pairs"]):
                E[tokenizer(" " + b)["input_ids"][0]] = E[tokenizer(" " + a)["input_ids"][0]]

    model = models.load("toy", models.build_gpt2(tmp_path / "m", 2, 2, 64, seed=3, edit=plant), "cpu")
    df = meaning.similarity(model, rows["size"], 8, seed=0)
    embed = df[df.space == "embed"]
    assert embed[embed.relation == "opposite"].cosine.to_numpy() == pytest.approx(-1.0, abs=1e-5)
    planted_syn = [(a, b) for a, b in spec["synonyms"] if not any(b in p for p in spec["pairs"])]
    syn = embed[embed.relation == "synonym"].set_index(["a", "b"]).cosine
    assert all(syn[pair] == pytest.approx(1.0, abs=1e-5) for pair in planted_syn) and planted_syn
    assert embed[embed.relation == "random"].cosine.abs().max() < 0.9

    words = sorted({w for ps in relation_pairs("size", 0).values() for p in ps for w in p})
    resid = meaning._adj_residuals(model, spec, words)[:, -1]  # (word, d_model), last layer
    centred = resid - resid.mean(0)
    a, b = " tall", " short"
    want = torch.cosine_similarity(centred[words.index(a)], centred[words.index(b)], dim=0).item()
    got = df[(df.space == "resid") & (df.layer == 1) & (df.a == "tall") & (df.b == "short")].cosine.item()
    assert got == pytest.approx(want, abs=1e-5)
    raw = torch.cosine_similarity(resid[words.index(a)], resid[words.index(b)], dim=0).item()
    assert abs(raw - got) > 1e-3  # centring changes the answer on this model


def test_answer_minus_wrong_contributions_equal_head_dla(toy, rows):
    """The unrelated-adjective reference cancels in answer - wrong: each head's two contributions
    differ by exactly its DLA (an independent computation of the same quantity)."""
    from opposites.analyses import head_dla, opposite

    r = rows["size"]
    hl = opposite.head_logits(toy, r, 4, seed=0)
    heads = hl[hl["head"] >= 0].pivot_table(index=["layer", "head"], columns="target", values="value")
    dla = head_dla.run(toy, r, 4, seed=0).set_index(["layer", "head"]).value
    assert ((heads.answer - heads.wrong) - dla).abs().max() < 1e-5
    assert hl[hl["head"] >= 0].value.abs().max() > 1e-4  # not trivially zero


def test_components_are_classified_by_the_paired_difference():
    """Classes follow the paired difference answer - repeated and its interval, not the two point
    estimates: "pair" raises both (3.0 and 2.9, each interval above 0) with a difference whose
    interval holds 0; the old rule (answer's interval above 0 and answer > repeated) called it
    answer-over-repeat. "both" raises both with a difference clearly above 0: answer-over-repeat
    (named for what it measures; it was called opposite-mapping, which the measure cannot show)."""
    import pandas as pd

    from opposites.derived import classify_components

    def rows(comp, ans, wrong, diff, half=0.1):
        return [{"component": comp, "layer": 0, "head": 0, "target": t, "value": v, "ci_low": v - half, "ci_high": v + half}
                for t, v in (("answer", ans), ("wrong", wrong), ("difference", diff))]

    df = pd.DataFrame(rows("copy", 0.2, 1.0, -0.8) + rows("supp", 0.0, -1.0, 1.0) + rows("opp", 1.0, 0.0, 1.0)
                      + rows("none", 0.05, 0.05, 0.0) + rows("both", 11.0, 8.0, 3.0) + rows("pair", 3.0, 2.9, 0.1)
                      + rows("low", -2.0, -2.1, 0.1))
    got = dict(zip(*classify_components(df)[["component", "cls"]].T.values))
    assert got == {"copy": "copy-like", "supp": "copy-suppressing", "opp": "answer-over-repeat", "none": "none",
                   "both": "answer-over-repeat", "pair": "pair", "low": "pair"}


def test_class_table_keeps_only_the_difference_where_the_reference_is_unknown_words():
    """Table component_classes: with unrelated adjectives the model knows, a row per class and the
    pair direction; where they are out of distribution (control not measurable) the classes and r
    rest on that reference, so only the paired difference is listed (components above 0)."""
    import pandas as pd

    from opposites.tables import component_classes

    def rows(comp, ans, wrong, diff, half=0.1):
        return [{"component": comp, "layer": 0, "head": 0, "target": t, "value": v, "ci_low": v - half, "ci_high": v + half}
                for t, v in (("answer", ans), ("wrong", wrong), ("difference", diff))]

    df = pd.DataFrame(rows("up", 3.0, 1.0, 2.0) + rows("pair", 3.0, 2.9, 0.1) + rows("down", 0.2, 1.0, -0.8))
    known = {"measurable": True, "n": 8, "pair_direction": {"n_components": 3, "r": 0.9, "r_ci95": [0.5, 0.99]},
             "answer_rel_clean": 1.0, "answer_rel_clean_ci95": [0.5, 1.5], "answer_rel_control": 0.2,
             "answer_rel_control_ci95": [0.0, 0.4], "answer_rel_drop": 0.8, "answer_rel_drop_ci95": [0.4, 1.2]}
    unknown = {**known, "measurable": False,
               "unrelated_check": {"out": ["a", "b"], "words": ["a", "b", "c"], "fences": [1.0, 1.3]}}
    measured = component_classes({"head_logits": {"size": df}, "control": {"size": known}}, ["size"])
    assert "pair direction" in measured and "copy-like" in measured
    table = component_classes({"head_logits": {"size": df}, "control": {"size": unknown}}, ["size"])
    line = next(x for x in table.splitlines() if "above 0" in x)
    assert line.split(" & ")[2] == "1" and "up" in line and "pair" not in line  # only "up"'s interval is above 0
    assert "copy-like" not in table and "$r$" not in table and "not measurable: 2 of 3" in table


def test_head_logits_difference_and_pair_direction(toy, rows):
    """head_logits' difference is answer - repeated paired by prompt (mean of differences = difference
    of means; its interval holds it); the pair direction's r is Pearson's r across components of the
    two mean contributions up to its bootstrap bias correction, inside its own interval."""
    import numpy as np

    from opposites.analyses import opposite

    r = rows["size"]
    hl = opposite.head_logits(toy, r, 4, seed=0).pivot_table(index="component", columns="target", values="value")
    assert ((hl.answer - hl.wrong) - hl.difference).abs().max() < 1e-9
    full = opposite.head_logits(toy, r, 4, seed=0)
    d = full[full.target == "difference"]
    assert ((d.ci_low <= d.value + 1e-12) & (d.value <= d.ci_high + 1e-12)).all()
    pair = opposite.pair_direction(toy, r, 4, seed=0)
    plain = np.corrcoef(hl.answer, hl.wrong)[0, 1]
    assert pair["r_ci95"][0] <= pair["r"] <= pair["r_ci95"][1]
    assert abs(pair["r"] - plain) < 0.25 and pair["n_components"] == len(hl)


def test_control_corruption_keeps_everything_but_adj1(tokenizer, rows):
    from opposites.analyses.opposite import control_rows
    from opposites.prompts import load_spec

    r = rows["antonym"]
    ctrl = control_rows(r, tokenizer, seed=0)
    unrelated = set(load_spec("antonym")["unrelated"])
    assert len(ctrl) >= len(r) // 2
    for c in ctrl:
        orig = next(x for x in r if x["id"] == c["id"])
        a, b = tokenizer(orig["clean"])["input_ids"], tokenizer(c["clean"])["input_ids"]
        adj = orig["positions"]["ADJ1"] - 1  # no BOS here
        assert len(a) == len(b) and [x for i, x in enumerate(a) if i != adj] == [x for i, x in enumerate(b) if i != adj]
        assert tokenizer.decode([b[adj]]).strip() in unrelated


def test_recency_sorts_planted_heads_by_the_rule_they_follow(toy, rows, monkeypatch):
    """On the dissociating prompts (a third name S3 as the last clause's subject), head 0.0's END
    attention is planted on S3 and head 0.1's on IO, found from the tokens: recency must call 0.0 a
    most-recent-subject head and 0.1 an IOI head, and no other head either (the rest of this random
    model spreads its attention); the name preferences are shares that sum to 1."""
    from opposites.analyses import recency

    r = rows["ioi"]
    dis = {tuple(toy.to_tokens(x["clean"])[0].tolist()): x for x in recency.prompts(r, "ioi", toy.tokenizer, 0)}
    assert dis and all(x["positions"]["S3"] > x["positions"]["S2"] for x in dis.values())

    def edit(pattern, seq):  # (head, q, k) of one prompt
        pos = dis[tuple(seq.tolist())]["positions"]
        for head, role in ((0, "S3"), (1, "IO")):
            pattern[head, -1] = 0
            pattern[head, -1, pos[role]] = 1

    plant_layer0_pattern(toy, monkeypatch, edit)
    res = recency.run(toy, r, 8, seed=0)
    by = {(h["layer"], h["head"]): h for h in res["heads"]}
    assert by[(0, 0)]["rule"] == "most recent subject" and by[(0, 0)]["S3"]["value"] == pytest.approx(1.0)
    assert by[(0, 1)]["rule"] == "IOI" and by[(0, 1)]["IO"]["value"] == pytest.approx(1.0)
    assert [k for k, h in by.items() if h["rule"]] == [(0, 0), (0, 1)]
    assert res["n"] == len(dis) and sum(res["preferred"].values()) == pytest.approx(1.0)


def test_role_preferences_need_separated_intervals_and_a_minimum_share():
    """A head is listed for role a over role b only when its interval for a lies wholly above its
    interval for b and its mean attention to a reaches MIN_ATTENTION."""
    import pandas as pd

    from opposites.derived import MIN_ATTENTION, role_preferences

    rows = []
    for head, (a, b) in enumerate([((0.6, 0.5, 0.7), (0.1, 0.05, 0.15)),  # clear
                                   ((0.6, 0.3, 0.9), (0.4, 0.2, 0.5)),  # intervals overlap
                                   ((MIN_ATTENTION / 2, 0.08, 0.12), (0.0, 0.0, 0.01))]):  # too little attention
        rows += [{"layer": 0, "head": head, "dest_role": "END", "src_role": role, "value": v, "ci_low": lo, "ci_high": hi}
                 for role, (v, lo, hi) in (("ADJ1", a), ("NAME2", b))]
    att = pd.DataFrame(rows)
    assert role_preferences(att, "ADJ1", "NAME2")[["layer", "head"]].values.tolist() == [[0, 0]]
    assert role_preferences(att, "NAME2", "ADJ1").empty


def test_relation_probe_reads_a_planted_direction_and_fails_on_shuffled_labels():
    """Synthetic features: each of three classes displaced along its own direction in noise. The ridge probe
    decodes the held-out half; trained on shuffled labels it cannot beat chance by much; the
    separation score of the planted features is high and that of pure noise is low."""
    from opposites.analyses.relation import fit_predict, separation, split

    gen = torch.Generator().manual_seed(0)
    labels = torch.arange(3).repeat_interleave(40)
    x = torch.randn(120, 32, generator=gen, dtype=torch.float64)
    x[torch.arange(120), labels] += 4.0  # each class displaced along its own planted direction
    train = split(labels, seed=0)
    assert [int(train[labels == c].sum()) for c in range(3)] == [20, 20, 20]
    acc = (fit_predict(x[train], labels[train], x[~train], 3) == labels[~train]).double().mean()
    shuffled = labels[train][torch.randperm(60, generator=gen)]
    acc_shuffled = (fit_predict(x[train], shuffled, x[~train], 3) == labels[~train]).double().mean()
    assert acc > 0.95 and acc_shuffled < 0.6
    assert separation(x, labels) > 0.2 > 0.05 > separation(torch.randn(120, 32, generator=gen, dtype=torch.float64), labels)


def test_relation_probe_on_a_model_separates_tokens_not_shuffled_labels(toy, rows):
    """On the toy model the types end in different tokens, so the embedding (before layer 0) already
    decodes them; shuffled training labels stay far from that at every layer."""
    from opposites.analyses import relation

    res = relation.run(toy, rows["isa"], 8, seed=0)
    assert res["classes"] == ["is-a", "opposite", "IOI"] and res["n_per_class"] == [len(rows["isa"])] * 3
    assert res["layers"][0]["accuracy"]["value"] > 0.95
    assert all(r["shuffled"]["value"] < 0.7 for r in res["layers"])
    assert len(res["heads"]) == toy.cfg.n_layers * toy.cfg.n_heads


def test_relation_features_batched_by_length_match_one_prompt_at_a_time(toy, rows):
    """The probe's features come from forwards of equal-length prompts together: each prompt's END
    residuals and head outputs equal its own single forward's, in the rows' order (prompts of three
    tasks, several lengths, a batch size that splits a length group)."""
    from opposites.analyses import relation

    _, prompts = relation.class_prompts("isa", toy.tokenizer, 6, seed=0)
    assert len({len(toy.to_tokens(r["clean"])[0]) for r in prompts}) > 1
    resid, heads = relation._end_features(toy, prompts, 2)
    for i, r in enumerate(prompts):
        one_resid, one_heads = relation._end_features(toy, [r], 1)
        torch.testing.assert_close(resid[:, i], one_resid[:, 0], rtol=0, atol=1e-5)
        torch.testing.assert_close(heads[:, :, i], one_heads[:, :, 0], rtol=0, atol=1e-5)


def test_subject_space_finds_a_head_planted_inside_it(toy, rows, monkeypatch):
    """Head 1.0's key weights are planted inside layer 1's subject space and head 1.1's orthogonal to
    it: 1.0 has all its key norm inside (above every random subspace) and is the most aligned head,
    1.1 has none; the random floor is the subspace's share of dimensions."""
    from opposites.analyses import heads as heads_analysis
    from opposites.analyses import subjects
    from opposites.derived import SUBSPACE_DIM

    r = rows["size"]
    subj, _ = subjects._residuals(toy, r, 8, ["NAME1", "NAME2"])
    basis = subjects.space(subjects._normalised(subj[1].flatten(0, 1)), SUBSPACE_DIM)  # (d_model, k)
    W_K = toy.W_K.detach().double().clone()
    gen = torch.Generator().manual_seed(0)
    noise = torch.randn(W_K.shape[2:], generator=gen, dtype=torch.float64)
    W_K[1, 0] = basis @ (basis.T @ noise)
    W_K[1, 1] = noise - basis @ (basis.T @ noise)
    monkeypatch.setattr(subjects, "key_weights", lambda model: W_K)
    res = subjects.run(toy, r, 8, seed=0, attention=heads_analysis.attention(toy, r, 8, seed=0))
    by = {(h["layer"], h["head"]): h for h in res["heads"]}
    assert by[(1, 0)]["share"] == pytest.approx(1.0) and by[(1, 0)]["percentile"] == 1.0
    assert by[(1, 1)]["share"] == pytest.approx(0.0, abs=1e-9) and by[(1, 1)]["percentile"] == 0.0
    assert (res["most_aligned"]["layer"], res["most_aligned"]["head"]) == (1, 0)
    assert by[(1, 0)]["random_mean"] == pytest.approx(SUBSPACE_DIM / W_K.shape[2], rel=0.2)
    assert [x["space"] for x in res["similarity"]] == ["embed"] + ["resid"] * toy.cfg.n_layers


def _hooked_ablation(toy, r, heads_, mlps, sources):
    """TransformerLens reference: each prompt's z of the given heads and the given MLP layers'
    outputs replaced by the mean of the clean activations of the prompts in sources[i] (batch order),
    one full forward per prompt with hooks; (prompt,) logit difference."""
    from opposites.core import batches, logit_diff

    one = [b for b in batches(toy, r, 1)]  # batch order, one prompt each
    caches = [toy.run_with_cache(b.clean)[1] for b in one]
    out = []
    for i, b in enumerate(one):
        src = sources[i]
        mean = lambda name: torch.stack([caches[j][name][0] for j in src]).mean(0)  # noqa: E731

        def set_z(z, hook, layer):
            for l, h in heads_:
                if l == layer:
                    z[0, :, h] = mean(f"blocks.{l}.attn.hook_z")[:, h]
            return z

        hooks = [(f"blocks.{l}.attn.hook_z", lambda z, hook, l=l: set_z(z, hook, l)) for l in {l for l, _ in heads_}]
        hooks += [(f"blocks.{l}.hook_mlp_out", lambda o, hook, l=l: mean(f"blocks.{l}.hook_mlp_out")[None]) for l in mlps]
        out.append(logit_diff(toy.run_with_hooks(b.clean, fwd_hooks=hooks), b))
    return torch.cat(out).double()


def test_mean_ablation_matches_transformerlens_hooks(toy, rows):
    """The movers' and mappers' ablation test (mechanism.ablated_logit_diff, on the patching engine,
    from the clean run at the first ablated layer) against TransformerLens's own forward with hooks
    that replace the same heads' z and MLP outputs by their clean mean over the prompts of the same
    template and length, and by a random other such prompt's (resample), on the toy model
    (non-default LayerNorms and biases, several prompt lengths)."""
    from opposites.analyses import mechanism

    r = rows["size"]
    L = toy.cfg.n_layers
    clean = mechanism.ablated_logit_diff(toy, r, 8, [])
    for heads_, mlps in [([], []), ([(0, 1)], []), ([(1, 0), (1, 2), (L - 1, 3)], [L - 1]), ([(2, 1)], [0, 2])]:
        for how in ("mean", "resample"):
            ref = _hooked_ablation(toy, r, heads_, mlps, mechanism.ablation_sources(r, how, seed=3))
            ours = mechanism.ablated_logit_diff(toy, r, 8, heads_, mlps, how, seed=3)
            torch.testing.assert_close(ours, ref, atol=1e-5, rtol=0, msg=lambda m: f"{how} {heads_}, {mlps}: {m}")
            assert not heads_ or (ours - clean).abs().max() > 1e-4  # each ablation changes more than the tolerance


def test_mean_ablation_is_per_template_not_per_batch(toy, tokenizer):
    """Prompts of two templates with equal length share a batch; mean ablation takes each
    template's own mean, so an MLP layer's output is replaced by a different mean than the batch's
    (the old behaviour: a mean over the batch, mixing templates), and the logit differences differ
    from the batch-mean ablation by far more than the engine's tolerance. Resample ablation draws
    another prompt of the same template, never the prompt itself, and is seeded."""
    from opposites.analyses import mechanism
    from opposites.core import batch_order, batches, logit_diff
    from opposites.prompts import make_prompts

    r = make_prompts("size", tokenizer, 40, seed=0, min_prompts=4)[0]
    groups = mechanism.ablation_groups(r)
    ordered = batch_order(r)
    mixed = [length for length in {g[1] for g in groups}
             if len({o["template"] for o in ordered if o["positions"]["END"] == length}) > 1]
    assert mixed, "no length shared by two templates: the test needs a mixed batch"
    for i, g in enumerate(groups):
        assert g[0] is None or g == (ordered[i]["template"], ordered[i]["positions"]["END"])
    ours = mechanism.ablated_logit_diff(toy, r, 64, [], [0, 1])
    batch_mean = [(f"blocks.{l}.hook_mlp_out", lambda o, hook: o.mean(0, keepdim=True).expand_as(o)) for l in (0, 1)]
    old = torch.cat([logit_diff(toy.run_with_hooks(b.clean, fwd_hooks=batch_mean), b) for b in batches(toy, r, 64)]).double()
    assert (ours - old).abs().max() > 1e-3  # the old, mixed-template mean gives other numbers
    src = mechanism.ablation_sources(r, "resample", seed=0)
    assert src == mechanism.ablation_sources(r, "resample", seed=0)
    assert all(s[0] != i and groups[s[0]] == groups[i] for i, s in enumerate(src) if groups.count(groups[i]) > 1)


def test_mlp_ablation_control_is_matched(toy, rows):
    """An ablation naming MLP layers is controlled by as many random other MLP layers (and as many
    other heads), never by heads alone; with every MLP layer named there is no matched control and
    the set is never said to carry the task."""
    import random

    from opposites.analyses import mechanism
    from opposites.summary import carries, lowers_logit_diff

    L, H = toy.cfg.n_layers, toy.cfg.n_heads
    draws = mechanism.matched_draws(L, H, [(0, 0)], [1], random.Random(0), 5)
    for hs, ms in draws:
        assert len(hs) == 1 and hs[0] != (0, 0) and hs[0][0] == 0 and len(ms) == 1 and ms[0] != 1
    assert mechanism.matched_draws(L, H, [], list(range(L)), random.Random(0), 5) is None
    test = mechanism._test(toy, rows["size"], 8, 0, [(0, 0)], [1])
    assert test["matched_control"] and test["random_others"]["mlps"] == 1 and test["random_others"]["heads"] == 1
    assert test["random_others"]["distinct_sets"] == (H - 1) * (L - 1)  # other heads of layer 0, other MLPs
    none = mechanism._test(toy, rows["size"], 8, 0, [], list(range(L)))
    assert none["random_others"] is None and not none["matched_control"] and not carries(none)
    assert not lowers_logit_diff(none)
    drop = {"named": {"logit_diff_change_ci95": [-3.5, -2.6]}, "random_others": {"logit_diff_change_mean_ci95": [-0.8, -0.4]}}
    assert lowers_logit_diff(drop) and not lowers_logit_diff({**drop, "random_others": {"logit_diff_change_mean_ci95": [-3.0, -0.4]}})


def test_head_control_is_drawn_from_the_ablated_heads_layers():
    """Planted: named heads 0.0, 0.1 and 2.3 in a 4-layer, 4-head model. Every control set has two
    other heads of layer 0 and one other head of layer 2 (never a named head, never another layer),
    where a draw from all other heads would pick from layers 1 and 3 too; a layer with no other head
    to draw gives no matched control. Plain Python, no model."""
    import random

    from opposites.analyses import mechanism

    L, H, named = 4, 4, [(0, 0), (0, 1), (2, 3)]
    draws = mechanism.matched_draws(L, H, named, [], random.Random(0), 50)
    for hs, ms in draws:
        assert sorted(l for l, _ in hs) == [0, 0, 2] and not set(hs) & set(named) and len(set(hs)) == 3 and ms == []
    assert {h for hs, _ in draws for h in hs} == {(0, 2), (0, 3), (2, 0), (2, 1), (2, 2)}  # all reachable
    anywhere = [(l, h) for l in range(L) for h in range(H) if (l, h) not in named]
    unmatched = [random.Random(i).sample(anywhere, 3) for i in range(50)]  # the old, unmatched draw
    assert any(l in (1, 3) for hs in unmatched for l, _ in hs)
    assert mechanism.distinct_sets(L, H, named, []) == 1 * 3
    assert mechanism.matched_draws(L, H, [(1, h) for h in range(H)], [], random.Random(0), 5) is None
    assert mechanism.matched_draws(L, 2, [(0, 0), (0, 1)], [], random.Random(0), 5) is None


def test_ablation_reports_the_paired_logit_difference_change(toy, rows):
    """Beside accuracy, each ablation reports the mean change of the logit difference from the
    clean run, paired by prompt, with an interval that holds it; the movers-only test too."""
    from opposites.analyses import mechanism

    r = rows["size"]
    clean = mechanism.ablated_logit_diff(toy, r, 8, [])
    heads_ = [(1, 0), (2, 1)]
    test = mechanism._test(toy, r, 8, 0, heads_)
    named = test["named"]
    change = (mechanism.ablated_logit_diff(toy, r, 8, heads_) - clean).mean().item()
    assert named["logit_diff_change"] == pytest.approx(change, abs=1e-12) and abs(change) > 1e-6  # toy: small
    assert named["logit_diff_change"] == pytest.approx(named["logit_diff"] - clean.mean().item(), abs=1e-12)
    low, high = named["logit_diff_change_ci95"]
    assert low <= named["logit_diff_change"] <= high
    others = test["random_others"]
    assert others["logit_diff_change_mean"] == pytest.approx(others["logit_diff_mean"] - clean.mean().item(), abs=1e-12)
