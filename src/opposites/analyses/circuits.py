"""Circuit discovery on the task's own prompts, scored the MIB way.

Scoring: EAP and EAP-IG estimate every edge's effect (patching/edges.py); on graphs small enough
(toy and trained models) exact per-edge patching (each edge alone cut from the clean run) is the
reference they are judged against.
Selection, per method: the top-|score| edges at each size of a grid (MIB's edge fractions and
powers of two), dangling edges dropped, exact recovery measured (clean prompts, corrupted writer
outputs on every edge outside the circuit); the smallest size that reaches `circuit_share` and stays
there for every larger size; then greedy refinement (try removing kept edges one at a time, weakest
first; keep the removal while exact recovery stays at the target). Completeness: the circuit's own
edges cut from the clean run. Integrated faithfulness: CPR and CMD over MIB's fractions. Stability:
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
from opposites.core import batches, direction, job_memo, prompt_clusters
from opposites.nodes import Edge, component_nodes
from opposites.patching.edges import Graph, edge_attribution, edge_forward, shared_prefix
from opposites.patching.engine import Weights
from opposites.stats import bias_corrected, interval, resample_weights, spearman_ci, wilson

METHODS = ("EAP-IG", "EAP")  # the first is the paper's circuit; "exact" joins where affordable
VARIANT_BYTES = 2 ** 30  # memory for batched exact evaluations (several circuits per forward)
ATTRIBUTION_BYTES = 2 ** 30  # memory for the gradient passes of EAP and EAP-IG


@dataclass
class Runs:
    """The prompts' batches with what exact edge patching needs, and per-prompt clean and corrupted
    logit differences (batch order)."""
    weights: Weights
    graph: Graph
    batches: list[dict]
    clean: torch.Tensor  # (prompt,)
    corrupted: torch.Tensor
    measured: dict = field(default_factory=dict)  # edge set -> (prompt,) exact logit differences
    cut: tuple = (None, [])  # the last prompt selection _drawn cut the batches to, and the cut batches
    clusters: list | None = None  # each prompt's resampling unit (prompts.cluster_of), batch order

    def prompt_weights(self, w: torch.Tensor | None = None) -> torch.Tensor:
        """(prompt,) weights of a bootstrap resample, or all prompts equally (w None)."""
        return torch.full_like(self.clean, 1 / len(self.clean)) if w is None else w

    def recovery(self, lds: torch.Tensor, w: torch.Tensor | None = None) -> torch.Tensor:
        """(circuit,) recovered share from per-prompt logit differences (circuit, prompt), prompts
        weighted by w (prompt,) (a bootstrap resample; None: all equally)."""
        w = self.prompt_weights(w)
        c, k = self.clean @ w, self.corrupted @ w
        if w.dim() == 1:  # one resample: prompts it did not draw may be unmeasured (NaN)
            lds, w = lds[:, w > 0], w[w > 0]
        return (lds @ w - k) / (c - k)

    def intervals(self, lds: torch.Tensor, seed: int) -> torch.Tensor:
        """(circuit, resample) recoveries over bootstrap resamples of the prompts (for intervals)."""
        return self.recovery(lds, resample_weights(len(self.clean), seed, clusters=self.clusters))


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


def _drawn(runs: Runs, prompts: torch.Tensor | None) -> list:
    """Per batch: (first prompt's index, the indices evaluated (batch order), and what edge_forward
    needs of them: corrupted writer outputs (writer, batch, pos, d_model), clean tokens, direction,
    bias and prefix), the batch cut to the drawn prompts when `prompts` (prompt,) bool is given. The
    last selection's cut batches are kept (runs.cut): a resample evaluates many circuits on one."""
    if prompts is not None:
        if runs.cut[0] is not None and torch.equal(runs.cut[0], prompts):
            return runs.cut[1]
        runs.cut = (None, [])  # the old cut is freed before the new one is made
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
    if prompts is not None:
        runs.cut = (prompts.clone(), out)
    return out


def exact_lds(runs: Runs, keeps: torch.Tensor, prompts: torch.Tensor | None = None) -> torch.Tensor:
    """(circuit, prompt) logit differences with each circuit's edges kept (keeps: (circuit, writer,
    reader)), several circuits per forward as memory allows. `prompts` (prompt,) bool: evaluate
    only these (a bootstrap resample's drawn prompts); the others are NaN. Keeping every edge is the
    clean run and keeping none the corrupted run, by definition: those are not evaluated."""
    out = torch.full((len(keeps), len(runs.clean)), float("nan"), dtype=torch.float64, device="cpu")
    everything = (keeps == runs.graph.allowed).flatten(1).all(1)
    nothing = ~keeps.flatten(1).any(1)
    out[everything], out[nothing] = runs.clean, runs.corrupted
    todo = (~everything & ~nothing).nonzero()[:, 0]
    if not len(todo):
        return out
    for start, idx, (b, tokens, d, bias, prefix) in tqdm(_drawn(runs, prompts), total=len(runs.batches),
                                                         desc=f"{len(todo)} circuits", leave=False, disable=len(todo) < 4):
        step = max(1, VARIANT_BYTES // (3 * b.numel() * b.element_size()))
        for j in range(0, len(todo) if len(idx) else 0, step):
            rows = todo[j:j + step]
            ld = edge_forward(runs.weights, tokens, d, bias, b, keeps[rows].to(b.device), prefix=prefix)[0]
            out[rows[:, None], start + idx] = ld.view(len(rows), -1).double().cpu()
    return out


Traces = list  # per batch: (prompt indices, Trace) or None, as traced_lds returns them


def traced_lds(runs: Runs, keep: torch.Tensor, prompts: torch.Tensor | None = None,
               base: Traces | None = None) -> tuple[torch.Tensor, Traces]:
    """exact_lds of one circuit keep (writer, reader), with each batch's forward recorded (Trace);
    given `base` (another circuit's traces, the same `prompts`), each batch starts at the first layer
    whose readers' edges differ and recomputes only the heads and MLPs the difference reaches: greedy
    refinement's trials differ from the kept circuit by a few edges, often in late layers."""
    out = torch.full((len(runs.clean),), float("nan"), dtype=torch.float64, device="cpu")
    traces = []  # per batch: (the prompts it holds, its Trace); None for a batch with none drawn
    for i, (start, idx, (b, tokens, d, bias, prefix)) in enumerate(_drawn(runs, prompts)):
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
    """(writer, reader, prompt) EAP (ig_steps 0) or EAP-IG scores, in raw logit-difference units.
    The backward pass keeps every reader's input of every prompt, so prompts go through it in
    chunks that fit ATTRIBUTION_BYTES."""
    out = []
    for r in tqdm(runs.batches, desc="EAP-IG" if ig_steps else "EAP", leave=False):
        b = r["batch"]
        per_prompt = 8 * len(runs.graph.readers) * (b.clean.shape[1] - r["prefix"].n) * runs.weights.W_E.shape[1] * 4  # bytes
        step = max(1, ATTRIBUTION_BYTES // per_prompt)
        for i in range(0, len(b.clean), step):
            j = slice(i, i + step)
            s = edge_attribution(runs.weights, b.clean[j], b.corrupted[j], r["dir"][j], r["bias"][j], ig_steps,
                                 r["prefix"].select(j))[0]
            out.append(s.double().cpu())
    return torch.cat(out, -1)


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


def scores_by_method(runs: Runs, ig_steps: int) -> dict[str, torch.Tensor]:
    """(writer, reader, prompt) scores of each method; exact ones where the graph is small enough."""
    scores = {"EAP-IG": attribution_scores(runs, ig_steps), "EAP": attribution_scores(runs, 0)}
    if int(runs.graph.allowed.sum()) <= EXACT_MAX_EDGES:
        scores["exact"] = exact_scores(runs)
    return scores


_SHARED = "_opposites_edge_runs"  # model attribute: the last edges() call's runs and per-prompt scores


def _runs_and_scores(model, rows, batch_size, ig_steps, release: bool = False) -> tuple[Runs, dict[str, torch.Tensor]]:
    """The prompts' prepared runs and per-prompt scores, computed once per job (job_memo): edges()
    leaves them on the model for circuit(), which takes them off (release)."""
    def make():
        runs = prepare(model, rows, batch_size)
        return runs, scores_by_method(runs, ig_steps)

    return job_memo(model, _SHARED, (tuple(r["clean"] for r in rows), batch_size, ig_steps), make, release)


def edges(model, rows, batch_size, ig_steps: int) -> pd.DataFrame:
    """Every edge's score by every method, normalised like patching: the estimated share of the
    clean-minus-corrupted logit difference that restoring this edge alone recovers. The prepared runs
    and the per-prompt scores stay on the model for circuit() in the same job (same prompts, batch
    size and ig_steps), which would otherwise compute them again."""
    runs, scores = _runs_and_scores(model, rows, batch_size, ig_steps)
    scale = (runs.clean - runs.corrupted).mean()
    ws, rs = runs.graph.allowed.nonzero(as_tuple=True)
    parts = [pd.DataFrame({"method": method, "src": [str(runs.graph.writers[i]) for i in ws.tolist()],
                           "dst": [str(runs.graph.readers[i]) for i in rs.tolist()],
                           "score": (s.mean(-1)[ws, rs] / scale).tolist()})
             for method, s in scores.items()]
    return pd.concat(parts, ignore_index=True)


# ---- selection ------------------------------------------------------------------------------------

def edge_set(circuit: list[Edge]) -> frozenset:
    """A circuit's key in Runs.measured: its (src, dst) pairs."""
    return frozenset((e.src, e.dst) for e in circuit)


class Discovery:
    """Selection for one ranking of the edges, on all prompts or one bootstrap resample (w)."""

    def __init__(self, runs: Runs, ranked: list[Edge], w: torch.Tensor | None = None):
        self.runs, self.ranked, self.w = runs, ranked, w
        self.writer = {node: i for i, node in enumerate(runs.graph.writers)}
        self.reader = {node: i for i, node in enumerate(runs.graph.readers)}
        self.evaluations = 0
        self.measured: dict[int, float] = {}
        self.tops: dict[int, list[Edge]] = {}  # size -> top(size)
        self.drawn = runs.prompt_weights(w) > 0  # (prompt,): the prompts this discovery weighs
        self.prompts = None if self.drawn.all() else self.drawn  # exact_lds's `prompts` (None: all)

    def missing(self, key: frozenset) -> bool:
        """Runs.measured lacks this edge set on some prompt this discovery weighs."""
        known = self.runs.measured.get(key)
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
        measured = self.runs.measured
        todo = {k: c for k, c in zip(keys, circuits) if self.missing(k)}
        if todo:
            self.evaluations += len(todo)
            lds = exact_lds(self.runs, torch.stack([self.mask(c) for c in todo.values()]), self.prompts)
            for k, new in zip(todo, lds):
                measured[k] = new if k not in measured else torch.where(new.isnan(), measured[k], new)
        return torch.stack([measured[k] for k in keys])

    def recover(self, circuits: list[list[Edge]]) -> list[float]:
        if not circuits:
            return []
        return self.runs.recovery(self.lds(circuits), self.w).tolist()

    def record(self, circuit: list[Edge], base: Traces | None = None) -> Traces:
        """Measure one circuit with its forwards recorded (traced_lds; from `base`, another circuit's
        traces, where given). What Runs.measured already holds for it is kept."""
        key = edge_set(circuit)
        self.evaluations += 1
        lds, traces = traced_lds(self.runs, self.mask(circuit), self.prompts, base)
        old = self.runs.measured.get(key)
        self.runs.measured[key] = lds if old is None else torch.where(old.isnan(), lds, old)
        return traces

    def measure(self, circuit: list[Edge], base: Traces) -> tuple[float, Traces | None]:
        """recover() of one circuit; not measured yet, it is measured starting from `base`, and its
        traces are returned too (None: it was measured before)."""
        traces = self.record(circuit, base) if self.missing(edge_set(circuit)) else None
        return self.recover([circuit])[0], traces

    def top(self, size: int) -> list[Edge]:
        """The `size` best-ranked edges without the dangling ones."""
        if size not in self.tops:
            self.tops[size] = prune_dangling(self.ranked[:size])
        return self.tops[size]

    def curve(self, sizes: list[int]) -> dict[int, float]:
        """Exact recovery of the top-`size` circuits, each size evaluated once."""
        new = sorted(set(sizes) - set(self.measured))
        self.measured.update(zip(new, self.recover([self.top(s) for s in new])))
        return {s: self.measured[s] for s in sizes}

    def refine(self, circuit: list[Edge], target: float) -> tuple[list[Edge], float]:
        """Try removing edges one at a time, weakest |score| first; keep a removal while recovery
        stays at or above the target (dangling edges left behind are dropped too). Circuits above
        REFINE_MAX_EDGES are returned as they are."""
        value = self.recover([circuit])[0]
        if len(circuit) > REFINE_MAX_EDGES:
            return circuit, value
        traces = None  # the kept circuit's forwards: each trial starts where its edges differ
        for e in tqdm(sorted(circuit, key=lambda e: abs(e.score))[:REFINE_MAX], desc="refinement", leave=False):
            if e not in circuit:
                continue
            trial = prune_dangling([x for x in circuit if x != e])
            if not trial:  # nothing kept: the corrupted run, by definition
                got, trial_traces = self.recover([trial])[0], None
            else:
                traces = traces or self.record(circuit)
                got, trial_traces = self.measure(trial, traces)
            if got >= target:
                circuit, value, traces = trial, got, trial_traces
            trial_traces = None  # a rejected trial's forwards are not kept while the next one runs
        return circuit, value

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


def measured(d: Discovery, kept: list[Edge], fractions: list[float], curve: list[list[Edge]], seed: int,
             whole: bool = False) -> dict:
    """A circuit's recovery interval, completeness, and CPR/CMD over its faithfulness curve (`curve`:
    one circuit per fraction; whole=True adds the whole graph, recovery 1, as the last point), each
    with a 95% interval over bootstrap resamples of the prompts' words (the same per-prompt exact
    logit differences, reweighted). CMD sums |1 - recovery|: noise only adds to it, more so in a
    resample, so its percentile interval can lie wholly above the estimate; it is bias-corrected like
    Spearman's rho (>= 0)."""
    runs, tail = d.runs, [1.0] if whole else []
    without = runs.graph.allowed & ~d.mask(kept)  # the circuit's edges cut from the clean run
    lost_lds = exact_lds(runs, without[None])
    curve_lds = d.lds(curve)
    cpr, cmd = cpr_cmd(fractions, runs.recovery(curve_lds).tolist() + tail)
    boot = runs.intervals(torch.cat([d.lds([kept]), lost_lds, curve_lds]), seed)
    boot_mib = [cpr_cmd(fractions, col.tolist() + tail) for col in boot[2:].T]  # (resample,) of (CPR, CMD)
    as_tensor = lambda xs: torch.tensor(xs, dtype=torch.float64, device="cpu")  # noqa: E731
    cmd_est = bias_corrected(as_tensor(cmd), as_tensor([c for _, c in boot_mib]), 0.0, math.inf)
    return {"recovered_ci95": interval(boot[0]),
            "completeness_lost": 1 - runs.recovery(lost_lds)[0].item(), "completeness_lost_ci95": interval(1 - boot[1]),
            "cpr": cpr, "cmd": cmd_est.value.item(), "cmd_uncorrected": cmd,
            "cpr_ci95": interval(as_tensor([c for c, _ in boot_mib])), "cmd_ci95": [cmd_est.ci_low.item(), cmd_est.ci_high.item()],
            "exact_evaluations": d.evaluations,
            "nodes": sorted((str(n) for n in component_nodes(kept)), key=_node_order),
            "edges": [e.record() for e in kept]}


def _describe(d: Discovery, found: dict, seed: int) -> dict:
    """The selected circuit's numbers (measured), its selection curve and MIB's faithfulness curve."""
    sizes = fraction_sizes(len(d.ranked))
    mib = d.curve(sizes)  # measured during selection already: the grid holds these sizes
    return {"n_edges": len(found["edges"]), "grid_size": found["grid_size"], "recovered": found["recovered"],
            **measured(d, found["edges"], list(FRACTIONS), [d.top(s) for s in sizes], seed),
            "curve": [{"n_edges": s, "recovered": v} for s, v in sorted(found["curve"].items())],
            "mib_curve": [{"fraction": f, "n_edges": s, "recovered": mib[s]} for f, s in zip(FRACTIONS, sizes)]}


def circuit(model, rows, batch_size, circuit_share: float, ig_steps: int, stability_resamples: int,
            seed: int, edges=None, clock: "Clock | None" = None) -> dict:
    """Per method in edges.csv: the selected circuit, its recovery, completeness, CPR/CMD and curves;
    the first method's circuit is the paper's (top-level nodes/edges). Stability of that circuit
    over seeded bootstrap resamples of the prompts (EAP-IG rescored per prompt, recoveries
    reweighted): each kept edge's inclusion frequency and the mean Jaccard between resampled circuits.
    `clock` (benchmarks) records the wall time of each phase."""
    clock = clock or Clock()
    runs, per_prompt = _runs_and_scores(model, rows, batch_size, ig_steps, release=True)  # method -> (writer, reader, prompt)
    clock.lap("runs")
    methods = {}
    for method, df in edges.groupby("method", sort=False):
        d = Discovery(runs, ranked_records(df))
        methods[method] = _describe(d, d.select(circuit_share), seed)
        clock.lap(f"selection {method}")
    if int(runs.graph.allowed.sum()) <= ACDC_MAX_EDGES:  # ACDC: about one exact forward per edge and threshold
        methods["ACDC"] = acdc.discover(Discovery(runs, []), circuit_share, seed)
        clock.lap("selection ACDC")
    if "exact" in per_prompt:
        ws, rs = runs.graph.allowed.nonzero(as_tuple=True)
        exact = per_prompt["exact"][ws, rs]  # (edge, prompt)
        for method in METHODS:
            rho = spearman_ci(per_prompt[method][ws, rs], exact, seed, runs.clusters)  # bias-corrected
            methods[method] |= {"spearman_vs_exact": rho.value.item(),
                                "spearman_vs_exact_ci95": [rho.ci_low.item(), rho.ci_high.item()]}
    main = methods[METHODS[0]]
    resampled, evaluations = [], 0
    if stability_resamples:
        W = resample_weights(len(runs.clean), seed, stability_resamples, clusters=runs.clusters)  # (prompt, resample)
        for i in tqdm(range(stability_resamples), desc="stability", leave=False):
            d = Discovery(runs, ranked_edges(runs, per_prompt[METHODS[0]], W[:, i]), W[:, i])
            resampled.append({(str(e.src), str(e.dst)) for e in d.select(circuit_share, whole_curve=False)["edges"]})
            evaluations += d.evaluations
    clock.lap("stability")
    pairs = [jaccard(a, b) for i, a in enumerate(resampled) for b in resampled[i + 1:]]
    stability = {"resamples": stability_resamples, "exact_evaluations": evaluations,
                 "inclusion": [inclusion(e, resampled) for e in main["edges"]],
                 "mean_jaccard": sum(pairs) / len(pairs) if pairs else None,
                 "circuits": [sorted(f"{s}->{t}" for s, t in c) for c in resampled]}
    return {"target": circuit_share, "method": METHODS[0], "ig_steps": ig_steps,
            "total_edges": int(runs.graph.allowed.sum()), "n_prompts": len(runs.clean),
            "clean_logit_diff": runs.clean.mean().item(), "corrupted_logit_diff": runs.corrupted.mean().item(),
            "n_edges": main["n_edges"], "recovered": main["recovered"], "nodes": main["nodes"], "edges": main["edges"],
            "methods": methods, "stability": stability}


def inclusion(edge: dict, resampled: list[set]) -> dict:
    """How often a kept edge recurs in the resampled circuits, with its 95% Wilson interval (None
    without resamples)."""
    k = sum((edge["src"], edge["dst"]) in c for c in resampled)
    return {"src": edge["src"], "dst": edge["dst"], "frequency": k / max(1, len(resampled)),
            "frequency_ci95": list(wilson(k, len(resampled))) if resampled else None}


class Clock:
    """Wall time of each phase, for the benchmark's breakdown."""

    def __init__(self):
        self.laps: dict[str, float] = {}
        self.t = time.perf_counter()

    def lap(self, name: str) -> None:
        now = time.perf_counter()
        self.laps[name] = round(now - self.t, 2)
        self.t = now


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
