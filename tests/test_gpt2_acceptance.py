"""Published GPT-2 small figures (shared/reference/published-gpt2-figures.md). These run wherever the
real weights are available: the Hugging Face cache holds `gpt2`, or OPPOSITES_GPT2_PATH names a local
copy. On machines without them (like this project's CI) they are skipped with that reason."""

import os

import pytest

from opposites import models
from opposites.analyses import baseline, head_dla

pytestmark = pytest.mark.gpt2


def gpt2_source() -> str | None:
    path = os.environ.get("OPPOSITES_GPT2_PATH")
    if path and os.path.isdir(path):
        return path
    try:
        models.check_available("gpt2")
        return "gpt2"
    except models.ModelUnavailable:
        return None


SOURCE = gpt2_source()
needs_gpt2 = pytest.mark.skipif(SOURCE is None, reason="GPT-2 small weights unavailable here (no hub access, "
                                "not cached, OPPOSITES_GPT2_PATH unset)")

# TransformerLens's Exploratory Analysis demo: 4 formats x 2 name orders.
FORMATS = ["When John and Mary went to the shops,{} gave the bag to",
           "When Tom and James went to the park,{} gave the ball to",
           "When Dan and Sid went to the shops,{} gave an apple to",
           "After Martin and Amy went to the park,{} gave a drink to"]
PAIRS = [(" John", " Mary"), (" Tom", " James"), (" Dan", " Sid"), (" Martin", " Amy")]


def demo_rows(tokenizer):
    rows = []
    for fmt_, (a, b) in zip(FORMATS, PAIRS):
        for subject, io in ((a, b), (b, a)):
            text = fmt_.format(subject)
            end = len(tokenizer(text)["input_ids"])
            rows.append({"id": len(rows), "clean": text, "corrupted": text, "answer": io, "wrong": subject,
                         "positions": {"END": end}})
    return rows


@pytest.fixture(scope="module")
def gpt2():
    return models.load(SOURCE, device="auto")


@needs_gpt2
def test_ioi_demo_logit_difference(gpt2):
    rows = demo_rows(gpt2.tokenizer)
    result = baseline.run(gpt2, rows, batch_size=8, seed=0)
    assert result["logit_diff_mean"] == pytest.approx(3.552, abs=0.01)
    assert result["per_prompt"] == pytest.approx([3.337, 3.202, 2.709, 3.797, 1.720, 5.281, 2.601, 5.767], abs=0.01)


@needs_gpt2
def test_name_movers_top_dla(gpt2):
    dla = head_dla.run(gpt2, demo_rows(gpt2.tokenizer), batch_size=8, seed=0)
    top = {f"{r.layer}.{r.head}" for r in dla.nlargest(2, "value").itertuples()}
    assert top == {"9.6", "9.9"}
    assert dla.set_index(["layer", "head"]).loc[(9, 9), "value"] == pytest.approx(2.99, abs=0.05)


@needs_gpt2
def test_name_mover_copy_scores(gpt2):
    """IOI paper: name movers copy names (> 95% in the paper, > 0.9 here); negative name movers
    have high negative copy scores (98% in the paper, > 0.8 here: recipe differences)."""
    from opposites.analyses import heads
    from opposites.prompts import make_prompts

    rows, _ = make_prompts("ioi", gpt2.tokenizer, 16, seed=0, min_prompts=8)
    df = heads.copy_scores(gpt2, rows, 8).set_index(["score_type", "layer", "head"]).value
    for layer, head in ((9, 9), (9, 6), (10, 0)):
        assert df[("copy", layer, head)] > 0.9
    for layer, head in ((10, 7), (11, 10)):
        assert df[("negative_copy", layer, head)] > 0.8
    assert df.loc["copy"].mean() < 0.3  # an average head copies little


@needs_gpt2
def test_ioi_circuit_contains_name_movers_and_s_inhibition(gpt2):
    from opposites.analyses import circuits
    from opposites.prompts import make_prompts

    rows, _ = make_prompts("ioi", gpt2.tokenizer, 32, seed=0, min_prompts=8)
    edges = circuits.edges(gpt2, rows, 8, ig_steps=5)
    c = circuits.circuit(gpt2, rows, 8, circuit_share=0.8, ig_steps=5, stability_resamples=0, seed=0, edges=edges)
    from opposites.overlap import head_nodes

    heads = head_nodes(c)
    assert {"9.9", "9.6"} <= heads and heads & {"7.3", "7.9", "8.6", "8.10"}
