"""The computational graph at edge level, for circuit discovery: writers (embedding, each head's
output, each MLP) and readers (each head's query, key and value input, each MLP's input, the
logits). Each reader's input is the sum of the earlier writers' outputs (plus biases), so an edge
weights -> r can be cut by giving r the corrupted run's output of weights instead of the current one.

  edge_forward(..., keep)   exact edge patching: run the clean prompts with every edge outside
                            `keep` fed the corrupted writer output (all edges kept = clean run,
                            none = corrupted run);
  edge_attribution(...)     edge attribution patching, per prompt, every edge at once:
                            (clean - corrupted writer output) . d(logit diff)/d(reader input),
                            summed over positions. EAP (Syed et al. 2023) takes the gradient on the
                            corrupted run (the original code takes it on the clean run); EAP-IG
                            (Hanna et al. 2024) averages it over `ig_steps` runs whose input
                            embeddings lie on the straight line from corrupted to clean (midpoints
                            alpha = (k - 1/2) / ig_steps), which fixes EAP's zero-gradient failures.

Both compute only the positions from the first one where the clean and corrupted prompts differ
(`Prefix`): before it the two runs, and so every mix of them, are the same, every edge carries
(clean - corrupted) = 0 there, and those positions' keys and values are computed once.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import torch
from torch import Tensor

from opposites.nodes import Node
from opposites.patching import engine
from opposites.patching.engine import Weights


@dataclass(frozen=True)
class Graph:
    n_layers: int
    n_heads: int

    @cached_property
    def writers(self) -> list[Node]:
        """In computation order: embed, the heads of layer 0, MLP 0, the heads of layer 1, ..."""
        out = [Node("embed")]
        for layer in range(self.n_layers):
            out += [Node("head", layer, h) for h in range(self.n_heads)] + [Node("mlp", layer)]
        return out

    @cached_property
    def readers(self) -> list[Node]:
        """Per layer: every head's q input, then k, then v; then the MLP; last the logits."""
        out = []
        for layer in range(self.n_layers):
            out += [Node("head", layer, h, x) for x in "qkv" for h in range(self.n_heads)] + [Node("mlp", layer)]
        return out + [Node("logits")]

    def writers_before(self, layer: int, mlp: bool = False) -> int:
        """How many writers precede layer's heads (or, mlp=True, layer's MLP)."""
        return 1 + layer * (self.n_heads + 1) + (self.n_heads if mlp else 0)

    def reader_slice(self, layer: int) -> slice:
        """Readers of one layer: 3 * n_heads head inputs (q, k, v major) then the MLP."""
        start = layer * (3 * self.n_heads + 1)
        return slice(start, start + 3 * self.n_heads + 1)

    def reader_layer(self, readers: Tensor) -> Tensor:
        """The layer of each reader index (n_layers for the logits)."""
        return torch.div(readers, 3 * self.n_heads + 1, rounding_mode="floor")

    @cached_property
    def allowed(self) -> Tensor:
        """(writer, reader) mask of the edges that exist."""
        mask = torch.zeros(len(self.writers), len(self.readers), dtype=torch.bool, device="cpu")
        for l in range(self.n_layers):
            layer_readers = self.reader_slice(l)
            mask[: self.writers_before(l), layer_readers.start: layer_readers.stop - 1] = True
            mask[: self.writers_before(l, mlp=True), layer_readers.stop - 1] = True
        mask[:, -1] = True
        return mask


class _Cuts:
    """What cutting edges takes from each reader's input, kept as the forward runs: the change
    (current - corrupted output) of each writer, per variant, and their running sum. A writer none
    of whose input edges is kept writes exactly its corrupted output: its change is 0, so it is
    counted but not stored (`rows` lists the stored writers) and adds nothing. A reader loses the sum
    over its cut edges; per variant that sum runs over whichever is fewer, the cut edges or the kept
    ones (all writers so far minus the kept ones), sparse or dense by the density of all its edges
    (`_sparse_sum`): the same sums as over every writer, without the zero terms."""

    def __init__(self, corrupt: Tensor, keep: Tensor):
        self.corrupt, self.keep = corrupt, keep  # (writer, batch, pos, d_model); (variant, writer, reader)
        n_variants, n_writers, size = keep.shape[0], corrupt.shape[0], corrupt[0].numel()
        self.diff = corrupt.new_empty(n_variants, n_writers, size)  # (variant, stored writer, batch * pos * d_model)
        self.rows: list[int] = []  # the writer of each stored row, ascending
        self.total = corrupt.new_zeros(n_variants, size)
        self.n = 0  # writers recorded

    def add(self, count: int, live: list[int], out: Tensor | None) -> None:
        """Record the next `count` writers: those at offsets `live` (ascending) with their outputs
        `out` (live, variant * batch, pos, d_model); the others wrote their corrupted output."""
        writers, m, n_variants = [self.n + i for i in live], len(self.rows), self.keep.shape[0]
        if writers:
            corrupt = self.corrupt[writers].reshape(len(writers), 1, -1)
            if n_variants == 1:  # straight into the stored rows
                torch.sub(out.reshape(len(writers), 1, -1), corrupt, out=self.diff[0, m:m + len(writers)].unsqueeze(1))
            else:
                self.diff[:, m:m + len(writers)] = (out.reshape(len(writers), n_variants, -1) - corrupt).transpose(0, 1)
        self._stored(writers, m)
        self.n += count

    def add_changes(self, count: int, changes: dict[int, Tensor]) -> None:
        """Record the next `count` writers given their changes: offset -> (variant, size), the
        others' changes 0."""
        m = len(self.rows)
        for i, offset in enumerate(sorted(changes)):
            self.diff[:, m + i] = changes[offset]
        self._stored([self.n + offset for offset in sorted(changes)], m)
        self.n += count

    def _stored(self, writers: list[int], m: int) -> None:
        for i in range(len(writers)):  # one writer at a time: the running sum adds in writer order
            self.total += self.diff[:, m + i]
        self.rows += writers

    def lost(self, readers: Tensor, shape: torch.Size) -> Tensor | None:
        """(reader, variant * batch, pos, d_model) input lost per reader; None when nothing is cut."""
        keep = self.keep[:, : self.n, readers.to(self.keep.device)]  # (variant, writer, reader)
        if keep.all():
            return None
        stored = torch.tensor(self.rows, dtype=torch.long, device=keep.device)
        m, out = len(self.rows), None
        for v, k in enumerate(keep):
            fewer_kept = int(k.sum()) * 2 <= k.numel()  # sum the kept edges and take them from the total
            edges = k if fewer_kept else ~k  # (writer, reader)
            dense = int(edges.sum()) > DENSE * edges.numel()
            s = _sparse_sum(edges[stored].T.to(self.diff.device), self.diff[v, :m], dense)  # (reader, size)
            if len(keep) == 1:  # one variant: its part is the whole
                return (self.total[v] - s if fewer_kept else s).view(keep.shape[2], *shape)
            out = s.new_empty(len(s), len(keep), s.shape[1]) if out is None else out  # (reader, variant, size)
            if fewer_kept:
                torch.sub(self.total[v], s, out=out[:, v])
            else:
                out[:, v] = s
        return out.view(keep.shape[2], *shape)


DENSE = 0.04  # edge density above which a dense product sums the changes (measured on CPU)


def _sparse_sum(mask: Tensor, rows: Tensor, dense: bool) -> Tensor:
    """(reader, size): for each reader, the sum of the rows (writer, size) its mask (reader, writer)
    selects; a dense product, or a sparse one (cheaper below a few percent of edges)."""
    if dense:
        return mask.to(rows.dtype) @ rows
    idx = mask.nonzero().T
    m = torch.sparse_coo_tensor(idx, torch.ones(idx.shape[1], dtype=rows.dtype, device=rows.device), mask.shape,
                                check_invariants=False, is_coalesced=True)
    return torch.sparse.mm(m, rows)


@dataclass
class Trace:
    """One circuit's exact forward (edge_forward with one `keep`, recorded), kept so that a circuit
    whose edges differ from it only in readers of layer L or later starts at layer L: before it both
    forwards compute the same, and from it only the components whose input differs are
    recomputed. Per layer start (and once more before the logits): the residual stream and the
    running sum of every writer's change; the residual stream after each layer's heads; and the
    stored writers' changes (_Cuts)."""
    keep: Tensor  # (writer, reader)
    resid: list[Tensor]  # n_layers + 1 of (batch, pos, d_model)
    mid: list[Tensor]  # n_layers of (batch, pos, d_model): after each layer's heads
    total: list[Tensor]  # n_layers + 1 of (1, size)
    diff: Tensor  # (1, stored writer, size)
    rows: list[int]  # the writer of each stored row

    def layer_start(self, resid: Tensor, total: Tensor) -> None:
        """Record the state where the next layer (or the logits) begins."""
        self.resid.append(resid)
        self.total.append(total.clone())

    def start_layer(self, graph: Graph, keep: Tensor) -> int:
        """The first layer whose readers' input edges differ between this trace's circuit and `keep`."""
        changed = (self.keep != keep).any(0).nonzero()[:, 0]  # (reader,)
        return int(graph.reader_layer(changed).min()) if len(changed) else graph.n_layers


@dataclass
class Prefix:
    """The first n positions, identical in a batch's clean and corrupted prompts: each layer's keys
    and values there, (batch, n, head, d_head). Forwards given a Prefix compute positions n on."""
    n: int
    k: list[Tensor]
    v: list[Tensor]

    def select(self, i) -> "Prefix":
        """The prompts i (an index or slice of the batch)."""
        return Prefix(self.n, [t[i] for t in self.k], [t[i] for t in self.v])

    def kv(self, layer: int, heads: Tensor | slice, repeat: int) -> tuple[Tensor, Tensor]:
        """Keys and values of `heads` (indices or a slice), the batch repeated `repeat` times (variant-major)."""
        return tuple(t[layer][:, :, heads].repeat(repeat, 1, 1, 1) for t in (self.k, self.v))


def shared_prefix(weights: Weights, clean: Tensor, corrupted: Tensor) -> Prefix:
    """The prefix clean and corrupted share (at least BOS), with its keys and values."""
    n = engine.first_difference(clean, corrupted)
    run = engine.full_forward(weights, clean[:, :n])
    return Prefix(n, [run[f"k.{l}"] for l in range(weights.n_layers)], [run[f"v.{l}"] for l in range(weights.n_layers)])


def embed(weights: Weights, tokens: Tensor) -> Tensor:
    """The embedding writer's output, (batch, pos, d_model)."""
    return weights.W_E[tokens] + weights.W_pos[: tokens.shape[1]]


def edge_forward(weights: Weights, tokens: Tensor, direction: Tensor, bias: Tensor, corrupt: Tensor | None = None,
                 keep: Tensor | None = None, grad_leaves: bool = False,
                 x: Tensor | None = None, prefix: Prefix | None = None,
                 record: bool = False, resume: Trace | None = None) -> tuple[Tensor, Tensor | Trace | None, list[Tensor]]:
    """Forward with one input per reader. Returns (logit diff per prompt, writer outputs
    (writer, batch, pos, d_model; None with `keep`), reader-input leaves for gradients when grad_leaves). `keep`
    (writer, reader), or (variant, writer, reader) for several circuits in one pass: then the logit
    differences are (variant * batch,), variant-major. `x` replaces the embedding (EAP-IG's
    interpolated inputs). With a `prefix`, positions before prefix.n are not computed: `pos` in x,
    `corrupt`, the writer outputs and the leaves counts from prefix.n. With one `keep`: `record`
    returns the forward's Trace in place of the writer outputs, and `resume` (another circuit's
    Trace on the same tokens, corrupt and prefix) starts at the first layer where the two differ
    and recomputes only the heads and MLPs whose input differs (some input edge added or removed, or
    kept from a writer whose output differs); the others' outputs are the trace's. It gives the
    whole forward's numbers up to float rounding.

    With `keep`, a head or MLP none of whose input edges is kept reads exactly the corrupted run's
    residual, so its output is the corrupted one (`corrupt`) and is not recomputed: a small circuit
    costs the forward of its own nodes."""
    graph = Graph(weights.n_layers, weights.n_heads)
    start = 0 if prefix is None else prefix.n
    x = embed(weights, tokens)[:, start:] if x is None else x  # (batch, pos, d_model)
    cuts, n_variants = None, 1
    if keep is not None:
        keep = keep[None] if keep.dim() == 2 else keep
        n_variants = keep.shape[0]
        x, direction, bias = x.repeat(n_variants, 1, 1), direction.repeat(n_variants, 1), bias.repeat(n_variants)
        cuts = _Cuts(corrupt, keep)
    assert not (record or resume) or (keep is not None and n_variants == 1), "traces are of single circuits (one keep)"
    trace = Trace(keep[0], [], [], [], cuts.diff, cuts.rows) if record else None
    outs, leaves = [], []
    resid = x
    n_heads = weights.n_heads

    def write(out: Tensor, live: list[int], computed: Tensor | None) -> None:
        """The next writers' outputs (writer, batch, pos, d_model): those at offsets `live` were
        `computed`, the others are the corrupted run's; with keep, the cuts hold what is needed."""
        if cuts is None:
            outs.extend(out)
        else:
            cuts.add(len(out), live, computed)

    def reader_inputs(readers: Tensor, stream: Tensor | None = None) -> Tensor:
        stream = resid if stream is None else stream
        inp = stream.expand(len(readers), *stream.shape)
        lost = None if cuts is None else cuts.lost(readers, stream.shape)
        if lost is not None:
            inp = inp - lost
        if grad_leaves:
            leaf = torch.zeros_like(inp, requires_grad=True)
            leaves.append(leaf)
            inp = inp + leaf
        return inp  # (reader, batch, pos, d_model)

    def active(readers: slice, n_writers: int) -> Tensor:
        """(reader,) bool: readers with some kept input edge."""
        n = readers.stop - readers.start
        if cuts is None:
            return torch.ones(n, dtype=torch.bool, device=dev)
        return keep[:, :n_writers, readers].any(0).any(0).to(dev)

    dev = x.device
    first_layer = 0
    if resume is None:
        write(x[None], [0], x[None])
    else:  # the state where layer first_layer begins is the traced circuit's
        first_layer = resume.start_layer(graph, keep[0])
        cuts.n = graph.writers_before(first_layer) if first_layer < weights.n_layers else len(graph.writers)
        cuts.rows = [w for w in resume.rows if w < cuts.n]
        cuts.diff[:, :len(cuts.rows)] = resume.diff[:, :len(cuts.rows)]
        cuts.total = resume.total[first_layer].clone()
        if trace is not None:
            trace.rows = cuts.rows
            trace.resid, trace.mid = resume.resid[:first_layer], resume.mid[:first_layer]
            trace.total = resume.total[:first_layer]
        return _resumed(weights, graph, keep[0], cuts, resume, first_layer, prefix, trace, reader_inputs, direction, bias)

    def checkpoint() -> None:
        if trace is not None:
            trace.layer_start(resid, cuts.total)

    for l in range(first_layer, weights.n_layers):
        checkpoint()
        first, first_writer = graph.reader_slice(l).start, graph.writers_before(l)
        kept_input = active(slice(first, first + 3 * n_heads), first_writer).view(3, n_heads)  # (q|k|v, head)
        live_heads = kept_input.any(0).nonzero()[:, 0]  # heads with a kept input
        if len(live_heads) < n_heads:  # heads left out give their corrupted outputs
            heads = corrupt[first_writer:first_writer + n_heads]  # (head, batch, pos, d_model)
            heads = heads.repeat(1, n_variants, 1, 1) if n_variants > 1 else heads  # (head, variant * batch, ...)
        out = None
        if len(live_heads):
            readers = torch.cat([first + i * n_heads + live_heads for i in range(3)])
            inp = reader_inputs(readers).view(3, len(live_heads), *resid.shape)
            out = _head_outputs(weights, l, inp, live_heads, prefix, n_variants)
            heads = out if len(live_heads) == n_heads else heads.index_copy(0, live_heads, out)
        write(heads, live_heads.tolist(), out)
        resid = resid + heads.sum(0) + weights.b_O[l]
        if trace is not None:
            trace.mid.append(resid)
        mlp_reader, w_mlp = torch.tensor([first + 3 * n_heads], device=dev), graph.writers_before(l, mlp=True)
        if active(slice(first + 3 * n_heads, first + 3 * n_heads + 1), w_mlp):
            m, live = engine.mlp(weights, l, reader_inputs(mlp_reader)[0]), [0]
        else:
            m, live = corrupt[w_mlp].repeat(n_variants, 1, 1) if n_variants > 1 else corrupt[w_mlp], []
        write(m[None], live, m[None])
        resid = resid + m
    checkpoint()
    final = reader_inputs(torch.tensor([len(graph.readers) - 1], device=dev))[0]
    ld = engine.read_logit_diff(weights, final[:, -1], direction, bias)
    return ld, (torch.stack(outs) if cuts is None else trace), leaves


def _head_outputs(weights: Weights, l: int, inp: Tensor, live_heads: Tensor, prefix: Prefix | None, n_variants: int) -> Tensor:
    """(head, variant * batch, pos, d_model) outputs of layer l's heads A from their q, k and v
    inputs (3, head, variant * batch, pos, d_model)."""
    heads = slice(None) if len(live_heads) == weights.n_heads else live_heads  # every head: views of the weights, not copies
    h = engine.layer_norm(inp, weights.ln1[l], weights.eps)
    q, k, v = (torch.einsum("hbpm,hmd->bphd", h[i], W[l][heads]) + b[l][heads]
               for i, (W, b) in enumerate(((weights.W_Q, weights.b_Q), (weights.W_K, weights.b_K), (weights.W_V, weights.b_V))))
    if prefix is not None:
        k_pre, v_pre = prefix.kv(l, heads, n_variants)
        k, v = torch.cat([k_pre, k], 1), torch.cat([v_pre, v], 1)
    z, _ = engine.attend(weights, q, k, v)
    return torch.einsum("bphd,hdm->hbpm", z, weights.W_O[l][heads])


def _resumed(weights: Weights, graph: Graph, keep: Tensor, cuts: _Cuts, resume: Trace, first_layer: int,
             prefix: Prefix | None, trace: Trace | None, reader_inputs, direction: Tensor, bias: Tensor):
    """edge_forward's layers from first_layer on, from another circuit's trace: a head or MLP is
    recomputed only when its input may differ from the trace's (one of its readers' edges differs,
    or it keeps an edge from a writer whose output differs, `moved`); the others' changes are the
    trace's. The residual stream is the trace's plus the moved writers' output changes (`shift`)."""
    n_heads, dev = weights.n_heads, resume.resid[0].device
    changed = (resume.keep != keep).any(0)  # (reader,) readers whose input edges differ
    old = {w: resume.diff[0, i] for i, w in enumerate(resume.rows)}  # writer -> its change in the trace
    moved = torch.zeros(len(graph.writers), dtype=torch.bool, device=keep.device)
    shift = None  # (1, size): sum of the moved writers' output changes so far

    def at(base: Tensor) -> Tensor:
        return base if shift is None else base + shift.view(base.shape)

    def redo(readers: slice) -> Tensor:
        """(reader,) bool: readers whose input may differ from the trace's."""
        return changed[readers] | keep[:cuts.n][moved[:cuts.n], readers].any(0)

    def settle(count: int, recomputed: dict[int, Tensor | None]) -> None:
        """Record the next `count` writers: those at the offsets recomputed with their new changes
        (None: 0), the others with the trace's."""
        nonlocal shift
        changes = {}
        for offset in range(count):
            w = cuts.n + offset
            before = old.get(w)
            after = recomputed[offset] if offset in recomputed else before
            if after is not None:
                changes[offset] = after
            if offset in recomputed and not (before is None and after is None):
                step = (0 if after is None else after) - (0 if before is None else before)
                shift = step if shift is None else shift + step
                moved[w] = True
        cuts.add_changes(count, changes)

    for l in range(first_layer, weights.n_layers):
        resid = at(resume.resid[l])
        if trace is not None:
            trace.layer_start(resid, cuts.total)
        first, first_writer = graph.reader_slice(l).start, graph.writers_before(l)
        qkv = slice(first, first + 3 * n_heads)
        active = keep[:first_writer, qkv].any(0).view(3, n_heads).any(0)
        again = redo(qkv).view(3, n_heads).any(0)  # heads to recompute
        live_heads = (active & again).nonzero()[:, 0].to(dev)
        recomputed = {h: None for h in again.nonzero()[:, 0].tolist()}
        if len(live_heads):
            readers = torch.cat([first + i * n_heads + live_heads for i in range(3)])
            inp = reader_inputs(readers, resid).view(3, len(live_heads), *resid.shape)
            out = _head_outputs(weights, l, inp, live_heads, prefix, 1)
            for h, o in zip(live_heads.tolist(), out):
                recomputed[h] = (o - cuts.corrupt[first_writer + h]).reshape(1, -1)
        settle(n_heads, recomputed)
        mid = at(resume.mid[l])
        if trace is not None:
            trace.mid.append(mid)
        w_mlp, mlp = graph.writers_before(l, mlp=True), first + 3 * n_heads
        recomputed = {}
        if redo(slice(mlp, mlp + 1)).any():
            recomputed[0] = None
            if keep[:w_mlp, mlp].any():
                m = engine.mlp(weights, l, reader_inputs(torch.tensor([mlp], device=dev), mid)[0])
                recomputed[0] = (m - cuts.corrupt[w_mlp]).reshape(1, -1)
        settle(1, recomputed)
    resid = at(resume.resid[weights.n_layers])
    if trace is not None:
        trace.layer_start(resid, cuts.total)
    final = reader_inputs(torch.tensor([len(graph.readers) - 1], device=dev), resid)[0]
    return engine.read_logit_diff(weights, final[:, -1], direction, bias), trace, []


def edge_attribution(weights: Weights, clean: Tensor, corrupted: Tensor, direction: Tensor, bias: Tensor,
                     ig_steps: int = 0, prefix: Prefix | None = None) -> tuple[Tensor, Tensor, Tensor]:
    """(writer, reader, prompt) estimated change of the logit difference when the edge alone carries
    the clean writer output into the corrupted run (0 where no edge): EAP with ig_steps = 0, EAP-IG
    with ig_steps > 0; and the clean and corrupted logit differences per prompt."""
    graph = Graph(weights.n_layers, weights.n_heads)
    with torch.no_grad():
        ld_clean, clean_out, _ = edge_forward(weights, clean, direction, bias, prefix=prefix)
    x_clean, x_corr = clean_out[0], embed(weights, corrupted)[:, 0 if prefix is None else prefix.n:]  # embedding outputs
    alphas = [(k - 0.5) / ig_steps for k in range(1, ig_steps + 1)] if ig_steps else [0.0]
    grads = None
    for alpha in alphas:
        with torch.enable_grad():
            ld, outs, leaves = edge_forward(weights, corrupted, direction, bias, grad_leaves=True,
                                            x=x_corr + alpha * (x_clean - x_corr), prefix=prefix)
            step = torch.autograd.grad(ld.sum(), leaves)
        grads = step if grads is None else [a + b for a, b in zip(grads, step)]
    if alphas == [0.0]:  # EAP: the gradient run is the corrupted run itself
        ld_corrupted, corr_out = ld.detach(), outs.detach()
    else:  # EAP-IG's runs lie between the inputs: the corrupted run is one more forward
        with torch.no_grad():
            ld_corrupted, corr_out, _ = edge_forward(weights, corrupted, direction, bias, prefix=prefix)
    diff = clean_out - corr_out  # (writer, batch, pos, d_model)
    scores = torch.zeros(len(graph.writers), len(graph.readers), diff.shape[1], dtype=diff.dtype, device=diff.device)
    start = 0
    for grad in grads:  # one per reader group, in reader order
        n = grad.shape[0]
        scores[:, start:start + n] = torch.einsum("wbpm,rbpm->wrb", diff, grad) / len(alphas)
        start += n
    return scores * graph.allowed.to(diff.device)[..., None], ld_clean, ld_corrupted
