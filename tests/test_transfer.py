"""Cross-task transfer (analyses/transfer.py) and the sharing verdicts (sharing.py) on planted models
whose answer is known: two tasks that truly share a head (its output means the same to both tasks'
later computation: transfer works) and two that merely coincide in that head's index (each task's
later computation reads it only in its own context: transfer fails)."""

from itertools import permutations

import numpy as np
import pytest
import torch

from opposites import models
from opposites.analyses import transfer
from opposites.sharing import component_verdict, pair_transfer

# Two synthetic tasks of the same relation (the opposite of ADJ1), with disjoint words and templates.
TEMPLATES = {"left": ["{NAME1} is {ADJ1}. {NAME2} is"], "right": ["{NAME1} was {ADJ1}. {NAME2} was"]}
PAIRS = {"left": [("tall", "short"), ("big", "small"), ("wide", "narrow")],
         "right": [("hot", "cold"), ("rich", "poor"), ("fast", "slow")]}
END_TOKEN = {"left": " is", "right": " was"}
NAMES = ["John", "Mary", "Tom", "Amy"]
D, C = 128, 30.0  # model width; norm of the constant direction every position carries (keeps LayerNorm linear)


def rows_of(task: str) -> list[dict]:
    out = []
    for a, b in PAIRS[task]:
        for adj, ans in ((a, b), (b, a)):
            for n1, n2 in list(permutations(NAMES, 2))[:4]:
                clean = TEMPLATES[task][0].format(NAME1=n1, ADJ1=adj, NAME2=n2)
                out.append({"id": len(out), "task": task, "template": 0, "clean": clean, "answer": f" {ans}",
                            "wrong": f" {adj}", "words": {"NAME1": n1, "ADJ1": adj, "NAME2": n2}})
    return out


def feature(i: int) -> torch.Tensor:
    """Orthonormal, zero-mean directions (LayerNorm's mean subtraction leaves them alone)."""
    v = torch.zeros(D)
    v[2 * i], v[2 * i + 1] = 2 ** -0.5, -2 ** -0.5
    return v


def plant(shared: bool):
    """One layer. Head 0.0 attends from END to the adjective and writes its identity (m_w); MLP 0 maps
    m_w to the opposite's unembedding direction. Shared: each neuron fires on the identity alone.
    Coincident: a word's neuron also needs its own task's END token, so the head's output means
    something only to the task it came from."""
    words = [w for t in PAIRS for p in PAIRS[t] for w in p]
    task_of = {w: t for t in PAIRS for p in PAIRS[t] for w in p}
    opposite = {w: o for t in PAIRS for a, b in PAIRS[t] for w, o in ((a, b), (b, a))}
    const, adj, ctx = feature(0), feature(1), {"left": feature(2), "right": feature(3)}
    ident = {w: feature(4 + i) for i, w in enumerate(words)}
    moved = {w: feature(4 + len(words) + i) for i, w in enumerate(words)}
    out = {w: feature(4 + 2 * len(words) + i) for i, w in enumerate(words)}
    tok = models.gpt2_tokenizer()
    tid = lambda s: tok.encode(s)[0]  # noqa: E731

    def edit(net):
        for p in net.parameters():
            p.zero_()
        tf = net.transformer
        for ln in (tf.h[0].ln_1, tf.h[0].ln_2, tf.ln_f):
            ln.weight.fill_(C / D ** 0.5)  # LayerNorm(x) = x for a residual dominated by C * const
        tf.wpe.weight[:] = C * const
        for w in words:
            tf.wte.weight[tid(f" {w}")] = adj + ident[w] + out[w]  # tied: also its unembedding (out[w])
        for t, s in END_TOKEN.items():
            tf.wte.weight[tid(s)] = ctx[t]
        attn, mlp, dh = tf.h[0].attn, tf.h[0].mlp, D // 2
        attn.c_attn.bias[0] = 20.0  # head 0's query: a constant
        attn.c_attn.weight[:, D] = 8.0 * adj  # its key: 20 * 8 / sqrt(64) = 20 on the adjective, 0 elsewhere
        for j, w in enumerate(words):
            attn.c_attn.weight[:, 2 * D + j] = ident[w]  # value j: the word's identity
            attn.c_proj.weight[j] = moved[w]  # written to the residual as m_w
            mlp.c_fc.weight[:, j] = 4 * moved[w] + (0 if shared else 4 * ctx[task_of[w]])
            mlp.c_fc.bias[j] = -2.0 if shared else -6.0
            mlp.c_proj.weight[j] = 5 * out[opposite[w]]
        assert dh >= len(words)
    return edit


@pytest.fixture(scope="module", params=[True, False], ids=["shared", "coincident"])
def planted(request, tmp_path_factory):
    path = models.build_gpt2(tmp_path_factory.mktemp("planted") / "model", 1, 2, D, seed=0, edit=plant(request.param))
    return request.param, models.load("toy", path, "cpu")


def measure(model) -> dict:
    prompts = {t: rows_of(t) for t in PAIRS}
    return {t: transfer.transfer_into(model, prompts[t], prompts, {t: "ADJ1" for t in PAIRS},
                                      {t: "opposite" for t in PAIRS}, TEMPLATES, ["0.0"], 16, seed=0)
            for t in PAIRS}


def test_the_planted_model_does_both_tasks(planted):
    _, model = planted
    for t in PAIRS:
        rows = rows_of(t)
        logits = model(model.to_tokens([r["clean"] for r in rows]))[:, -1]
        assert [model.to_string(i) for i in logits.argmax(-1)] == [r["answer"] for r in rows]


def test_transfer_tells_a_shared_head_from_a_coincident_one(planted):
    shared, model = planted
    res = measure(model)
    verdict = pair_transfer(res, "left", "right", ["0.0"])
    head = next(r for r in verdict["rows"] if r["component"] == "0.0")
    # within each task the head carries the source word in both models
    assert head["within_a"]["iia"] == 1 and head["within_b"]["iia"] == 1
    if shared:  # the other task's head output gives the opposite of its word
        assert head["a_to_b"]["iia"] == 1 and head["b_to_a"]["iia"] == 1
        assert head["verdict"] == "transfers" and verdict["transfers"] and verdict["transferring"] == ["0.0"]
    else:  # read only in its own context: the other task's output gives nothing of the sort
        assert head["a_to_b"]["iia"] == 0 and head["b_to_a"]["iia"] == 0
        assert head["verdict"] == "does not transfer" and verdict["failing"] == ["0.0"]
    n = len(rows_of("right"))
    assert head["a_to_b"]["n"] == n  # every base prompt found a source prompt


def test_words_without_an_answer_under_the_other_task_are_not_measurable(planted):
    _, model = planted
    prompts = {t: rows_of(t) for t in PAIRS}
    res = transfer.transfer_into(model, prompts["right"], prompts, {t: "ADJ1" for t in PAIRS},
                                 {"left": "size", "right": "temperature"}, TEMPLATES, ["0.0"], 16, seed=0)
    left = next(s for s in res["sources"] if s["source"] == "left")
    assert "locations" not in left and "no answer under right's task" in left["not_measurable"]
    own = next(s for s in res["sources"] if s["source"] == "right")
    assert own["locations"][0]["iia"] == 1  # the diagonal is still measured


def test_pairs_follow_the_source_word_and_never_repeat_the_base_answer():
    prompts = {t: rows_of(t) for t in PAIRS}
    pairs = transfer.make_pairs(prompts["right"], prompts["left"], "ADJ1", "ADJ1", True, seed=0)
    assert pairs == transfer.make_pairs(prompts["right"], prompts["left"], "ADJ1", "ADJ1", True, seed=0)  # seeded
    for base, source, expected in pairs:
        assert expected == source["answer"] != base["answer"]
    # a source word that is also a base word takes the base task's answer for it
    both = {"ADJ1": "tall"}
    base_map = {"tall": " low"}
    assert transfer.expected_answer(both["ADJ1"], base_map, {"tall": " short"}, same_family=True) == " low"
    assert transfer.expected_answer("tall", {}, {"tall": " short"}, same_family=False) is None


@pytest.mark.parametrize("within,cross,expected", [
    ((60, 64), (60, 64), "transfers"), ((60, 64), (2, 64), "does not transfer"),
    ((60, 64), (36, 64), "inconclusive"), ((5, 64), (2, 64), "carries the source word in neither task")])
def test_component_verdicts(within, cross, expected):
    from opposites.stats import wilson

    entry = lambda k, n: {"iia": k / n, "iia_ci95": list(wilson(k, n)), "n": n}  # noqa: E731
    assert component_verdict(entry(*within), entry(*within), entry(*cross), entry(*cross)) == expected
    assert component_verdict(entry(60, 64), entry(5, 64), entry(*cross), entry(*cross)) == \
        "carries the source word in one task only"


def test_sharing_is_claimed_only_where_overlap_transfer_and_replication_agree():
    from opposites.sharing import pair_verdicts

    full = {"iia": 1.0, "iia_ci95": [0.9, 1.0], "n": 24}
    res = {t: {"sources": [{"source": s, "locations": [{"component": "0.0", **full}]} for s in PAIRS]} for t in PAIRS}
    pair = {"a": "left", "b": "right", "heads_jaccard": 1.0, "edges_jaccard": 1.0,
            "heads_jaccard_null": [0.1, 0.3, 0.6], "heads_jaccard_percentile": 99.0}
    shared = {("left", "right"): ["0.0"]}
    seeds = {s: {"heads": ["0.0"], "components": ["0.0"]} for s in ("0", "1", "2")}
    replicated = {t: {"measured": True, "n_seeds": 3, "seeds": seeds, "replicated": ["0.0"], "beyond_chance": ["0.0"]}
                  for t in PAIRS}
    assert pair_verdicts([pair], res, shared, replicated)[0]["claim"]
    by_default = {t: {**r, "beyond_chance": []} for t, r in replicated.items()}  # recurs, but as composition gives
    got = pair_verdicts([pair], res, shared, by_default)[0]
    assert not got["claim"] and got["replication"]["by_default"] == ["0.0"]
    assert not pair_verdicts([pair], res, shared, None)[0]["claim"]  # one model: replication not measured
    assert pair_verdicts([pair], res, shared, replicated)[0]["replication"]["heads_jaccard"]["mean"] == 1
    lost = {**replicated, "right": {**replicated["right"], "replicated": [], "beyond_chance": []}}  # not in every seed's circuit
    assert not pair_verdicts([pair], res, shared, lost)[0]["claim"]
    chance = {**pair, "heads_jaccard_percentile": 60.0}
    assert not pair_verdicts([chance], res, shared, replicated)[0]["claim"]
    fixed = {**pair, "heads_jaccard_null": [1.0, 1.0, 1.0], "edges_jaccard_null": [0.5, 0.5, 0.5]}
    assert pair_verdicts([fixed], res, shared, replicated)[0]["overlap"] == "not measurable"
    capped = {**pair, "heads_jaccard_reachable": 90.0}  # even the largest overlap would not reach 97.5
    assert pair_verdicts([capped], res, shared, replicated)[0]["overlap"] == "not testable"
    # the verdict Table 4 prints: yes, no where a test ran and fails, not testable where none failed
    assert pair_verdicts([pair], res, shared, replicated)[0]["verdict"] == "yes"
    assert pair_verdicts([chance], res, shared, replicated)[0]["verdict"] == "no"
    assert pair_verdicts([capped], res, shared, replicated)[0]["verdict"] == "not testable"
    untestable = {t: {**r, "testable": False} for t, r in lost.items()}  # replication cannot be tested on this model
    assert pair_verdicts([capped], res, shared, untestable)[0]["verdict"] == "not testable"
    assert pair_verdicts([capped], res, shared, lost)[0]["verdict"] == "no"  # replication tested: not in every seed
    assert not pair_verdicts([capped], res, shared, replicated)[0]["claim"]
    assert np.isfinite(pair["heads_jaccard_percentile"])


def test_an_overlap_null_that_cannot_reach_the_threshold_is_not_testable():
    """Two circuits of 4 and 5 heads out of 5: every random pair shares 4 heads, Jaccard 0.8, the
    largest two sets of these sizes can have, so no observation can beat the null; with heads to
    spare the largest overlap is above the null's range."""
    from opposites.overlap import null_overlap, percentile_in
    from opposites.sharing import overlap_support

    assert percentile_in(np.array([0.2, 0.4, 0.4, 0.8]), 0.4) == 50.0  # ties count half
    heads = [f"0.{h}" for h in range(5)]
    graph = [("embed", f"{h}.q") for h in heads] + [(h, "logits") for h in heads]
    small = {(h, "logits") for h in heads[:4]}
    full = {(h, "logits") for h in heads}
    cramped = null_overlap(small, full, graph, draws=200, seed=0)
    assert cramped["heads_jaccard_reachable"] < 97.5
    pair = {**cramped, "heads_jaccard_null": [0.6, 0.8, 0.9]}  # as if the null had freedom
    assert overlap_support(pair) == "not testable"
    wide = [("embed", f"0.{h}.q") for h in range(16)] + [(f"0.{h}", "logits") for h in range(16)]
    spare = null_overlap({("0.0", "logits"), ("0.1", "logits")}, {("0.0", "logits"), ("0.2", "logits")}, wide, draws=200, seed=0)
    assert spare["heads_jaccard_reachable"] > 97.5


def test_replication_keeps_only_components_in_every_seed():
    """Components in every seed's circuit are replicated; of those, beyond chance only where a
    random head of the same layer would be in every circuit with probability below ALPHA given how
    many heads of that layer each circuit holds (never an MLP: every circuit holding it is the event)."""
    from types import SimpleNamespace

    from opposites.analyses.replication import replication

    def circuit(nodes, n_edges, recovered):
        return {"nodes": ["embed", *nodes, "logits"], "n_edges": n_edges, "recovered": recovered}
    rows = [{"task": "size"}]
    model = lambda heads: SimpleNamespace(cfg=SimpleNamespace(n_heads=heads))  # noqa: E731
    paper, others = circuit(["0.0", "0.1", "MLP 0"], 10, 0.8), {1: circuit(["0.0", "MLP 0"], 6, 0.9),
                                                                 2: circuit(["0.1", "0.0", "MLP 0", "MLP 1"], 14, 0.85)}
    res = replication(model(4), rows, 1, 0, paper, others)
    assert res["measured"] and res["n_seeds"] == 3 and list(res["seeds"]) == ["0", "1", "2"]
    assert res["replicated"] == ["0.0", "MLP 0"]  # 0.1 is missing in seed 1
    # the paper's circuit chose 0.0: only the other seeds' circuits are draws (1 and 2 of 4 heads)
    assert res["chance"] == {"0.0": (1 / 4) * (2 / 4), "MLP 0": 1.0} and res["beyond_chance"] == []
    assert not res["testable"]  # 4 heads, 2 other seeds: even one head alone per layer recurs with chance 1/16
    wide = replication(model(12), rows, 1, 0, paper, others)  # 1 and 2 of 12 heads: chance 1/72
    assert wide["beyond_chance"] == ["0.0"] and wide["testable"]
    assert res["n_edges"] == {"mean": 10.0, "min": 6.0, "max": 14.0}
    assert res["n_heads"]["max"] == 2 and res["n_heads"]["min"] == 1
    one = replication(model(4), rows, 1, 0, circuit(["0.0"], 3, 0.8), {})
    assert not one["measured"] and one["n_seeds"] == 1  # one model: no seed axis


def test_seeds_train_different_models(tokenizer):
    from opposites import training

    hp = training.hyperparameters({"n_layer": 1, "n_embd": 32, "steps": 2, "batch_size": 8})
    a, b = (training.build(hp, seed=s).state_dict() for s in (0, 1))
    assert not all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.workflow
def test_trained_build_plans_one_model_and_circuits_per_extra_seed(workdir):
    """model=trained with config.yaml's trained_seeds and seed: one more model per other seed, each
    task's circuits on each, one replication job per task reading them; toy has no seed axis."""
    import yaml
    from conftest import TOY, snakemake
    from test_workflow import jobs

    config = yaml.safe_load((workdir / "config.yaml").read_text())
    extra = len(set(config["trained_seeds"]) - {config["seed"]})
    assert extra >= 2  # the default: three seeds in all
    planned = jobs(snakemake(workdir, "-n", "paper", "--config", "model=trained"))
    assert planned["train_model"] == 1 and planned["train_seed"] == extra and planned["seed_circuits"] == extra * 4
    assert all(planned[f"replication_{t}"] == 1 for t in ("ioi", "size", "antonym", "isa"))
    toy = jobs(snakemake(workdir, "-n", "paper", *TOY))
    assert "train_seed" not in toy and "seed_circuits" not in toy and toy["replication_size"] == 1


def test_prompt_overlap_names_what_size_and_antonym_share_by_construction(rows):
    from opposites.prompts import load_spec
    from opposites.sharing import prompt_overlap

    o = prompt_overlap("size", "antonym", rows)
    size, antonym = load_spec("size"), load_spec("antonym")
    assert o["templates"] == sorted(set(size["templates"]) & set(antonym["templates"])) and len(o["templates"]) >= 1
    assert o["n_templates"] == [len(size["templates"]), len(antonym["templates"])]
    assert set(o["names"]) == set(size["names"]) & set(antonym["names"])
    assert o["source_words"] == []  # the two tasks' adjectives are disjoint
    assert prompt_overlap("ioi", "isa", rows)["templates"] == []


def test_transfer_measures_only_components_another_circuit_shares():
    """A component only one circuit holds is never read across tasks, so it is not measured."""
    circuit = {"a": {"nodes": ["embed", "0.1", "MLP 0", "1.2", "logits"]},
               "b": {"nodes": ["embed", "0.1", "1.3", "MLP 0", "logits"]},
               "c": {"nodes": ["embed", "1.2", "logits"]}}
    assert transfer.shared_components("a", circuit) == ["0.1", "MLP 0", "1.2"]
    assert transfer.shared_components("b", circuit) == ["0.1", "MLP 0"]
    assert transfer.shared_components("c", circuit) == ["1.2"]


def test_a_pair_that_transfers_barely_at_one_of_many_locations_fails_holm():
    """Each location's own interval is a 95% one; a pair tested at many locations is corrected over
    them (Holm): one location just clearing CARRIES among twelve tested no longer transfers, while
    the same location tested alone does, and a clear transfer survives the correction."""
    from opposites.stats import wilson

    def result(components: list[str], cross: dict[str, tuple[int, int]]) -> dict:
        entry = lambda k, n: {"iia": k / n, "iia_ci95": list(wilson(k, n)), "n": n}  # noqa: E731
        return {t: {"sources": [{"source": s, "locations": [
            {"component": c, **entry(*((60, 64) if s == t else cross.get(c, (10, 64))))} for c in components]}
            for s in PAIRS]} for t in PAIRS}

    many = [f"0.{i}" for i in range(12)]
    barely = 41  # 41/64: Wilson's lower bound 0.52, one-sided p 0.012
    assert wilson(barely, 64)[0] > 0.5
    alone = pair_transfer(result(["0.0"], {"0.0": (barely, 64)}), "left", "right", ["0.0"])
    assert alone["transferring"] == ["0.0"]
    crowd = pair_transfer(result(many, {"0.0": (barely, 64)}), "left", "right", many)
    row = next(r for r in crowd["rows"] if r["component"] == "0.0")
    assert row["verdict"] == "inconclusive after Holm" and not crowd["transferring"]
    clear = pair_transfer(result(many, {"0.0": (62, 64)}), "left", "right", many)
    assert clear["transferring"] == ["0.0"]


def test_the_primary_residual_point_gates_the_other_locations():
    """The earliest residual point carrying the word within both tasks is tested alone at ALPHA;
    the components are tested (Holm among themselves) only when it transfers."""
    from opposites.stats import wilson

    def result(cross: dict[str, tuple[int, int]]) -> dict:
        entry = lambda k, n: {"iia": k / n, "iia_ci95": list(wilson(k, n)), "n": n}  # noqa: E731
        where = ["0.0", "0.1", "resid after 0", "resid after 1"]
        return {t: {"sources": [{"source": s, "locations": [
            {"component": c, **entry(*((60, 64) if s == t else cross[c]))} for c in where]} for s in PAIRS]} for t in PAIRS}

    clear = {"0.0": (62, 64), "0.1": (40, 64), "resid after 0": (41, 64), "resid after 1": (30, 64)}
    got = pair_transfer(result(clear), "left", "right", ["0.0", "0.1"])
    assert got["located"]["component"] == "resid after 0" and got["located"]["verdict"] == "transfers"  # p 0.012, alone
    assert got["transferring"] == ["0.0"]  # 0.1 (p 0.023) fails Holm among 0.0, 0.1 and resid after 1 (0.025 / 2)
    assert next(r for r in got["rows"] if r["component"] == "0.1")["verdict"] == "inconclusive after Holm"
    closed = pair_transfer(result({**clear, "resid after 0": (30, 64)}), "left", "right", ["0.0", "0.1"])
    assert not closed["transfers"] and closed["transferring"] == []
    assert next(r for r in closed["rows"] if r["component"] == "0.0")["verdict"].startswith("not tested")
