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
    """What cutting edges takes from each reader's input, kept as the forward runs: every writer's
    (current - corrupted) output per variant, and their running sum. A reader loses the sum over its
    cut edges; per variant that sum runs over whichever is fewer, the cut edges or the kept ones
    (all writers so far minus the kept ones), sparse or dense by density (`_sparse_sum`)."""

    def __init__(self, corrupt: Tensor, keep: Tensor):
        self.corrupt, self.keep = corrupt, keep  # (writer, batch, pos, d_model); (variant, writer, reader)
        V, n_writers, size = keep.shape[0], corrupt.shape[0], corrupt[0].numel()
        self.diff = corrupt.new_empty(V, n_writers, size)  # (variant, writer, batch * pos * d_model)
        self.total = corrupt.new_zeros(V, size)
        self.n = 0

    def add(self, out: Tensor) -> None:
        """Record the next writers' outputs, (writer, variant * batch, pos, d_model)."""
        W = out.shape[0]
        d = out.reshape(W, self.keep.shape[0], -1) - self.corrupt[self.n:self.n + W].reshape(W, 1, -1)
        self.diff[:, self.n:self.n + W] = d.transpose(0, 1)
        for w in range(W):  # one writer at a time: the running sum adds in writer order
            self.total += d[w]
        self.n += W

    def lost(self, readers: Tensor, shape: torch.Size) -> Tensor | None:
        """(reader, variant * batch, pos, d_model) input lost per reader; None when nothing is cut."""
        keep = self.keep[:, : self.n, readers.to(self.keep.device)].to(self.diff.device)  # (variant, writer, reader)
        if keep.all():
            return None
        parts = []
        for v, k in enumerate(keep):
            kept = int(k.sum())
            if kept * 2 <= k.numel():  # fewer kept than cut: everything minus the kept edges
                parts.append(self.total[v] - _sparse_sum(k.T, self.diff[v, : self.n]))
            else:
                parts.append(_sparse_sum(~k.T, self.diff[v, : self.n]))
        return torch.stack(parts, 1).view(keep.shape[2], *shape)


def _sparse_sum(mask: Tensor, rows: Tensor) -> Tensor:
    """(reader, size): for each reader, the sum of the rows (writer, size) its mask (reader, writer)
    selects; a sparse product below a few percent density (measured on CPU), a dense one above."""
    idx = mask.nonzero().T
    if idx.shape[1] > 0.04 * mask.numel():
        return mask.to(rows.dtype) @ rows
    m = torch.sparse_coo_tensor(idx, torch.ones(idx.shape[1], dtype=rows.dtype, device=rows.device), mask.shape,
                                check_invariants=False, is_coalesced=True)
    return torch.sparse.mm(m, rows)


@dataclass
class Trace:
    """One circuit's exact forward (edge_forward with one `keep`, recorded), kept so that a circuit
    whose edges differ from it only in readers of layer L or later starts at layer L: before it both
    forwards compute the same. Per layer start (and once more before the logits): the residual
    stream and the running sum of every writer's change; and each writer's change (writer, size)."""
    keep: Tensor  # (writer, reader)
    resid: list[Tensor]  # n_layers + 1 of (batch, pos, d_model)
    total: list[Tensor]  # n_layers + 1 of (1, size)
    diff: Tensor  # (1, writer, size)

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

    def kv(self, layer: int, heads: Tensor, repeat: int) -> tuple[Tensor, Tensor]:
        """Keys and values of `heads`, the batch repeated `repeat` times (variant-major)."""
        return tuple(t[layer][:, :, heads].repeat(repeat, 1, 1, 1) for t in (self.k, self.v))


def shared_prefix(weights: Weights, clean: Tensor, corrupted: Tensor) -> Prefix:
    """The prefix clean and corrupted share (at least BOS), with its keys and values."""
    n = engine.first_difference(clean, corrupted)
    run = engine.full_forward(weights, clean[:, :n])
    return Prefix(n, [run[f"k.{l}"] for l in range(weights.n_layers)], [run[f"v.{l}"] for l in range(weights.n_layers)])


def embed(weights: Weights, tokens: Tensor) -> Tensor:
    """The embedding writer's output, (batch, pos, d_model)."""
    return weights.W_E[tokens] + weights.W_pos[: tokens.shape[1]]


def edge_forward(weights: Weights, tokens: Tensor, dir: Tensor, bias: Tensor, corrupt: Tensor | None = None,
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
    Trace on the same tokens, corrupt and prefix) starts at the first layer where the two differ,
    computing exactly what the whole forward would from there.

    With `keep`, a head or MLP none of whose input edges is kept reads exactly the corrupted run's
    residual, so its output is the corrupted one (`corrupt`) and is not recomputed: a small circuit
    costs the forward of its own nodes."""
    g = Graph(weights.n_layers, weights.n_heads)
    start = 0 if prefix is None else prefix.n
    x = embed(weights, tokens)[:, start:] if x is None else x  # (batch, pos, d_model)
    cuts, V = None, 1
    if keep is not None:
        keep = keep[None] if keep.dim() == 2 else keep
        V = keep.shape[0]
        x, dir, bias = x.repeat(V, 1, 1), dir.repeat(V, 1), bias.repeat(V)
        cuts = _Cuts(corrupt, keep)
    assert not (record or resume) or (keep is not None and V == 1), "traces are of single circuits (one keep)"
    trace = Trace(keep[0], [], [], cuts.diff) if record else None
    outs, leaves = [], []
    resid = x
    H = weights.n_heads

    def write(out: Tensor) -> None:  # (writer, batch, pos, d_model); with keep, the cuts hold what is needed
        if cuts is None:
            outs.extend(out)
        else:
            cuts.add(out)

    def reader_inputs(readers: Tensor) -> Tensor:
        inp = resid.expand(len(readers), *resid.shape)
        lost = None if cuts is None else cuts.lost(readers, resid.shape)
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
        write(x[None])
    else:  # the state where layer first_layer begins is the traced circuit's
        first_layer = resume.start_layer(g, keep[0])
        cuts.n = g.writers_before(first_layer) if first_layer < weights.n_layers else len(g.writers)
        cuts.diff[:, :cuts.n] = resume.diff[:, :cuts.n]
        cuts.total = resume.total[first_layer].clone()
        resid = resume.resid[first_layer]
        if trace is not None:
            trace.resid, trace.total = resume.resid[:first_layer], resume.total[:first_layer]

    def checkpoint() -> None:
        if trace is not None:
            trace.resid.append(resid)
            trace.total.append(cuts.total.clone())

    for l in range(first_layer, weights.n_layers):
        checkpoint()
        first, w0 = g.reader_slice(l).start, g.writers_before(l)
        A = active(slice(first, first + 3 * H), w0).view(3, H).any(0).nonzero()[:, 0]  # heads with a kept input
        if len(A) < H:  # heads left out give their corrupted outputs
            heads = corrupt[w0:w0 + H].repeat(1, V, 1, 1)  # (head, variant * batch, pos, d_model)
        if len(A):
            inp = reader_inputs(torch.cat([first + i * H + A for i in range(3)])).view(3, len(A), *resid.shape)
            h = engine.layer_norm(inp, weights.ln1[l], weights.eps)  # (qkv, head, batch, pos, d_model)
            q, k, v = (torch.einsum("hbpm,hmd->bphd", h[i], W[l][A]) + b[l][A]
                       for i, (W, b) in enumerate(((weights.W_Q, weights.b_Q), (weights.W_K, weights.b_K), (weights.W_V, weights.b_V))))
            if prefix is not None:
                k_pre, v_pre = prefix.kv(l, A, V)
                k, v = torch.cat([k_pre, k], 1), torch.cat([v_pre, v], 1)
            z, _ = engine.attend(weights, q, k, v)
            out = torch.einsum("bphd,hdm->hbpm", z, weights.W_O[l][A])  # (head, batch, pos, d_model)
            heads = out if len(A) == H else heads.index_copy(0, A, out)
        write(heads)
        resid = resid + heads.sum(0) + weights.b_O[l]
        mlp_reader, w_mlp = torch.tensor([first + 3 * H], device=dev), g.writers_before(l, mlp=True)
        m = (engine.mlp(weights, l, reader_inputs(mlp_reader)[0]) if active(slice(first + 3 * H, first + 3 * H + 1), w_mlp)
             else corrupt[w_mlp].repeat(V, 1, 1))
        write(m[None])
        resid = resid + m
    checkpoint()
    final = reader_inputs(torch.tensor([len(g.readers) - 1], device=dev))[0]
    ld = engine.read_logit_diff(weights, final[:, -1], dir, bias)
    return ld, (torch.stack(outs) if cuts is None else trace), leaves


def edge_attribution(weights: Weights, clean: Tensor, corrupted: Tensor, dir: Tensor, bias: Tensor,
                     ig_steps: int = 0, prefix: Prefix | None = None) -> tuple[Tensor, Tensor, Tensor]:
    """(writer, reader, prompt) estimated change of the logit difference when the edge alone carries
    the clean writer output into the corrupted run (0 where no edge): EAP with ig_steps = 0, EAP-IG
    with ig_steps > 0; and the clean and corrupted logit differences per prompt."""
    g = Graph(weights.n_layers, weights.n_heads)
    with torch.no_grad():
        ld_clean, clean_out, _ = edge_forward(weights, clean, dir, bias, prefix=prefix)
    x_clean, x_corr = clean_out[0], embed(weights, corrupted)[:, 0 if prefix is None else prefix.n:]  # embedding outputs
    alphas = [(k - 0.5) / ig_steps for k in range(1, ig_steps + 1)] if ig_steps else [0.0]
    grads = None
    for alpha in alphas:
        with torch.enable_grad():
            ld, outs, leaves = edge_forward(weights, corrupted, dir, bias, grad_leaves=True,
                                            x=x_corr + alpha * (x_clean - x_corr), prefix=prefix)
            step = torch.autograd.grad(ld.sum(), leaves)
        grads = step if grads is None else [a + b for a, b in zip(grads, step)]
    if alphas == [0.0]:  # EAP: the gradient run is the corrupted run itself
        ld_corrupted, corr_out = ld.detach(), outs.detach()
    else:  # EAP-IG's runs lie between the inputs: the corrupted run is one more forward
        with torch.no_grad():
            ld_corrupted, corr_out, _ = edge_forward(weights, corrupted, dir, bias, prefix=prefix)
    diff = clean_out - corr_out  # (writer, batch, pos, d_model)
    scores = torch.zeros(len(g.writers), len(g.readers), diff.shape[1], dtype=diff.dtype, device=diff.device)
    start = 0
    for grad in grads:  # one per reader group, in reader order
        n = grad.shape[0]
        scores[:, start:start + n] = torch.einsum("wbpm,rbpm->wrb", diff, grad) / len(alphas)
        start += n
    return scores * g.allowed.to(diff.device)[..., None], ld_clean, ld_corrupted
