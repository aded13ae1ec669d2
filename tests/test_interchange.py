"""Interchange interventions and DAS (issue 31): the hook runner against independent computations
(float64 toy model), the located points on the trained model, and DAS recovering a planted direction."""

import pytest
import torch

from opposites import models, stats
from opposites.analyses import das, interchange
from opposites.interventions import Intervention, interchange as swap, resid_post, resid_pre, role_positions, run
from opposites.prompts import make_prompts

SEED = 0


@pytest.fixture(scope="module")
def pair(toy64):
    """Base and source prompts of the size task, paired as the analysis pairs them, one template."""
    rows = make_prompts("size", toy64.tokenizer, 24, seed=SEED, min_prompts=8)[0]
    pairs = interchange.make_pairs(rows, "ADJ1", SEED)
    pairs = [p for p in pairs if p[0]["template"] == pairs[0][0]["template"]]
    base, source = [b for b, _ in pairs], [s for _, s in pairs]
    return base, source, toy64.to_tokens([r["clean"] for r in base]), toy64.to_tokens([r["clean"] for r in source])


def last_logits(model, tokens):
    return model(tokens)[:, -1]


def test_full_residual_before_layer_0_is_the_source_run(toy64, pair):
    _, _, base, source = pair
    got = run(toy64, base, source, [Intervention("blocks.0.hook_resid_pre", "ALL")])
    assert torch.allclose(got, last_logits(toy64, source), atol=1e-10, rtol=0)
    assert not torch.allclose(got, last_logits(toy64, base), atol=1e-3)


def test_no_intervention_is_the_base_run(toy64, pair):
    _, _, base, source = pair
    assert torch.allclose(run(toy64, base, source, []), last_logits(toy64, base), atol=1e-10, rtol=0)


def test_role_position_is_that_prompt_s_token(toy64, pair):
    """The residual before layer 0 at ADJ1 from the source = the base prompt with its ADJ1 token
    replaced by the source's (positions resolved per prompt from row["positions"])."""
    rows, _, base, source = pair
    at = role_positions(rows, 'cpu')["ADJ1"]
    edited = base.clone()
    edited[torch.arange(len(base)), at] = source[torch.arange(len(base)), at]
    got = run(toy64, base, source, [resid_pre(0, "ADJ1")], role_positions(rows, 'cpu'))
    assert torch.allclose(got, last_logits(toy64, edited), atol=1e-10, rtol=0)


@pytest.mark.parametrize("make", [lambda B: resid_post(1, "END", B), lambda B: resid_pre(2, "ADJ1", B)])
def test_full_width_subspace_is_the_full_interchange(toy64, pair, make):
    rows, _, base, source = pair
    d = toy64.cfg.d_model
    basis = torch.linalg.qr(torch.randn(d, d, generator=torch.Generator().manual_seed(0), dtype=torch.float64))[0]
    full = run(toy64, base, source, [make(None)], role_positions(rows, 'cpu'))
    assert torch.allclose(run(toy64, base, source, [make(basis)], role_positions(rows, 'cpu')), full, atol=1e-9, rtol=0)
    effect = (full - last_logits(toy64, base)).abs().max()  # of the full interchange
    partial = run(toy64, base, source, [make(basis[:, :2])], role_positions(rows, 'cpu'))
    assert effect > 1e-4 and (partial - full).abs().max() > 0.1 * effect


def test_end_interventions_against_transformer_lens_patching(toy64, pair):
    """Each head's z, each MLP's output and the residual before each layer at END, from the source:
    the same logits as TransformerLens's own activation-patching reference (every position; it
    stores its results in float32, hence the relative tolerance)."""
    import transformer_lens.patching as tlp

    from opposites.interventions import head_z, mlp_out

    _, _, base, source = pair
    token = int(source[0, 1])  # any token's logit will do
    metric = lambda logits: logits[:, -1, token].sum()  # noqa: E731
    _, cache = toy64.run_with_cache(source)
    L, H = toy64.cfg.n_layers, toy64.cfg.n_heads
    ours = lambda ivs: torch.tensor([run(toy64, base, source, [iv])[:, token].sum() for iv in ivs],  # noqa: E731
                                    dtype=torch.float64)
    heads = tlp.get_act_patch_attn_head_out_by_pos(toy64, base, cache, metric)[:, -1]  # (layer, head)
    torch.testing.assert_close(ours([head_z(l, h) for l in range(L) for h in range(H)]).view(L, H), heads.double(),
                               atol=1e-8, rtol=1e-6)
    mlps = tlp.get_act_patch_mlp_out(toy64, base, cache, metric)[:, -1]
    torch.testing.assert_close(ours([mlp_out(l) for l in range(L)]), mlps.double(), atol=1e-8, rtol=1e-6)
    resid = tlp.get_act_patch_resid_pre(toy64, base, cache, metric)[:, -1]
    torch.testing.assert_close(ours([resid_pre(l) for l in range(L)]), resid.double(), atol=1e-8, rtol=1e-6)


def test_pairs_have_a_different_source_word_and_answer(tokenizer):
    for task, role in (("size", "ADJ1"), ("ioi", "IO"), ("isa", "ENTITY")):
        rows = make_prompts(task, tokenizer, 24, seed=SEED, min_prompts=8)[0]
        pairs = interchange.make_pairs(rows, role, SEED)
        assert len(pairs) >= len(rows) // 2
        assert pairs == interchange.make_pairs(rows, role, SEED)  # seeded
        for b, s in pairs:
            assert b["template"] == s["template"] and b["positions"] == s["positions"]
            assert b["words"][role] != s["words"][role] and b["answer"] != s["answer"]
            assert s["answer"].strip() not in b["words"].values()
        train, test = das.split_by_word(pairs, role, SEED)
        assert train and test and len(train) + len(test) == len(pairs)
        seen = {w for _, s in train for w in (s["words"][role], s["answer"].strip())}
        assert not seen & {s["answer"].strip() for _, s in test}  # held-out answers never trained on


def test_wilson():
    """Published values: 0/10 -> [0, 0.2775]; 64/64 -> [0.9434, 1]; symmetric in k <-> n - k."""
    assert list(stats.wilson(0, 10)) == pytest.approx([0.0, 0.2775], abs=1e-4)
    assert list(stats.wilson(64, 64)) == pytest.approx([0.9434, 1.0], abs=1e-4)
    assert all(stats.wilson(0, n)[0] == 0 and stats.wilson(n, n)[1] == 1 for n in range(1, 100))
    low, high = stats.wilson(20, 64)
    assert [1 - high, 1 - low] == pytest.approx(list(stats.wilson(44, 64)))


def test_paired_difference_resamples_word_clusters():
    """DAS minus full, per pair: the mean difference; identical hits give exactly 0; with two clusters
    of four pairs, one holding the differences, a resample's mean can only be 0, -1/4 or -1/2
    (probabilities 1/4, 1/2, 1/4), so the clustered 95% interval is exactly [-1/2, 0]; resampling
    pairs instead gives another. The reported interval (ci95) also holds Newcombe's paired interval,
    which does not collapse where the bootstrap's does."""
    a = torch.tensor([1, 1, 1, 1, 0, 1, 0, 1.0])
    b = torch.tensor([1, 1, 1, 1, 1, 1, 1, 1.0])
    two = ["x"] * 4 + ["y"] * 4
    same = das.paired(a, a, two, SEED)
    assert (same["value"], same["bootstrap95"], same["p_value"]) == (0.0, [0.0, 0.0], 1.0)
    assert same["ci95"][0] < 0 < same["ci95"][1]  # 8 pairs from 2 words: no interval of width 0
    by_cluster, by_pair = das.paired(a, b, two, SEED), das.paired(a, b, [str(i) for i in range(8)], SEED)
    assert by_cluster["value"] == pytest.approx(-0.25) == by_pair["value"]
    assert by_cluster["bootstrap95"] == [-0.5, 0.0] != by_pair["bootstrap95"]
    for got in (same, by_cluster, by_pair):
        assert got["ci95"][0] <= min(got["bootstrap95"][0], got["newcombe95"][0])
        assert got["ci95"][1] >= max(got["bootstrap95"][1], got["newcombe95"][1])
    assert das.iia(a, two, SEED)["n_clusters"] == 2 and das.iia(a, two, SEED)["iia"] == 0.75


def test_das_recovers_a_planted_direction():
    """A readout that depends on the residual only through its projection on u, with a distractor
    direction w that differs as much between base and source: DAS with k = 1 finds u."""
    g = torch.Generator().manual_seed(1)
    d, n = 16, 256
    u, w = torch.linalg.qr(torch.randn(d, 2, generator=g))[0].T
    h_base, h_source = torch.randn(n, d, generator=g), torch.randn(n, d, generator=g)

    def readout(h):  # (n, d) -> (n, 2) logits: class 0 when u.h > 0; w shifts both logits alike
        return 4 * torch.stack([h @ u, -(h @ u)], -1) + (h @ w)[:, None]

    target = (h_source @ u < 0).long()  # the source's class
    one, two = das.fit_subspaces(lambda bases: torch.stack([readout(swap(h_base, h_source, B)) for B in bases]),
                                 target, d, (1, 2), seed=0)
    assert two.shape == (d, 2) and torch.allclose(two.T @ two, torch.eye(2), atol=1e-5)
    assert (two.T @ u).norm() >= 0.9  # u lies in the k = 2 subspace too
    basis = one
    assert abs(float(basis[:, 0] @ u)) >= 0.9
    assert abs(float(basis[:, 0] @ w)) < 0.3
    hit = (readout(swap(h_base, h_source, basis)).argmax(-1) == target).double().mean()
    assert hit >= 0.9


def test_sweep_covers_what_patching_names_and_matches_the_full_grid(toy64):
    """The limited sweep: the TOP_HEADS heads and TOP_MLPS MLPs with the largest |patching effect|
    (found here with plain sorting), the residual after their layers and before layer 0; each of its
    rows equals the full grid's row at the same location."""
    rows = make_prompts("size", toy64.tokenizer, 24, seed=SEED, min_prompts=8)[0]
    patched = patching_results(toy64, rows)
    limited = interchange.interchange(toy64, rows, 32, SEED, **patched)
    full = interchange.interchange(toy64, rows, 32, SEED)
    z = patched["patch_heads"].query("activation == 'z'")
    z = z.iloc[z.value.abs().argsort(kind="stable")[::-1]][:interchange.TOP_HEADS]
    mlp = patched["patch_layers"].query("component == 'mlp' and role == 'END'")
    mlp = mlp.iloc[mlp.value.abs().argsort(kind="stable")[::-1]][:interchange.TOP_MLPS]
    got = limited["locations"]
    assert {(r["layer"], r["head"]) for r in got if r["kind"] == "z"} == set(zip(z.layer, z["head"]))
    assert {r["layer"] for r in got if r["kind"] == "mlp_out"} == set(mlp.layer)
    assert {r["layer"] for r in got if r["kind"] == "attn_out"} == set(z.layer)  # the named heads' layers, jointly
    layers = set(z.layer) | set(mlp.layer)
    assert {(r["layer"], r["position"]) for r in got if r["kind"] == "resid_post"} == \
        {(l, p) for l in layers for p in ("ADJ1", "END")}
    assert len(got) < len(full["locations"])
    by_site = {(r["site"], r["head"], r["position"]): r for r in full["locations"]}
    for r in got:
        assert r == by_site[(r["site"], r["head"], r["position"])]


# ---- the trained model --------------------------------------------------------------------------

@pytest.fixture(scope="module")
def trained(trained_dir):
    return models.load("trained", trained_dir, "cpu")


def patching_results(model, rows):
    """patch_heads and patch_layers as the pipeline computes them (config.yaml's direction)."""
    from opposites.analyses import patching

    return {"patch_heads": patching.patch_heads(model, rows, 32, "denoising", SEED),
            "patch_layers": patching.patch_layers(model, rows, 32, "denoising", SEED)}


@pytest.fixture(scope="module")
def located(trained):
    """The sweep (over the locations patching names, as the pipeline runs it) and DAS for the two
    opposite tasks."""
    out = {}
    for task in ("size", "antonym"):
        rows = make_prompts(task, trained.tokenizer, 64, seed=SEED, min_prompts=8)[0]
        sweep = interchange.interchange(trained, rows, 32, SEED, **patching_results(trained, rows))
        out[task] = (sweep, das.das(trained, rows, 32, SEED, interchange=sweep))
    return out


@pytest.mark.parametrize("task", ["size", "antonym"])
def test_end_carries_the_source_value_after_the_movers(located, task):
    """Located by the sweep: after some layer the END residual carries the source's value, and at
    that point the source word's own position no longer does (the movers have read it)."""
    sweep, _ = located[task]
    best, same_site = sweep["best_end"], sweep["role_at_best_end"]
    assert best["iia"] >= 0.9, best
    assert same_site["iia"] <= 0.2, same_site
    before = next(r for r in sweep["locations"] if r["site"] == "blocks.0.hook_resid_pre" and r["position"] == "END")
    assert before["iia"] <= 0.2  # END's own token is the same in base and source


@pytest.mark.parametrize("task", ["size", "antonym"])
def test_das_finds_a_small_subspace_random_ones_do_not(located, task):
    _, result = located[task]
    end = result["locations"][0]
    good = [k for k in end["k"] if k["iia"] >= 0.8]
    assert good, end["k"]
    assert all(k["random_iia_mean"] <= 0.2 for k in good), good


@pytest.mark.parametrize("task", ["size", "antonym"])
def test_das_at_the_source_word_after_that_layer_stays_at_chance(located, task):
    """The baseline: the same DAS at the source word's position after the located layer (where the
    full interchange no longer transfers the answer) stays near chance at the largest k, which bounds
    every smaller one (the only k run there); the number of candidate answers the readout chooses
    among is reported beside k."""
    sweep, result = located[task]
    source = next(loc for loc in result["locations"] if loc["point"] == "source")
    end = next(loc for loc in result["locations"] if loc["point"] == "end")
    assert (source["site"], source["position"]) == (sweep["best_end"]["site"], sweep["role"])
    assert [k["k"] for k in source["k"]] == [end["k"][-1]["k"]]
    assert all(k["iia"] <= 0.2 for k in source["k"]), source["k"]
    assert result["n_candidates"] >= len(set(result["train_answers"]) | set(result["test_answers"]))


def test_table_and_prose_facts_follow_the_intervals(located):
    """What the paper may claim is read off the intervals: on the trained model END carries the
    value, the source word's position has lost it, and where the held-out pairs come from enough
    words to test (derived.MIN_CLUSTERS) and enough pairs for a perfect match to pass, the claimed k
    is not distinguishable from the full interchange; otherwise no k is claimed; a result whose
    intervals do not support it makes no such claim."""
    from opposites.derived import MIN_CLUSTERS
    from opposites.findings import EQUIVALENCE_MARGIN, interchange_facts
    from opposites.tables import interchange as table

    data = {"interchange": {t: located[t][0] for t in located}, "das": {t: located[t][1] for t in located}}
    for task in located:
        facts = interchange_facts(data, task)
        reachable = facts["das"]["full"]["perfect_match95"][0] >= -EQUIVALENCE_MARGIN  # a perfect match could pass
        testable = facts["das"]["k"][0]["n_clusters"] >= MIN_CLUSTERS and reachable
        assert facts["end_carries"] and facts["role_left"] and facts["das_testable"] == testable
        supported = [k for k in facts["das"]["k"] if k["iia_ci95"][0] > k["random_iia_max"]
                     and k["minus_full"]["ci95"][0] >= -EQUIVALENCE_MARGIN]  # within the margin of the whole vector
        assert facts["das_k"] == (supported[0] if supported and testable else None), (task, facts["das_k"])
    assert table(data, list(located)).count(located["size"][0]["best_end"]["label"].replace("layer ", "layer~")) >= 1
    # the table flags exactly the rows the text makes no DAS claim for (one test, findings.interchange_facts)
    assert table(data, list(located)).count("not testable") == sum(not interchange_facts(data, t)["das_testable"] for t in located)
    for task in located:  # the DAS cell states the verdict, then the largest k the figure shows last
        facts = interchange_facts(data, task)
        cell = next(line for line in table(data, [task]).splitlines() if line.startswith(task)).split(" & ")[7]
        verdict = f"$k = {facts['das_k']['k']}$" if facts["das_k"] else ("not testable" if not facts["das_testable"] else "no $k$")
        assert cell.startswith(verdict) and f"$k = {facts['das']['k'][-1]['k']}$:" in cell, (task, cell)
    weak = {**located["size"][0], "best_end": {**located["size"][0]["best_end"], "iia": 0.5, "iia_ci95": [0.38, 0.62]}}
    facts = interchange_facts({"interchange": {"size": weak}, "das": {"size": located["size"][1]}}, "size")
    assert not facts["end_carries"]  # an interval reaching 1/2: no claim that END carries the value


def test_das_figure_draws_every_k_and_says_which_tasks_are_testable(located):
    """Figure das_curve: per task one held-out IIA point per k (with its interval), the training and
    random curves beside it, and a title that says "not testable" exactly where the table does."""
    import matplotlib.pyplot as plt

    from opposites.figures.mechanism import das_curve
    from opposites.findings import interchange_facts

    data = {"interchange": {t: located[t][0] for t in located}, "das": {t: located[t][1] for t in located}}
    fig = das_curve(data, list(located))
    for ax, task in zip(fig.axes, located):
        facts = interchange_facts(data, task)
        ks = [k["k"] for k in facts["das"]["k"]]
        held = next(c for c in ax.containers if c.get_label() == "DAS, held out").lines[0]  # the errorbar's data line
        assert list(held.get_xdata()) == ks and list(held.get_ydata()) == [k["iia"] for k in facts["das"]["k"]]
        assert ("not testable" in ax.get_title()) == (not facts["das_testable"]), ax.get_title()
    plt.close(fig)


def test_das_stops_when_the_loss_stops_falling():
    """fit_subspaces's early stop: a readout the basis cannot change (flat loss) stops at the first
    check; the planted problem, whose loss falls, trains past it."""
    g = torch.Generator().manual_seed(2)
    d, n = 16, 64
    target = torch.randint(0, 2, (n,), generator=g)
    fixed = torch.randn(n, 2, generator=g)
    flat = []
    das.fit_subspaces(lambda bases: torch.stack([fixed + 0 * B.sum() for B in bases]), target, d, (1, 2), seed=0, trace=flat)
    assert len(flat) == das.CHECK + 1 < das.STEPS
    h_base, h_source = torch.randn(n, d, generator=g), torch.randn(n, d, generator=g)
    u = torch.linalg.qr(torch.randn(d, 1, generator=g))[0][:, 0]
    falling = []
    das.fit_subspaces(lambda bases: torch.stack([4 * torch.stack([x @ u, -(x @ u)], -1) for x in
                                                 (swap(h_base, h_source, B) for B in bases)]),
                      (h_source @ u < 0).long(), d, (1,), seed=0, trace=falling)
    assert len(falling) > 3 * das.CHECK and falling[-1] < 0.5 * falling[0]


def test_das_step_cap_binds_on_gpt2_size_only():
    """max_steps: the compute cap leaves the trained model's shape (d_model 128, 4 layers) its full
    STEPS even at the source word, where a step recomputes several positions; gives GPT-2 small's
    shape (768, 12) fewer at END (one position, the layers after the first), and GPT-2 XL's
    (1600, 48) at the source word no more than CHECK."""
    from types import SimpleNamespace as Cfg

    at_end, at_word = 4 * 32 * 1, 4 * 32 * 6  # every k x training pairs x positions recomputed
    assert das.max_steps(Cfg(d_model=128, d_mlp=512, n_layers=4), 4, at_word) == das.STEPS
    assert das.CHECK < das.max_steps(Cfg(d_model=768, d_mlp=3072, n_layers=12), 11, at_end) < das.STEPS
    assert das.max_steps(Cfg(d_model=1600, d_mlp=6400, n_layers=48), 47, at_word) == das.CHECK


def test_das_is_claimed_only_within_the_equivalence_margin():
    """A subspace whose paired difference from the whole vector has an interval that merely reaches 0
    ([-0.2, 0.01]: absence of evidence) is not claimed; one whose interval lies above the margin is."""
    from opposites.findings import EQUIVALENCE_MARGIN, interchange_facts

    def data(low):
        point = {"site": "blocks.0.hook_resid_post", "position": "END", "label": "after layer 0", "layer": 0,
                 "iia": 1.0, "iia_ci95": [0.9, 1.0]}
        role = {**point, "position": "ADJ1", "iia": 0.0, "iia_ci95": [0.0, 0.1]}
        k = {"k": 2, "iia": 0.9, "iia_ci95": [0.8, 0.97], "random_iia_max": 0.1, "n_clusters": 8,
             "minus_full": {"value": -0.05, "ci95": [low, 0.01], "p_value": 0.3}}
        das_point = {"site": point["site"], "position": "END", "k": [k], "full": {"iia": 1.0}}
        return {"interchange": {"t": {"best_end": point, "role_at_best_end": role}},
                "das": {"t": {"locations": [das_point], "n_test": 30, "n_candidates": 12}}}

    assert interchange_facts(data(-0.2), "t")["das_k"] is None
    assert interchange_facts(data(-EQUIVALENCE_MARGIN / 2), "t")["das_k"]["k"] == 2
