"""The computational graph at edge level, for circuit discovery: writers (embedding, each head's
output, each MLP) and readers (each head's q, k and v input, each MLP's input, the logits). A
reader's input is the sum of the earlier writers' outputs, so an edge writer -> reader is cut by
giving the reader the corrupted run's output of that writer instead.

  edge_forward(..., keep)  exact edge patching: the clean prompts with every edge outside `keep` fed
                           the corrupted writer output (EdgeForward, on engine.Forward's loop);
  edge_attribution(...)    EAP (Syed et al. 2023; gradient on the corrupted run) and EAP-IG (Hanna
                           et al. 2024; gradients averaged over `ig_steps` inputs between corrupted
                           and clean): (clean - corrupted writer output) . d(logit diff)/d(reader input).

Both compute only the positions from the first one where clean and corrupted differ (`Prefix`):
before it every edge carries 0 and the keys and values are computed once.
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
    """What cutting edges takes from each reader's input: each writer's change (current - corrupted
    output) per variant, and their running sum. A writer with no kept input edge has change 0: it is
    counted, not stored (`rows`: the stored writers). A reader loses the sum over its cut edges,
    summed over whichever is fewer, the cut or the kept edges (total minus the kept ones)."""

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
    """One circuit's recorded exact forward: a circuit whose edges differ from it only in readers of
    layer L or later resumes from it at layer L (ResumedEdgeForward)."""
    keep: Tensor  # (writer, reader)
    resid: list[Tensor]  # n_layers + 1 of (batch, pos, d_model)
    mid: list[Tensor]  # n_layers of (batch, pos, d_model): after each layer's heads
    total: list[Tensor]  # n_layers + 1 of (1, size)
    diff: Tensor  # (1, stored writer, size)
    rows: list[int]  # the writer of each stored row

    def start_layer(self, graph: Graph, keep: Tensor) -> int:
        """The first layer whose readers' input edges differ between this trace's circuit and `keep`."""
        changed = (self.keep != keep).any(0).nonzero()[:, 0]  # (reader,)
        return int(graph.reader_layer(changed).min()) if len(changed) else graph.n_layers


@dataclass
class Prefix:
    """The first n positions, identical in clean and corrupted: each layer's keys and values there
    (batch, n, head, d_head). Forwards given a Prefix compute positions n on."""
    n: int
    k: list[Tensor]
    v: list[Tensor]

    def select(self, i) -> "Prefix":
        """The prompts i (an index or slice of the batch)."""
        return Prefix(self.n, [t[i] for t in self.k], [t[i] for t in self.v])


def shared_prefix(weights: Weights, clean: Tensor, corrupted: Tensor) -> Prefix:
    """The prefix clean and corrupted share (at least BOS), with its keys and values."""
    n = engine.first_difference(clean, corrupted)
    run = engine.full_forward(weights, clean[:, :n])
    return Prefix(n, [run[f"k.{l}"] for l in range(weights.n_layers)], [run[f"v.{l}"] for l in range(weights.n_layers)])


def edge_forward(weights: Weights, tokens: Tensor, direction: Tensor, bias: Tensor, corrupt: Tensor | None = None,
                 keep: Tensor | None = None, grad_leaves: bool = False,
                 x: Tensor | None = None, prefix: Prefix | None = None,
                 record: bool = False, resume: Trace | None = None) -> tuple[Tensor, Tensor | Trace | None, list[Tensor]]:
    """Forward with one input per reader. Returns (logit diff per prompt; without `keep` the writer
    outputs (writer, batch, pos, d_model), with it the Trace when `record`, else None; the reader-input
    leaves when grad_leaves). `keep` (writer, reader), or (variant, writer, reader): logit differences
    (variant * batch,), variant-major. `x` replaces the embedding (EAP-IG). With a `prefix`, pos counts
    from prefix.n. `resume`: another circuit's Trace on the same inputs, recomputing only what differs."""
    x = engine.embed(weights, tokens)[:, 0 if prefix is None else prefix.n:] if x is None else x  # (batch, pos, d_model)
    if keep is not None:
        keep = keep[None] if keep.dim() == 2 else keep  # (variant, writer, reader)
        x, direction, bias = x.repeat(len(keep), 1, 1), direction.repeat(len(keep), 1), bias.repeat(len(keep))
    assert not (record or resume) or (keep is not None and keep.shape[0] == 1), "traces are of single circuits (one keep)"
    if resume is not None:
        forward = ResumedEdgeForward(weights, direction, bias, corrupt, keep, prefix, resume, record)
        return forward.run(x, forward.first_layer), forward.trace, []
    forward = EdgeForward(weights, direction, bias, corrupt, keep, prefix, record, grad_leaves)
    forward.write(x[None], [0], x[None])  # the embedding
    ld = forward.run(x)
    return ld, (torch.stack(forward.outs) if keep is None else forward.trace), forward.leaves


VARIANT_BYTES = 2 ** 30  # memory for the circuits of one circuits_forward pass
ATTRIBUTION_BYTES = 2 ** 30  # memory for the gradient passes of edge_attribution


def circuits_forward(weights: Weights, tokens: Tensor, direction: Tensor, bias: Tensor, corrupt: Tensor,
                     keeps: Tensor, prefix: Prefix | None = None) -> Tensor:
    """(circuit, batch) logit differences of circuits keeps (circuit, writer, reader), as many per pass as fit VARIANT_BYTES."""
    step = max(1, VARIANT_BYTES // (3 * corrupt.numel() * corrupt.element_size()))
    return torch.cat([edge_forward(weights, tokens, direction, bias, corrupt, keeps[j:j + step].to(corrupt.device),
                                   prefix=prefix)[0].view(len(keeps[j:j + step]), -1) for j in range(0, len(keeps), step)])


class EdgeForward(engine.Forward):
    """engine.Forward with one input per reader: the residual stream minus what its cut edges lose
    (_Cuts); a head or MLP with no kept input edge writes its corrupted output, uncomputed."""

    def __init__(self, weights: Weights, direction: Tensor, bias: Tensor, corrupt: Tensor | None, keep: Tensor | None,
                 prefix: Prefix | None, record: bool = False, grad_leaves: bool = False):
        super().__init__(weights, direction, bias, end_only=False)
        self.graph = Graph(weights.n_layers, weights.n_heads)
        self.corrupt, self.keep_edges, self.prefix, self.grad_leaves = corrupt, keep, prefix, grad_leaves
        self.n_variants = 1 if keep is None else keep.shape[0]
        self.cuts = None if keep is None else _Cuts(corrupt, keep)
        self.trace = Trace(keep[0], [], [], [], self.cuts.diff, self.cuts.rows) if record else None
        self.outs: list[Tensor] = []  # without keep: every writer's output
        self.leaves: list[Tensor] = []

    def write(self, out: Tensor, live: list[int], computed: Tensor | None) -> None:
        """The next writers' outputs (writer, batch, pos, d_model): those at offsets `live` `computed`, the others corrupted."""
        if self.cuts is None:
            self.outs.extend(out)
        else:
            self.cuts.add(len(out), live, computed)

    def reader_inputs(self, readers: list[int] | Tensor, stream: Tensor) -> Tensor:
        """(reader, batch, pos, d_model): the residual stream minus what each reader's cut edges lose."""
        readers = torch.as_tensor(readers, device=stream.device)
        inp = stream.expand(len(readers), *stream.shape)
        lost = None if self.cuts is None else self.cuts.lost(readers, stream.shape)
        if lost is not None:
            inp = inp - lost
        if self.grad_leaves:
            leaf = torch.zeros_like(inp, requires_grad=True)
            self.leaves.append(leaf)
            inp = inp + leaf
        return inp

    def head_outputs(self, layer: int, x: Tensor, live_heads: Tensor) -> Tensor:
        """(head, variant * batch, pos, d_model): layer's heads `live_heads` from their own q, k and v inputs."""
        w, first = self.weights, self.graph.reader_slice(layer).start
        readers = torch.cat([first + i * w.n_heads + live_heads for i in range(3)])
        h = engine.layer_norm(self.reader_inputs(readers, x).view(3, len(live_heads), *x.shape), w.ln1[layer], w.eps)
        heads = slice(None) if len(live_heads) == w.n_heads else live_heads  # every head: views of the weights
        q, k, v = (torch.einsum("hbpm,hmd->bphd", h[i], W[layer][heads]) + b[layer][heads]
                   for i, (W, b) in enumerate(((w.W_Q, w.b_Q), (w.W_K, w.b_K), (w.W_V, w.b_V))))
        if self.prefix is not None:  # the prefix's keys and values, the batch repeated per variant
            k_pre, v_pre = (t[layer][:, :, heads].repeat(self.n_variants, 1, 1, 1) for t in (self.prefix.k, self.prefix.v))
            k, v = torch.cat([k_pre, k], 1), torch.cat([v_pre, v], 1)
        z, _ = engine.attend(w, q, k, v)
        return torch.einsum("bphd,hdm->hbpm", z, w.W_O[layer][heads])

    def active(self, readers: slice, n_writers: int) -> Tensor:
        """(reader,) bool: readers with some kept input edge."""
        if self.cuts is None:
            return torch.ones(readers.stop - readers.start, dtype=torch.bool, device=self.direction.device)
        return self.keep_edges[:, :n_writers, readers].any(0).any(0).to(self.direction.device)

    def layer_start(self, layer: int, x: Tensor) -> Tensor:
        if self.trace is not None:
            self.trace.resid.append(x)
            self.trace.total.append(self.cuts.total.clone())
        return x

    def attention(self, layer: int, x: Tensor) -> Tensor:
        n_heads, corrupt = self.weights.n_heads, self.corrupt
        first, first_writer = self.graph.reader_slice(layer).start, self.graph.writers_before(layer)
        kept_input = self.active(slice(first, first + 3 * n_heads), first_writer).view(3, n_heads)  # (q|k|v, head)
        live_heads = kept_input.any(0).nonzero()[:, 0]  # heads with a kept input
        if len(live_heads) < n_heads:  # heads left out give their corrupted outputs
            heads = corrupt[first_writer:first_writer + n_heads]  # (head, batch, pos, d_model)
            heads = heads.repeat(1, self.n_variants, 1, 1) if self.n_variants > 1 else heads  # (head, variant * batch, ...)
        out = None
        if len(live_heads):
            out = self.head_outputs(layer, x, live_heads)
            heads = out if len(live_heads) == n_heads else heads.index_copy(0, live_heads, out)
        self.write(heads, live_heads.tolist(), out)
        return x + heads.sum(0) + self.weights.b_O[layer]

    def after_heads(self, layer: int, x: Tensor) -> Tensor:
        if self.trace is not None:
            self.trace.mid.append(x)
        return x

    def mlp(self, layer: int, x: Tensor) -> Tensor:
        reader, writer = self.graph.reader_slice(layer).stop - 1, self.graph.writers_before(layer, mlp=True)
        if self.active(slice(reader, reader + 1), writer):
            m, live = engine.mlp(self.weights, layer, self.reader_inputs([reader], x)[0]), [0]
        else:
            m, live = self.corrupt[writer].repeat(self.n_variants, 1, 1) if self.n_variants > 1 else self.corrupt[writer], []
        self.write(m[None], live, m[None])
        return x + m

    def read(self, x: Tensor) -> Tensor:
        return super().read(self.reader_inputs([len(self.graph.readers) - 1], x)[0])


class ResumedEdgeForward(EdgeForward):
    """EdgeForward from another circuit's Trace, at the first layer whose readers' edges differ: a
    head or MLP is recomputed only when its input may differ (its readers' edges differ, or it keeps
    an edge from a `moved` writer); the residual stream is the trace's plus the moved writers'
    output changes (`shift`)."""

    def __init__(self, weights: Weights, direction: Tensor, bias: Tensor, corrupt: Tensor, keep: Tensor,
                 prefix: Prefix | None, resume: Trace, record: bool):
        super().__init__(weights, direction, bias, corrupt, keep, prefix, record)
        graph, cuts, keep = self.graph, self.cuts, keep[0]
        self.resume, self.keep_edges = resume, keep  # (writer, reader)
        self.first_layer = resume.start_layer(graph, keep)
        cuts.n = graph.writers_before(self.first_layer) if self.first_layer < weights.n_layers else len(graph.writers)
        cuts.rows = [w for w in resume.rows if w < cuts.n]
        cuts.diff[:, :len(cuts.rows)] = resume.diff[:, :len(cuts.rows)]
        cuts.total = resume.total[self.first_layer].clone()
        if self.trace is not None:
            self.trace.rows = cuts.rows
            self.trace.resid, self.trace.mid = resume.resid[:self.first_layer], resume.mid[:self.first_layer]
            self.trace.total = resume.total[:self.first_layer]
        self.changed = (resume.keep != keep).any(0)  # (reader,) readers whose input edges differ
        self.old = {w: resume.diff[0, i] for i, w in enumerate(resume.rows)}  # writer -> its change in the trace
        self.moved = torch.zeros(len(graph.writers), dtype=torch.bool, device=keep.device)
        self.shift = None  # (1, size): sum of the moved writers' output changes so far

    def at(self, base: Tensor) -> Tensor:
        return base if self.shift is None else base + self.shift.view(base.shape)

    def redo(self, readers: slice) -> Tensor:
        """(reader,) bool: readers whose input may differ from the trace's."""
        n = self.cuts.n
        return self.changed[readers] | self.keep_edges[:n][self.moved[:n], readers].any(0)

    def settle(self, count: int, recomputed: dict[int, Tensor | None]) -> None:
        """Record the next `count` writers: the recomputed ones' new changes (None: 0), the others' the trace's."""
        changes = {}
        for offset in range(count):
            w = self.cuts.n + offset
            before = self.old.get(w)
            after = recomputed[offset] if offset in recomputed else before
            if after is not None:
                changes[offset] = after
            if offset in recomputed and not (before is None and after is None):
                step = (0 if after is None else after) - (0 if before is None else before)
                self.shift = step if self.shift is None else self.shift + step
                self.moved[w] = True
        self.cuts.add_changes(count, changes)

    def layer_start(self, layer: int, x: Tensor) -> Tensor:
        return super().layer_start(layer, self.at(self.resume.resid[layer]))

    def attention(self, layer: int, x: Tensor) -> Tensor:
        n_heads, keep, dev = self.weights.n_heads, self.keep_edges, x.device
        first, first_writer = self.graph.reader_slice(layer).start, self.graph.writers_before(layer)
        qkv = slice(first, first + 3 * n_heads)
        active = keep[:first_writer, qkv].any(0).view(3, n_heads).any(0)
        again = self.redo(qkv).view(3, n_heads).any(0)  # heads to recompute
        live_heads = (active & again).nonzero()[:, 0].to(dev)
        recomputed = {h: None for h in again.nonzero()[:, 0].tolist()}
        if len(live_heads):
            for h, o in zip(live_heads.tolist(), self.head_outputs(layer, x, live_heads)):
                recomputed[h] = (o - self.corrupt[first_writer + h]).reshape(1, -1)
        self.settle(n_heads, recomputed)
        return self.at(self.resume.mid[layer])

    def mlp(self, layer: int, x: Tensor) -> Tensor:
        reader, writer = self.graph.reader_slice(layer).stop - 1, self.graph.writers_before(layer, mlp=True)
        recomputed = {}
        if self.redo(slice(reader, reader + 1)).any():
            recomputed[0] = None
            if self.keep_edges[:writer, reader].any():
                m = engine.mlp(self.weights, layer, self.reader_inputs([reader], x)[0])
                recomputed[0] = (m - self.corrupt[writer]).reshape(1, -1)
        self.settle(1, recomputed)
        return x  # the next layer starts from the trace's residual (layer_start)


def edge_attribution(weights: Weights, clean: Tensor, corrupted: Tensor, direction: Tensor, bias: Tensor,
                     ig_steps: int = 0, prefix: Prefix | None = None) -> tuple[Tensor, Tensor, Tensor]:
    """(writer, reader, prompt) estimated change of the logit difference when the edge alone carries
    the clean writer output into the corrupted run (0 where no edge): EAP (ig_steps 0) or EAP-IG; and
    the clean and corrupted logit differences per prompt. Prompts go in chunks that fit ATTRIBUTION_BYTES."""
    n = 0 if prefix is None else prefix.n
    per_prompt = 8 * len(Graph(weights.n_layers, weights.n_heads).readers) * (clean.shape[1] - n) * weights.W_E.shape[1] * 4
    step = max(1, ATTRIBUTION_BYTES // per_prompt)
    parts = [_edge_attribution(weights, clean[i:i + step], corrupted[i:i + step], direction[i:i + step],
                               bias[i:i + step], ig_steps, None if prefix is None else prefix.select(slice(i, i + step)))
             for i in range(0, len(clean), step)]
    return tuple(torch.cat(t, -1) for t in zip(*parts))


def _edge_attribution(weights: Weights, clean: Tensor, corrupted: Tensor, direction: Tensor, bias: Tensor,
                      ig_steps: int, prefix: Prefix | None) -> tuple[Tensor, Tensor, Tensor]:
    graph = Graph(weights.n_layers, weights.n_heads)
    with torch.no_grad():
        ld_clean, clean_out, _ = edge_forward(weights, clean, direction, bias, prefix=prefix)
    x_clean, x_corr = clean_out[0], engine.embed(weights, corrupted)[:, 0 if prefix is None else prefix.n:]  # embedding outputs
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
    # grads: one per reader group, every reader in order
    scores = torch.cat([torch.einsum("wbpm,rbpm->wrb", diff, grad) / len(alphas) for grad in grads], 1)  # (writer, reader, batch)
    return scores * graph.allowed.to(diff.device)[..., None], ld_clean, ld_corrupted
