"""Circuit selection and scoring that need no model (figure and table jobs import it; no torch).

  prune_dangling     keep only edges on some path from the input (embed) to the logits
  fraction_sizes     MIB's edge fractions as circuit sizes
  smallest_stable    the smallest size whose recovery reaches the target and stays there
  cpr_cmd            MIB's integrated faithfulness: area under the curve (CPR) and between it and 1 (CMD)
  roc_auc            how well edge scores rank the true edges of a planted circuit
  jaccard            overlap of two sets
"""

from __future__ import annotations

from opposites.nodes import Edge, Node

# MIB's grid of circuit sizes, as fractions of all edges (0.1% ... 100%)
FRACTIONS = (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0)
ACDC_THRESHOLDS = (0.003, 0.01, 0.03, 0.1)  # tau: the recovery an edge may cost and still be cut
ACDC_MAX_EDGES = 2000  # ACDC runs on graphs up to this size: about one exact forward per edge and tau
EXACT_MAX_EDGES = 2000  # exact per-edge scores (one forward per edge) up to this many edges
REFINE_MAX = 64  # greedy refinement tries at most this many removals (one exact evaluation each)
REFINE_MAX_EDGES = 8 * REFINE_MAX  # larger circuits are not refined: REFINE_MAX removals would change
#                                 their size by under 1/8, at the cost of as many near-full forwards
PLANTED_MIN_AUC = 0.95  # the ROC AUC every method must reach on the planted circuits (tests)


def fraction_sizes(total: int) -> list[int]:
    """The circuit size (edges, at least 1) at each of MIB's fractions of `total` edges."""
    return [max(1, round(f * total)) for f in FRACTIONS]


def prune_dangling(edges: list[Edge]) -> list[Edge]:
    """The edges that lie on a path embed -> ... -> logits through the given edges. A writer no kept
    edge reaches from embed gets only corrupted inputs, so it already writes its corrupted output, and
    a reader whose component reaches no kept edge to the logits changes nothing downstream: exact
    edge patching gives the same metric with or without the dropped edges."""
    order = sorted(edges, key=lambda e: e.dst.step)  # every edge into a component before any edge out of it
    fed, live = {Node("embed")}, {Node("logits")}
    for e in order:  # forward: components some kept path from embed reaches
        if e.src in fed:
            fed.add(e.dst.component)
    for e in reversed(order):  # backward: components with a kept path to the logits
        if e.dst.component in live:
            live.add(e.src)
    return [e for e in edges if e.src in fed and e.dst.component in live]


def smallest_stable(curve: dict[int, float], target: float) -> int | None:
    """The smallest size on the grid whose recovery reaches `target` and stays at or above it for
    every larger size (a size where the curve dips below again is not taken); None if none does."""
    best = None
    for size in sorted(curve, reverse=True):
        if curve[size] < target:
            break
        best = size
    return best


def cpr_cmd(fractions: list[float], faithfulness: list[float]) -> tuple[float, float]:
    """Trapezoid areas over the edge fraction x in [0, 1], with the empty circuit's point (0, 0)
    added: CPR = area under the faithfulness curve (higher is better), CMD = area of |1 - curve|
    (lower is better). A circuit that recovers everything at every size has CPR 1 and CMD 0."""
    pts = sorted({0.0: 0.0, **dict(zip(fractions, faithfulness))}.items())
    cpr = cmd = 0.0
    for (x0, y0), (x1, y1) in zip(pts, pts[1:]):
        cpr += (x1 - x0) * (y0 + y1) / 2
        cmd += (x1 - x0) * (abs(1 - y0) + abs(1 - y1)) / 2
    return cpr, cmd


def roc_auc(scores: list[float], truth: list[bool]) -> float:
    """Probability that a true edge outscores a false one (ties count one half); Mann-Whitney."""
    pos = [s for s, t in zip(scores, truth) if t]
    neg = [s for s, t in zip(scores, truth) if not t]
    if not pos or not neg:
        raise ValueError("ROC AUC needs at least one true and one false edge")
    wins = sum((p > n) + 0.5 * (p == n) for p in pos for n in neg)
    return wins / (len(pos) * len(neg))


def jaccard(a: set, b: set) -> float:
    return len(a & b) / len(a | b) if a | b else 0.0
