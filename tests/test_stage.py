"""analyses.run_stage: the loop a stage job runs (order, in-memory hand-over, loads from other
stages, settings from the rule's params)."""

import pytest

from opposites import analyses


def test_run_stage_runs_in_order_and_hands_results_over(toy, rows):
    r = rows["size"]
    written, loaded = [], []

    def load(name):
        loaded.append(name)
        raise AssertionError("a result of the same stage must be handed over in memory")

    done = analyses.run_stage(["baseline", "logit_lens", "head_dla"], toy, r, 4, {"seed": 0}, load,
                              lambda name, result, seconds: written.append((name, seconds >= 0)), seed=0)
    assert [w[0] for w in written] == ["baseline", "logit_lens", "head_dla"] and all(w[1] for w in written)
    assert loaded == [] and set(done) == {"baseline", "logit_lens", "head_dla"}

    loads = []
    later = analyses.run_stage(["head_logit"], toy, r, 4, {}, lambda name: loads.append(name) or done[name],
                               lambda *a: None, seed=0)
    assert loads == ["head_dla"]  # required from another stage: read, not recomputed
    from opposites.analyses.heads import head_logit

    assert later["head_logit"].equals(head_logit(toy, r, 4, head_dla=done["head_dla"]))


def test_run_stage_passes_only_the_settings_an_analysis_reads(toy, rows, monkeypatch):
    import opposites.analyses.circuits as circuits

    seen = {}

    def fake(model, rows, batch_size, circuit_share, ig_steps, stability_resamples, acdc_max_edges, seed, edges=None):
        seen.update(circuit_share=circuit_share, seed=seed, edges=edges)
        return {}

    monkeypatch.setattr(circuits, "circuit", fake)
    settings = {"circuit_share": 0.7, "seed": 3, "ig_steps": 2, "stability_resamples": 0, "acdc_max_edges": 2000}
    analyses.run_stage(["circuit"], toy, rows["size"], 4, settings, lambda name: "EDGES", lambda *a: None, seed=0)
    assert seen == {"circuit_share": 0.7, "seed": 3, "edges": "EDGES"}
    config = {**settings, "patch_direction": "noising", "batch_size": 8}
    assert analyses.settings_of(["circuit", "neurons", "patch_heads"], config) == {
        "circuit_share": 0.7, "ig_steps": 2, "stability_resamples": 0, "acdc_max_edges": 2000, "seed": 3, "patch_direction": "noising"}
    with pytest.raises(KeyError):  # a setting the rule did not pass is an error, not a silent default
        analyses.run("circuit", None, rows["size"], 4, {}, {"edges": None})


def test_a_damaged_result_is_refused_naming_the_file_and_the_fix(tmp_path):
    """The result's provenance file records its checksum; truncating the result afterwards makes
    every read stop with one sentence, instead of a figure or the paper silently changing."""
    import pandas as pd

    from opposites.io import write_csv, write_json
    from opposites.provenance import meta

    result = tmp_path / "head_dla.csv"
    write_csv(pd.DataFrame({"layer": [0, 0, 1, 1], "head": [0, 1, 0, 1], "value": [0.1, 0.2, 0.3, 0.4]}), result)
    write_json(meta({"seed": 0}, 1.0, result=str(result)), tmp_path / "head_dla.meta.json")
    assert len(analyses.load_result(str(result))) == 4
    result.write_text("\n".join(result.read_text().splitlines()[:3]) + "\n")  # half the rows
    with pytest.raises(analyses.DamagedResult, match=r"head_dla.csv does not match the checksum in head_dla.meta.json .* delete"):
        analyses.load_result(str(result))


def test_a_patching_stage_prepares_each_prompts_runs_once(toy, rows, monkeypatch):
    """The patching analyses of one job share the prepared clean and corrupted runs of their prompts
    (results as if each prepared its own); other prompts (congruence's) get runs of their own."""
    from opposites.analyses import patching
    from opposites.patching import exact

    calls = []
    prepare = exact.prepare
    monkeypatch.setattr(exact, "prepare", lambda *a: calls.append(a[2].rows[0]["clean"]) or prepare(*a))
    r, other = rows["size"], rows["antonym"]
    settings = {"patch_direction": "denoising", "seed": 0}
    done = analyses.run_stage(["patch_resid", "patch_layers"], toy, r, 4, settings, None, lambda *a: None, seed=0)
    n_batches = len(calls)
    assert n_batches >= 1 and len({c for c in calls}) == n_batches  # each batch prepared once for both
    patching.patch_resid(toy, other, 4, "denoising", 0)
    assert len(calls) > n_batches  # new prompts: prepared anew
    for name in ("patch_resid", "patch_layers"):  # no job cache: each analysis on its own
        alone = analyses.run(name, toy, r, 4, settings, {})
        assert alone.equals(done[name])


def test_a_stage_runs_before_the_stages_that_wait_on_it():
    """Scheduling priorities: the prompts outrank every stage, and a stage outranks every stage that
    reads its results (so chains of jobs start early and short jobs fill the end)."""
    P = analyses.PRIORITY
    assert set(P) == {"prompts", *analyses.STAGES}
    assert all(P["prompts"] > P[stage] for stage in analyses.STAGES)
    waits = {(analyses.ANALYSES[dep].stage, a.stage) for a in analyses.ANALYSES.values() for dep in a.requires
             if analyses.ANALYSES[dep].stage != a.stage}
    assert waits  # lens -> patching -> heads at least
    assert all(P[before] > P[after] for before, after in waits), waits
