"""Is a reference or control word one the model knows? A word the model never learned to read or
write keeps the unembedding it was initialised with (on the trained model: every token absent from
its corpus keeps a seeded GPT-2 initialisation, norm about 0.2 against about 1 for its corpus's
words), so its logit is no reference and a prompt holding it is out of distribution.

The check is model-general: each word's unembedding norm against the norms of the task's own words
(the words its prompts use as answers, which the model demonstrably reads and writes). A word is in
distribution when its norm lies within Tukey's fences of theirs (1.5 interquartile ranges beyond
the quartiles). Each word's GPT-2 BPE rank (its token id: GPT-2's merges were learned in order of
frequency in GPT-2's corpus) is reported beside it as a frequency proxy for GPT-2 itself."""

from __future__ import annotations

import numpy as np

TUKEY = 1.5  # fence: this many interquartile ranges beyond the reference words' quartiles


def unembedding_norms(model, words: list[str]) -> np.ndarray:
    """(word,) norm of each single-token word's unembedding column (words with their leading space)."""
    ids = [model.to_single_token(w) for w in words]
    return model.W_U[:, ids].norm(dim=0).detach().double().cpu().numpy()


def fences(norms: np.ndarray) -> tuple[float, float]:
    """Tukey's fences [q1 - 1.5 IQR, q3 + 1.5 IQR] of the reference norms."""
    q1, q3 = np.quantile(norms, [0.25, 0.75])
    return float(q1 - TUKEY * (q3 - q1)), float(q3 + TUKEY * (q3 - q1))


def check_words(model, words: list[str], reference: list[str]) -> dict:
    """Each word's unembedding norm, BPE rank and whether it is in distribution (its norm within
    the fences of the reference words' norms); with the fences, the reference's median norm, and
    the words out of distribution."""
    low, high = fences(unembedding_norms(model, reference))
    norms = unembedding_norms(model, words)
    rows = [{"word": w.strip(), "norm": float(n), "bpe_rank": int(model.to_single_token(w)),
             "in_distribution": bool(low <= n <= high)} for w, n in zip(words, norms)]
    return {"words": rows, "fences": [low, high], "reference_median": float(np.median(unembedding_norms(model, reference))),
            "n_reference": len(reference), "out": [r["word"] for r in rows if not r["in_distribution"]],
            "all_in": all(r["in_distribution"] for r in rows)}
