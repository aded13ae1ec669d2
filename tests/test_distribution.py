"""Reference and control words the model knows (distribution.check_words), and the similarity
intervals over word pairs (derived.relation_similarity)."""

import numpy as np
import pandas as pd
import pytest
import torch

from opposites.derived import relation_similarity
from opposites.distribution import check_words


class Unembedding:
    """The two things check_words reads of a model: W_U (d_model, vocab) and to_single_token."""

    def __init__(self, norms: dict[str, float], d_model: int = 16):
        g = torch.Generator().manual_seed(0)
        self.ids = {w: i for i, w in enumerate(norms)}
        cols = torch.randn(d_model, len(norms), generator=g)
        self.W_U = cols / cols.norm(dim=0) * torch.tensor(list(norms.values()))

    def to_single_token(self, word: str) -> int:
        return self.ids[word]


def test_words_outside_the_task_words_norms_are_out_of_distribution():
    """A word with an untrained unembedding (norm 0.2 against the task words' ~1) is out of
    distribution, one with a norm among theirs is in; the fences are Tukey's."""
    task = {f" t{i}": 0.9 + 0.02 * i for i in range(10)}  # 0.90 .. 1.08
    model = Unembedding({**task, " plastic": 0.2, " blue": 1.0, " huge": 3.0})
    res = check_words(model, [" plastic", " blue", " huge"], list(task))
    q1, q3 = np.quantile(list(task.values()), [0.25, 0.75])
    assert res["fences"] == pytest.approx([q1 - 1.5 * (q3 - q1), q3 + 1.5 * (q3 - q1)], rel=1e-5)
    assert res["out"] == ["plastic", "huge"] and not res["all_in"]
    assert [w["in_distribution"] for w in res["words"]] == [False, True, False]
    assert check_words(model, [" blue"], list(task))["all_in"]


def test_the_trained_models_unrelated_adjectives_are_out_of_distribution(trained_dir):
    """On the trained model the unrelated adjectives never occur in its corpus: their unembeddings
    keep their initialisation and the check says so; the task's own words pass it."""
    from opposites import models
    from opposites.prompts import load_spec
    from opposites.words import copy_words

    trained = models.load("trained", trained_dir, "cpu")
    unrelated = [" " + w for w in load_spec("size")["unrelated"]]
    assert not check_words(trained, unrelated, copy_words("size"))["all_in"]
    assert check_words(trained, copy_words("size"), copy_words("size"))["all_in"]


def test_similarity_gets_intervals_over_known_pairs():
    """Each relation's mean cosine over the pairs whose words the model knows, with a 95% interval
    over pairs that holds it and narrows with agreeing pairs; pairs out of distribution are left
    out and counted; a relation with none left is not measurable (None), and so is its contrast."""
    rows = [("embed", -1, "opposite", f"a{i}", f"b{i}", c, 0.0, True) for i, c in enumerate([0.5, 0.6, 0.4, 0.55, 0.45, 0.5])]
    rows += [("embed", -1, "synonym", f"s{i}", f"x{i}", 0.9, 0.0, False) for i in range(4)]
    rows += [("embed", -1, "random", f"r{i}", f"y{i}", c, 0.0, i < 5) for i, c in enumerate([0.1, -0.1, 0.0, 0.05, -0.05, 0.9])]
    sim = pd.DataFrame(rows, columns=["space", "layer", "relation", "a", "b", "cosine", "dot", "in_distribution"])
    res = relation_similarity(sim, "embed", -1)
    opp = res["opposite"]
    assert opp["value"] == pytest.approx(0.5) and opp["low"] < opp["value"] < opp["high"] and opp["high"] - opp["low"] < 0.2
    assert res["synonym"] is None and res["synonym_left_out"] == 4 and res["synonym_n"] == 0
    assert res["random"]["value"] == pytest.approx(0.0) and res["random_left_out"] == 1  # the 0.9 pair is out
    diff = res["opposite_minus_random"]
    assert diff["value"] == pytest.approx(0.5) and diff["low"] > 0


def test_similarity_figure_draws_a_relation_with_no_known_pair():
    """The trained model knows no synonym or random pair: the figure draws the opposite pairs and
    labels the other relations not measurable (it used to fail on the empty relation)."""
    import matplotlib

    matplotlib.use("Agg")
    from opposites.figures.meaning import similarity

    rows = [(space, layer, rel, "a", "b", 0.5, 0.0, rel == "opposite")
            for space, layer in (("embed", -1), ("unembed", -1), ("resid", 0), ("resid", 1))
            for rel in ("opposite", "synonym", "random") for _ in range(3)]
    sim = pd.DataFrame(rows, columns=["space", "layer", "relation", "a", "b", "cosine", "dot", "in_distribution"])
    fig = similarity({"similarity": {"size": sim}}, ["size"])
    labels = [t.get_text() for ax in fig.axes for leg in [ax.get_legend()] if leg for t in leg.get_texts()]
    assert "opposite" in labels and "synonym: not measurable" in labels and "random: not measurable" in labels
