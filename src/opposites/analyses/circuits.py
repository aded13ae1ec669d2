"""Circuit discovery on the task's own prompts, scored the MIB way.

Scoring: EAP and EAP-IG estimate every edge's effect (patching/edges.py); on graphs small enough
(toy and trained models) exact per-edge patching (each edge alone cut from the clean run) is the
reference they are judged against.
Selection, per method: the top-|score| edges at each size of a grid (MIB's edge fractions and
powers of two), dangling edges dropped, exact recovery measured (clean prompts, corrupted writer
outputs on every edge outside the circuit); the smallest size that reaches `circuit_share` and stays
there for every larger size; then greedy refinement (try removing kept edges one at a time, weakest
first; keep the removal while exact recovery stays at the target). Completeness: the circuit's own
edges cut from the clean run (the IOI paper's test with K = C, the whole circuit), and beside it
only the circuit's edges out of the embedding cut: the changed token reaches the final position
only along edges out of the embedding, so where those alone lose as much, completeness holds for
any circuit holding them and says nothing about the rest of it (scripts/completeness_check.py
recomputes both in plain PyTorch). Integrated faithfulness: CPR and CMD over MIB's fractions. Stability:
discovery re-run (EAP-IG scores and exact recoveries reweighted) on seeded bootstrap resamples of
the prompts."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import pandas as pd
import torch
from tqdm import tqdm

from opposites.circuit_metrics import (ACDC_MAX_EDGES, EXACT_MAX_EDGES, FRACTIONS, REFINE_MAX, REFINE_MAX_EDGES, cpr_cmd, fraction_sizes,
                                       jaccard, prune_dangling, smallest_stable)
from opposites.analyses import acdc
from opposites.derived import MIN_CLUSTERS
from opposites.core import JobCache, batches, direction, prompt_clusters
from opposites.nodes import Edge, component_nodes
from opposites.patching.edges import Graph, circuits_forward, edge_attribution, edge_forward, shared_prefix
from opposites.patching.engine import Weights
from opposites.stats import N_RESAMPLES, bias_corrected, cluster_halves, interval, resample_weights, spearman_ci, wilson

METHODS = ("EAP-IG", "EAP")  # the first is the paper's circuit; "exact" joins where affordable


@dataclass
class Runs:
    """The prompts' batches with what exact edge patching needs, and per-prompt clean and corrupted
    logit differences (batch order)."""
    weights: Weights
    graph: Graph
    batches: list[dict]
    clean: torch.Tensor  # (prompt,)
    corrupted: torch.Tensor
    lds_of: dict = field(default_factory=dict)  # edge set -> (prompt,) exact logit differences
    clusters: list | None = None  # each prompt's resampling unit (prompts.cluster_of), batch order

    def prompt_weights(self, w: torch.Tensor | None = None) -> torch.Tensor:
        """(prompt,) weights of a bootstrap resample, or all prompts equally (w None)."""
        return torch.full_like(self.clean, 1 / len(self.clean)) if w is None else w

    def recovery(self, lds: torch.Tensor, w: torch.Tensor | None = None) -> torch.Tensor:
        """(circuit,) recovered share from per-prompt logit differences (circuit, prompt), prompts
        weighted by w (prompt,) (a bootstrap resample; None: all equally)."""
        w = self.prompt_weights(w)
        clean, corrupted = self.clean @ w, self.corrupted @ w
        drawn = w > 0 if w.dim() == 1 else (w > 0).any(1)  # prompts no resample draws may be unmeasured (NaN)
        return (lds[:, drawn] @ w[drawn] - corrupted) / (clean - corrupted)

    def resamples(self, seed: int, n_resamples: int, part: torch.Tensor) -> torch.Tensor:
        """(prompt, resample) weights of bootstrap resamples of the clusters of `part` (prompt,) bool;
        prompts outside it weigh 0."""
        inside = part.nonzero()[:, 0]
        clusters = None if self.clusters is None else [self.clusters[i] for i in inside.tolist()]
        out = torch.zeros(len(self.clean), n_resamples, dtype=torch.float64, device="cpu")
        out[inside] = resample_weights(len(inside), seed, n_resamples, clusters=clusters)
        return out

    def n_clusters(self, part: torch.Tensor) -> int:
        """How many clusters (resampling units) the prompts of `part` (prompt,) bool come from."""
        inside = part.nonzero()[:, 0].tolist()
        return len(inside) if self.clusters is None else len({self.clusters[i] for i in inside})

    def intervals(self, lds: torch.Tensor, seed: int, part: torch.Tensor | None = None) -> torch.Tensor:
        """(circuit, resample) recoveries over bootstrap resamples of the prompts (of `part` (prompt,)
        bool, where given: those prompts' clusters; for intervals)."""
        if part is None:
            return self.recovery(lds, resample_weights(len(self.clean), seed, clusters=self.clusters))
        return self.recovery(lds, self.resamples(seed, N_RESAMPLES, part))


def prepare(model, rows, batch_size) -> Runs:
    weights = Weights.from_bridge(model)
    out, clean, corrupted = [], [], []
    for batch in batches(model, rows, batch_size, desc="edge runs"):
        d, bias = direction(model, batch)
        prefix = shared_prefix(weights, batch.clean, batch.corrupted)  # positions computed once
        ld_clean, _, _ = edge_forward(weights, batch.clean, d, bias, prefix=prefix)
        ld_corrupted, corrupted_out, _ = edge_forward(weights, batch.corrupted, d, bias, prefix=prefix)
        out.append({"batch": batch, "dir": d, "bias": bias, "corrupted_out": corrupted_out, "prefix": prefix})
        clean.append(ld_clean.double().cpu())
        corrupted.append(ld_corrupted.double().cpu())
    return Runs(weights, Graph(weights.n_layers, weights.n_heads), out, torch.cat(clean), torch.cat(corrupted),
                clusters=prompt_clusters(rows))


def drawn_batches(runs: Runs, prompts: torch.Tensor | None = None) -> list:
    """Per batch: (first prompt's index, the indices evaluated (batch order), and what edge_forward
    needs of them: corrupted writer outputs (writer, batch, pos, d_model), clean tokens, direction,
    bias and prefix), the batch cut to the drawn prompts when `prompts` (prompt,) bool is given."""
    out, start = [], 0
    for r in runs.batches:
        n = len(r["batch"].clean)
        idx = torch.arange(n, device="cpu") if prompts is None else prompts[start:start + n].nonzero()[:, 0]
        inputs = r["corrupted_out"], r["batch"].clean, r["dir"], r["bias"], r["prefix"]
        if 0 < len(idx) < n:  # (writer, batch, pos, d_model) and the rest, cut to the drawn prompts
            i = idx.to(inputs[0].device)
            b, tokens, d, bias, prefix = inputs
            inputs = b[:, i], tokens[i], d[i], bias[i], prefix.select(i)
        out.append((start, idx, inputs))
        start += n
    return out


def exact_lds(runs: Runs, keeps: torch.Tensor, drawn: list | None = None) -> torch.Tensor:
    """(circuit, prompt) logit differences with each circuit's edges kept (keeps: (circuit, writer,
    reader)), several circuits per forward as memory allows. `drawn` (drawn_batches; None: all):
    evaluate only its prompts (a bootstrap resample's); the others are NaN. Keeping every edge is the
    clean run and keeping none the corrupted run, by definition: those are not evaluated."""
    out = torch.full((len(keeps), len(runs.clean)), float("nan"), dtype=torch.float64, device="cpu")
    everything = (keeps == runs.graph.allowed).flatten(1).all(1)
    nothing = ~keeps.flatten(1).any(1)
    out[everything], out[nothing] = runs.clean, runs.corrupted
    todo = (~everything & ~nothing).nonzero()[:, 0]
    if not len(todo):
        return out
    for start, idx, (b, tokens, d, bias, prefix) in tqdm(drawn or drawn_batches(runs), total=len(runs.batches),
                                                         desc=f"{len(todo)} circuits", leave=False, disable=len(todo) < 4):
        if len(idx):
            out[todo[:, None], start + idx] = circuits_forward(runs.weights, tokens, d, bias, b, keeps[todo], prefix).double().cpu()
    return out


Traces = list  # per batch: (prompt indices, Trace) or None, as traced_lds returns them


def traced_lds(runs: Runs, keep: torch.Tensor, drawn: list | None = None,
               base: Traces | None = None) -> tuple[torch.Tensor, Traces]:
    """exact_lds of one circuit keep (writer, reader), with each batch's forward recorded (Trace);
    given `base` (another circuit's traces, the same `drawn`), each batch starts at the first layer
    whose readers' edges differ and recomputes only the heads and MLPs the difference reaches: greedy
    refinement's trials differ from the kept circuit by a few edges, often in late layers."""
    out = torch.full((len(runs.clean),), float("nan"), dtype=torch.float64, device="cpu")
    traces = []  # per batch: (the prompts it holds, its Trace); None for a batch with none drawn
    for i, (start, idx, (b, tokens, d, bias, prefix)) in enumerate(drawn or drawn_batches(runs)):
        if not len(idx):
            traces.append(None)
            continue
        resume = None if base is None or base[i] is None else base[i][1]
        assert resume is None or torch.equal(base[i][0], idx), "a trace resumes only on the prompts it was recorded on"
        ld, trace, _ = edge_forward(runs.weights, tokens, d, bias, b, keep.to(b.device), prefix=prefix, record=True,
                                    resume=resume)
        out[start + idx] = ld.double().cpu()
        traces.append((idx, trace))
    return out, traces


def recovered(runs: Runs, keep: torch.Tensor) -> float:
    """Exact: clean prompts, every edge outside `keep` fed the corrupted writer output."""
    return runs.recovery(exact_lds(runs, keep[None]))[0].item()


# ---- scores ---------------------------------------------------------------------------------------

def attribution_scores(runs: Runs, ig_steps: int) -> torch.Tensor:
    """(writer, reader, prompt) EAP (ig_steps 0) or EAP-IG scores, in raw logit-difference units."""
    return torch.cat([edge_attribution(runs.weights, r["batch"].clean, r["batch"].corrupted, r["dir"], r["bias"], ig_steps,
                                       r["prefix"])[0].double().cpu()
                      for r in tqdm(runs.batches, desc="EAP-IG" if ig_steps else "EAP", leave=False)], -1)


def exact_scores(runs: Runs) -> torch.Tensor:
    """(writer, reader, prompt) exact edge patching, ACDC's way: the clean logit difference minus
    the one with this edge alone fed the corrupted writer output. Same sign as the attribution
    estimates (positive: the edge carries the answer), and the same first-order quantity; unlike
    restoring one edge into the corrupted run, it sees each edge of a chain (an AND of edges)."""
    ws, rs = runs.graph.allowed.nonzero(as_tuple=True)
    keeps = runs.graph.allowed.repeat(len(ws), 1, 1)  # (edge, writer, reader)
    keeps[torch.arange(len(ws), device="cpu"), ws, rs] = False
    lds = exact_lds(runs, keeps)  # (edge, prompt)
    out = torch.zeros(*runs.graph.allowed.shape, lds.shape[1], dtype=torch.float64, device="cpu")
    out[ws, rs] = runs.clean - lds
    return out


def scores_by_method(runs: Runs, ig_steps: int) -> tuple[dict[str, torch.Tensor], dict[str, float]]:
    """(writer, reader, prompt) scores of each method (exact ones where the graph is small enough),
    and the CPU seconds each took (CPU: the machine is shared)."""
    makers = {"EAP-IG": lambda: attribution_scores(runs, ig_steps), "EAP": lambda: attribution_scores(runs, 0)}
    if int(runs.graph.allowed.sum()) <= EXACT_MAX_EDGES:
        makers["exact"] = lambda: exact_scores(runs)
    scores, seconds = {}, {}
    for method, make in makers.items():
        start = time.process_time()
        scores[method] = make()
        seconds[method] = time.process_time() - start
    return scores, seconds


def _runs_and_scores(model, rows, batch_size, ig_steps, cache: JobCache | None,
                     release: bool = False) -> tuple[Runs, dict[str, torch.Tensor], dict[str, float]]:
    """The prompts' prepared runs, per-prompt scores and scoring seconds, computed once per job:
    edges() leaves them in the job's cache for circuit(), which takes them out (release)."""
    def make():
        runs = prepare(model, rows, batch_size)
        return runs, *scores_by_method(runs, ig_steps)

    key = (tuple(r["clean"] for r in rows), batch_size, ig_steps)
    if cache is None:
        return make()
    return (cache.pop if release else cache.get)("edge_runs", key, make)


def edges(model, rows, batch_size, ig_steps: int, cache: JobCache | None = None) -> pd.DataFrame:
    """Every edge's score by every method, normalised like patching: the estimated share of the
    clean-minus-corrupted logit difference that restoring this edge alone recovers. The prepared runs
    and the per-prompt scores stay in the job's cache for circuit() (same prompts, batch size and
    ig_steps), which would otherwise compute them again."""
    runs, scores, _ = _runs_and_scores(model, rows, batch_size, ig_steps, cache)
    scale = (runs.clean - runs.corrupted).mean()
    ws, rs = runs.graph.allowed.nonzero(as_tuple=True)
    parts = [pd.DataFrame({"method": method, "src": [str(runs.graph.writers[i]) for i in ws.tolist()],
                           "dst": [str(runs.graph.readers[i]) for i in rs.tolist()],
                           "score": (s.mean(-1)[ws, rs] / scale).tolist()})
             for method, s in scores.items()]
    return pd.concat(parts, ignore_index=True)


# ---- selection ------------------------------------------------------------------------------------

def edge_set(circuit: list[Edge]) -> frozenset:
    """A circuit's key in Runs.lds_of: its (src, dst) pairs."""
    return frozenset((e.src, e.dst) for e in circuit)


@dataclass
class Kept:
    """The circuit a greedy pass holds, its recovery, and its forwards' traces (None: not recorded;
    a trial then records them first, and each trial starts where its edges differ)."""
    circuit: list[Edge]
    value: float
    traces: Traces | None = None


class Discovery:
    """Selection for one ranking of the edges, on all prompts or one bootstrap resample (w)."""

    def __init__(self, runs: Runs, ranked: list[Edge], w: torch.Tensor | None = None):
        self.runs, self.ranked, self.w = runs, ranked, w
        self.writer = {node: i for i, node in enumerate(runs.graph.writers)}
        self.reader = {node: i for i, node in enumerate(runs.graph.readers)}
        self.evaluations = 0
        self.recovery_at: dict[int, float] = {}  # size -> recovery of top(size)
        self.tops: dict[int, list[Edge]] = {}  # size -> top(size)
        self.drawn = runs.prompt_weights(w) > 0  # (prompt,): the prompts this discovery weighs
        self.batches = drawn_batches(runs, None if self.drawn.all() else self.drawn)  # cut once, evaluated often

    def missing(self, key: frozenset) -> bool:
        """Runs.lds_of lacks this edge set on some prompt this discovery weighs."""
        known = self.runs.lds_of.get(key)
        return known is None or bool(known[self.drawn].isnan().any())

    def mask(self, edge_list: list[Edge]) -> torch.Tensor:
        keep = torch.zeros_like(self.runs.graph.allowed)
        ws = torch.tensor([self.writer[e.src] for e in edge_list], dtype=torch.long, device="cpu")
        keep[ws, torch.tensor([self.reader[e.dst] for e in edge_list], dtype=torch.long, device="cpu")] = True
        return keep

    def lds(self, circuits: list[list[Edge]]) -> torch.Tensor:
        """(circuit, prompt) exact logit differences, measured on the prompts this discovery weighs
        (a resample: the prompts it drew; others may be NaN). Each edge set is evaluated once per
        prompt and Runs: the methods' selections and the stability resamples share what was measured."""
        keys = [edge_set(c) for c in circuits]
        measured = self.runs.lds_of
        todo = {k: c for k, c in zip(keys, circuits) if self.missing(k)}
        if todo:
            self.evaluations += len(todo)
            lds = exact_lds(self.runs, torch.stack([self.mask(c) for c in todo.values()]), self.batches)
            for k, new in zip(todo, lds):
                measured[k] = new if k not in measured else torch.where(new.isnan(), measured[k], new)
        return torch.stack([measured[k] for k in keys])

    def recover(self, circuits: list[list[Edge]]) -> list[float]:
        if not circuits:
            return []
        return self.runs.recovery(self.lds(circuits), self.w).tolist()

    def record(self, circuit: list[Edge], base: Traces | None = None) -> Traces:
        """Measure one circuit with its forwards recorded (traced_lds; from `base`, another circuit's
        traces, where given). What Runs.lds_of already holds for it is kept."""
        key = edge_set(circuit)
        self.evaluations += 1
        lds, traces = traced_lds(self.runs, self.mask(circuit), self.batches, base)
        old = self.runs.lds_of.get(key)
        self.runs.lds_of[key] = lds if old is None else torch.where(old.isnan(), lds, old)
        return traces

    def measure(self, circuit: list[Edge], base: Traces) -> tuple[float, Traces | None]:
        """recover() of one circuit; not measured yet, it is measured starting from `base`, and its
        traces are returned too (None: it was measured before)."""
        traces = self.record(circuit, base) if self.missing(edge_set(circuit)) else None
        return self.recover([circuit])[0], traces

    def try_removal(self, kept: "Kept", edge: Edge, accept, prune: bool = False) -> bool:
        """One greedy step, refinement's and ACDC's: measure `kept`'s circuit without `edge` (and,
        prune=True, without the dangling edges that leaves); a trial with nothing left on a path is the
        corrupted run, by definition, and any other resumes from the kept circuit's traces. If
        accept(recovery) holds, the trial becomes the kept circuit (with its traces)."""
        trial = [x for x in kept.circuit if x != edge]
        if prune:
            trial = prune_dangling(trial)
        if not prune_dangling(trial):
            got, traces = self.recover([trial])[0], None
        else:
            kept.traces = kept.traces or self.record(kept.circuit)
            got, traces = self.measure(trial, kept.traces)
        if not accept(got):
            return False  # the rejected trial's forwards are dropped here, before the next trial runs
        kept.circuit, kept.value, kept.traces = trial, got, traces
        return True

    def fit(self, size: int) -> list[Edge]:
        """The best-ranked edges that fit in `size` edges, dangling edges dropped: the largest top(k)
        with at most `size` edges (top(k) only grows with k), then the next 4 * size ranked edges in
        order, each taken if the circuit still fits (the edge at k + 1 may complete several paths at
        once and overflow, while a later one fits)."""
        low, high = 0, len(self.ranked)  # len(top(low)) <= size; find the largest such k
        while low < high:
            mid = (low + high + 1) // 2
            low, high = (mid, high) if len(self.top(mid)) <= size else (low, mid - 1)
        taken, kept = self.ranked[:low], self.top(low)
        for edge in self.ranked[low + 1:low + 1 + 4 * size]:
            if len(kept) == size:
                break
            trial = prune_dangling(taken + [edge])
            if len(trial) <= size:
                taken, kept = taken + [edge], trial
        return kept

    def top(self, size: int) -> list[Edge]:
        """The `size` best-ranked edges without the dangling ones."""
        if size not in self.tops:
            self.tops[size] = prune_dangling(self.ranked[:size])
        return self.tops[size]

    def curve(self, sizes: list[int]) -> dict[int, float]:
        """Exact recovery of the top-`size` circuits, each size evaluated once."""
        new = sorted(set(sizes) - set(self.recovery_at))
        self.recovery_at.update(zip(new, self.recover([self.top(s) for s in new])))
        return {s: self.recovery_at[s] for s in sizes}

    def refine(self, circuit: list[Edge], target: float) -> tuple[list[Edge], float]:
        """Try removing edges one at a time, weakest |score| first; keep a removal while recovery
        stays at or above the target (dangling edges left behind are dropped too). Circuits above
        REFINE_MAX_EDGES are returned as they are."""
        value = self.recover([circuit])[0]
        if len(circuit) > REFINE_MAX_EDGES:
            return circuit, value
        kept = Kept(circuit, value)
        for e in tqdm(sorted(circuit, key=lambda e: abs(e.score))[:REFINE_MAX], desc="refinement", leave=False):
            if e in kept.circuit:
                self.try_removal(kept, e, lambda got: got >= target, prune=True)
        return kept.circuit, kept.value

    def select(self, target: float, whole_curve: bool = True) -> dict:
        """The smallest grid size that reaches the target and stays there, refined. whole_curve=False
        (stability resamples) measures the grid from the largest size down and stops at the first
        size below the target: the same choice, without the curve below it."""
        total = len(self.ranked)
        grid = sorted(set(fraction_sizes(total)) | {min(total, 2 ** i) for i in range(total.bit_length() + 1)})
        if whole_curve:
            curve = self.curve(grid)
        else:
            curve = {}
            for s in reversed(grid):
                curve.update(self.curve([s]))
                if curve[s] < target:
                    break
        size = smallest_stable(curve, target) or total
        circuit, value = self.refine(self.top(size), target)
        return {"grid_size": size, "curve": curve, "edges": circuit, "recovered": value}


def ranked_edges(runs: Runs, scores: torch.Tensor, w: torch.Tensor | None = None) -> list[Edge]:
    """Edges by |mean score| (prompts weighted by w), largest first; ties keep graph order. Scores
    (writer, reader, prompt) in logit-difference units; the edges carry them normalised by the
    (weighted) clean - corrupted difference."""
    w = runs.prompt_weights(w)
    mean = scores @ w  # (writer, reader)
    ws, rs = runs.graph.allowed.nonzero(as_tuple=True)
    values = mean[ws, rs] / ((runs.clean - runs.corrupted) @ w)
    order = torch.sort(values.abs(), descending=True, stable=True).indices.tolist()
    return [Edge(runs.graph.writers[ws[i]], runs.graph.readers[rs[i]], values[i].item()) for i in order]


def ranked_records(df: pd.DataFrame) -> list[Edge]:
    """An edges.csv method's edges by |score|, largest first (stable: graph order on ties)."""
    df = df.assign(a=df.score.abs()).sort_values("a", ascending=False, kind="stable")
    return [Edge.from_record(r) for r in df.to_dict("records")]


def _node_order(label: str) -> tuple:
    return label != "embed", label == "logits", label


def recovery_numbers(d: Discovery, kept: list[Edge], seed: int, curve_lds: torch.Tensor | None = None) -> tuple[dict, torch.Tensor]:
    """A circuit's recovery and completeness (the share lost when only its edges are cut from the
    clean run; and when only its edges out of the embedding are: completeness_lost_embed) on the
    prompts d weighs, each with a 95% interval over bootstrap resamples of those prompts' words (the
    same per-prompt exact logit differences, reweighted); and the (circuit, resample) recoveries of
    `curve_lds` (circuit, prompt) over the same resamples."""
    runs = d.runs
    from_embed = [e for e in kept if e.src.kind == "embed"]
    cuts = torch.stack([runs.graph.allowed & ~d.mask(kept),  # the circuit's edges cut from the clean run
                        runs.graph.allowed & ~d.mask(from_embed)])  # only its edges out of the embedding
    lost_lds = exact_lds(runs, cuts, d.batches)  # (2, prompt)
    extra = curve_lds if curve_lds is not None else lost_lds[:0]
    boot = runs.intervals(torch.cat([d.lds([kept]), lost_lds, extra]), seed, d.drawn)
    lost = 1 - runs.recovery(lost_lds, d.w)
    n_clusters = runs.n_clusters(d.drawn)
    ci = lambda resampled: clustered_interval(resampled, n_clusters)  # noqa: E731
    return {"recovered": d.recover([kept])[0], "recovered_ci95": ci(boot[0]),
            "completeness_lost": lost[0].item(), "completeness_lost_ci95": ci(1 - boot[1]),
            "completeness_lost_embed": lost[1].item(), "completeness_lost_embed_ci95": ci(1 - boot[2]),
            "n_embed_edges": len(from_embed), "n_clusters": n_clusters}, boot[3:]


def clustered_interval(resampled: torch.Tensor, n_clusters: int) -> list[float]:
    """[low, high] of a cluster bootstrap over n_clusters clusters; [NaN, NaN] (no interval: "n too
    small") below MIN_CLUSTERS, where the resamples are too few and too alike to test anything."""
    return interval(resampled) if n_clusters >= MIN_CLUSTERS else [math.nan, math.nan]


def numbers(d: Discovery, kept: list[Edge], fractions: list[float], curve: list[list[Edge]], seed: int,
            whole: bool = False) -> dict:
    """recovery_numbers, and CPR/CMD over the faithfulness curve (`curve`: one circuit per fraction;
    whole=True adds the whole graph, recovery 1, as the last point) with 95% intervals over the same
    resamples. CMD sums |1 - recovery|: noise only adds to it, more so in a resample, so its
    percentile interval can lie wholly above the estimate; it is bias-corrected like Spearman's rho
    (>= 0)."""
    tail = [1.0] if whole else []
    curve_lds = d.lds(curve)
    out, boot = recovery_numbers(d, kept, seed, curve_lds)
    cpr, cmd = cpr_cmd(fractions, d.runs.recovery(curve_lds, d.w).tolist() + tail)
    boot_mib = [cpr_cmd(fractions, col.tolist() + tail) for col in boot.T]  # (resample,) of (CPR, CMD)
    as_tensor = lambda xs: torch.tensor(xs, dtype=torch.float64, device="cpu")  # noqa: E731
    cmd_est = bias_corrected(as_tensor(cmd), as_tensor([c for _, c in boot_mib]), 0.0, math.inf)
    enough = out["n_clusters"] >= MIN_CLUSTERS
    return out | {"cpr": cpr, "cmd": cmd_est.value.item() if enough else cmd, "cmd_uncorrected": cmd,
                  "cpr_ci95": clustered_interval(as_tensor([c for c, _ in boot_mib]), out["n_clusters"]),
                  "cmd_ci95": [cmd_est.ci_low.item(), cmd_est.ci_high.item()] if enough else [math.nan, math.nan]}


def described(d: Discovery, held: Discovery, kept: list[Edge], fractions: list[float], curve: list[list[Edge]],
              seed: int, whole: bool = False) -> dict:
    """numbers() on the selection prompts (d) and on the held-out prompts (held, under "held_out"),
    the exact evaluations selection took, and the circuit's nodes and edges."""
    return {**numbers(d, kept, fractions, curve, seed, whole), "exact_evaluations": d.evaluations,
            "held_out": numbers(held, kept, fractions, curve, seed, whole),
            "nodes": sorted((str(n) for n in component_nodes(kept)), key=_node_order),
            "edges": [e.record() for e in kept]}


def _describe(d: Discovery, held: Discovery, found: dict, seed: int) -> dict:
    """The selected circuit's numbers (described), its selection curve and MIB's faithfulness curve."""
    sizes = fraction_sizes(len(d.ranked))
    mib = d.curve(sizes)  # measured during selection already: the grid holds these sizes
    return {"n_edges": len(found["edges"]), "grid_size": found["grid_size"],
            **described(d, held, found["edges"], list(FRACTIONS), [d.top(s) for s in sizes], seed),
            "curve": [{"n_edges": s, "recovered": v} for s, v in sorted(found["curve"].items())],
            "mib_curve": [{"fraction": f, "n_edges": s, "recovered": mib[s]} for f, s in zip(FRACTIONS, sizes)]}


def part_weights(part: torch.Tensor) -> torch.Tensor:
    """(prompt,) equal weights on the prompts of `part` (prompt,) bool, 0 elsewhere."""
    return part.double() / part.sum()


HYBRID = "EAP-IG+ACDC"  # ACDC's pass started from EAP-IG's grid circuit instead of the whole graph


def circuit(model, rows, batch_size, circuit_share: float, ig_steps: int, stability_resamples: int,
            seed: int, acdc_max_edges: int = ACDC_MAX_EDGES, edges=None, clock: "Clock | None" = None,
            cache: JobCache | None = None) -> dict:
    """The prompts split by word (halves): every method selects on one half, and is evaluated on
    both (in-sample numbers, and under "held_out" the other half's). Per method in edges.csv: the
    selected circuit, its recovery, completeness, CPR/CMD and curves; ACDC (and ACDC's pass started
    from EAP-IG's grid circuit) where the graph is small enough. Then the methods at one size
    (compare_at_size): the most faithful circuit there on the selection half is the paper's (top-level
    nodes/edges), ACDC's own apart: re-running ACDC on every stability resample costs about one pass
    over the whole graph each (the hybrid's pass covers only EAP-IG's grid circuit). Stability of the
    paper's circuit: its procedure re-run on seeded bootstrap resamples of the selection half's words
    (scores and exact recoveries reweighted): each kept edge's inclusion frequency and the mean
    Jaccard between resampled circuits. Every method's "seconds": CPU seconds of its scoring,
    selection and evaluation. `clock` (benchmarks) records the wall and CPU time of each phase."""
    clock = clock or Clock()
    runs, per_prompt, score_seconds = _runs_and_scores(model, rows, batch_size, ig_steps, cache, release=True)  # method -> (writer, reader, prompt)
    clock.lap("runs")
    selection = cluster_halves(runs.clusters, seed)  # (prompt,) bool; the rest is held out
    w_selection, w_held = part_weights(selection), part_weights(~selection)
    ranked = {m: ranked_edges(runs, per_prompt[m], w_selection) for m in edges.method.unique()}
    methods, seconds, found = {}, {}, {}
    for method in ranked:
        start = time.process_time()
        discovery = Discovery(runs, ranked[method], w_selection)
        found[method] = discovery.select(circuit_share)
        methods[method] = _describe(discovery, Discovery(runs, ranked[method], w_held), found[method], seed)
        seconds[method] = score_seconds.get(method, 0.0) + time.process_time() - start
        clock.lap(f"selection {method}")
    if int(runs.graph.allowed.sum()) <= acdc_max_edges:  # ACDC: about one exact forward per edge and threshold
        start = time.process_time()
        methods["ACDC"] = acdc.discover(Discovery(runs, [], w_selection), Discovery(runs, [], w_held), circuit_share, seed)
        seconds["ACDC"] = time.process_time() - start
        clock.lap("selection ACDC")
        start = time.process_time()
        discovery = Discovery(runs, ranked[METHODS[0]], w_selection)
        methods[HYBRID] = acdc.discover(discovery, Discovery(runs, [], w_held), circuit_share, seed,
                                        start=discovery.top(found[METHODS[0]]["grid_size"]))
        seconds[HYBRID] = seconds[METHODS[0]] + time.process_time() - start  # its start is EAP-IG's selection
        clock.lap(f"selection {HYBRID}")
    for method, m in methods.items():
        m["seconds"] = seconds[method]
    if "exact" in per_prompt:
        ws, rs = runs.graph.allowed.nonzero(as_tuple=True)
        exact = per_prompt["exact"][ws, rs]  # (edge, prompt)
        for method in METHODS:
            rho = spearman_ci(per_prompt[method][ws, rs], exact, seed, runs.clusters)  # bias-corrected
            methods[method] |= {"spearman_vs_exact": rho.value.item(),
                                "spearman_vs_exact_ci95": [rho.ci_low.item(), rho.ci_high.item()]}
    size = methods["ACDC"]["n_edges"] if "ACDC" in methods else methods[METHODS[0]]["n_edges"]
    rows_at_size = compare_at_size(runs, ranked, methods, size, w_selection, w_held, seed, score_seconds)
    main = max((r for r in rows_at_size if r["n_edges"] <= size and r["method"] != "ACDC"),
               key=lambda r: (r["recovered"], -r["n_edges"]))
    clock.lap("comparison")
    procedure = procedures(runs, per_prompt, methods, circuit_share, size)[main["method"], main["how"]]
    resampled, evaluations = [], 0
    if stability_resamples:
        resamples = runs.resamples(seed, stability_resamples, selection)  # (prompt, resample)
        for i in tqdm(range(stability_resamples), desc="stability", leave=False):
            circuit_found, discovery = procedure(resamples[:, i])
            resampled.append({(str(e.src), str(e.dst)) for e in circuit_found})
            evaluations += discovery.evaluations
    clock.lap("stability")
    pairs = [jaccard(a, b) for i, a in enumerate(resampled) for b in resampled[i + 1:]]
    stability = {"resamples": stability_resamples, "exact_evaluations": evaluations, "method": main["method"],
                 "how": main["how"],
                 "inclusion": [inclusion(e, resampled) for e in main["edges"]],
                 "mean_jaccard": sum(pairs) / len(pairs) if pairs else None,
                 "circuits": [sorted(f"{s}->{t}" for s, t in c) for c in resampled]}
    return {"target": circuit_share, "method": main["method"], "how": main["how"], "ig_steps": ig_steps,
            "total_edges": int(runs.graph.allowed.sum()), "n_prompts": len(runs.clean),
            "n_selection": int(selection.sum()), "n_held_out": int((~selection).sum()),
            "clean_logit_diff": runs.clean.mean().item(), "corrupted_logit_diff": runs.corrupted.mean().item(),
            "n_edges": main["n_edges"], "recovered": main["recovered"], "nodes": main["nodes"], "edges": main["edges"],
            "acdc_max_edges": acdc_max_edges, "compared_size": size, "at_size": rows_at_size, "methods": methods,
            "stability": stability}


def compare_at_size(runs: Runs, ranked: dict, methods: dict, size: int, w_selection, w_held, seed: int,
                    score_seconds: dict[str, float]) -> list[dict]:
    """The methods at one size: the ranked methods' top edges, at most `size` of them (the largest
    top(k) that fits: what ranking alone gives), EAP-IG's refined selection, ACDC's and the hybrid's
    circuits; each with its recovery on the selection half and its recovery and completeness, with
    intervals, on the held-out half. CPR/CMD (held out) belong to a ranking: only its rows carry them."""
    out = []
    for method in ("EAP", METHODS[0]):
        discovery = Discovery(runs, ranked[method], w_selection)
        start = time.process_time()
        kept = discovery.fit(size)
        seconds = score_seconds.get(method, 0.0) + time.process_time() - start
        held = methods[method]["held_out"]
        out.append(_row(method, "top", discovery, Discovery(runs, ranked[method], w_held), kept, seed, seconds)
                   | {k: held[k] for k in ("cpr", "cpr_ci95", "cmd", "cmd_ci95")})
    for method, how in ((METHODS[0], "refined"), ("ACDC", "ACDC"), (HYBRID, "ACDC from EAP-IG's grid circuit")):
        if method in methods:
            m = methods[method]
            kept = [Edge.from_record(e) for e in m["edges"]]
            out.append(_row(method, how, Discovery(runs, [], w_selection), Discovery(runs, [], w_held), kept, seed,
                            m["seconds"]))
    return out


def _row(method: str, how: str, discovery: Discovery, held: Discovery, kept: list[Edge], seed: int, seconds: float) -> dict:
    """One comparison row: a circuit's recovery on the selection half (discovery), and recovery_numbers held out."""
    return {"method": method, "how": how, "n_edges": len(kept), "recovered": discovery.recover([kept])[0],
            "held_out": recovery_numbers(held, kept, seed)[0], "seconds": seconds,
            "nodes": sorted((str(n) for n in component_nodes(kept)), key=_node_order),
            "edges": [e.record() for e in kept]}


def procedures(runs: Runs, per_prompt: dict, methods: dict, target: float, size: int) -> dict:
    """Per comparison row's method and way, the procedure that finds its circuit again from
    prompt weights w (a resample): (circuit, its Discovery)."""
    def ranked_discovery(method, w):
        return Discovery(runs, ranked_edges(runs, per_prompt[method], w), w)

    def top(method):
        def find(w):
            discovery = ranked_discovery(method, w)
            return discovery.fit(size), discovery
        return find

    def refined(w):
        discovery = ranked_discovery(METHODS[0], w)
        return discovery.select(target, whole_curve=False)["edges"], discovery

    def acdc_pass(w):
        discovery = Discovery(runs, [], w)
        return acdc.prune(discovery, methods["ACDC"]["threshold"])[0], discovery

    def hybrid(w):
        discovery = ranked_discovery(METHODS[0], w)
        grid = discovery.select(target, whole_curve=False)["grid_size"]
        return acdc.prune(discovery, methods[HYBRID]["threshold"], start=discovery.top(grid))[0], discovery

    return {("EAP", "top"): top("EAP"), (METHODS[0], "top"): top(METHODS[0]), (METHODS[0], "refined"): refined,
            ("ACDC", "ACDC"): acdc_pass, (HYBRID, "ACDC from EAP-IG's grid circuit"): hybrid}


def inclusion(edge: dict, resampled: list[set]) -> dict:
    """How often a kept edge recurs in the resampled circuits, with its 95% Wilson interval (None
    without resamples)."""
    hits = sum((edge["src"], edge["dst"]) in c for c in resampled)
    return {"src": edge["src"], "dst": edge["dst"], "frequency": hits / max(1, len(resampled)),
            "frequency_ci95": list(wilson(hits, len(resampled))) if resampled else None}


class Clock:
    """Wall and CPU time of each phase, for the benchmark's breakdown (echo: printed as each ends)."""

    def __init__(self, echo: bool = False):
        self.laps: dict[str, float] = {}
        self.cpu_laps: dict[str, float] = {}
        self.echo = echo
        self.t, self.cpu = time.perf_counter(), time.process_time()

    def lap(self, name: str) -> None:
        now, cpu = time.perf_counter(), time.process_time()
        self.laps[name], self.cpu_laps[name] = round(now - self.t, 2), round(cpu - self.cpu, 2)
        if self.echo:
            print(f"  {name}: {self.laps[name]:.1f} s wall, {self.cpu_laps[name]:.1f} s CPU", flush=True)
        self.t, self.cpu = now, cpu


def faithfulness(model, rows, batch_size, circuit=None) -> pd.DataFrame:
    """The faithfulness curves of every method, on the selection grid and on MIB's fractions."""
    out = []
    for method, m in circuit["methods"].items():
        total = circuit["total_edges"]
        out += [{"method": method, "grid": "selection", "n_edges": p["n_edges"], "fraction": p["n_edges"] / total,
                 "recovered": p["recovered"]} for p in m["curve"]]
        out += [{"method": method, "grid": "mib", "n_edges": p["n_edges"], "fraction": p["fraction"],
                 "recovered": p["recovered"]} for p in m["mib_curve"]]
    return pd.DataFrame(out)
