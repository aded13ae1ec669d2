"""A plain-PyTorch GPT-2 forward over the bridge's processed weights, built for patching: one layer
loop (`Forward`) that can start at any layer from a cached residual stream, skip a shared prompt
prefix (its keys/values come from the cache), batch many patches as a leading variant dimension,
and at the last layer compute only the final position and the answer-minus-wrong logit direction.
The reference for every intervention is interventions.py (TransformerLens hooks);
tests/test_backends.py checks that both give the same numbers.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable

import torch
from jaxtyping import Float
from torch import Tensor


@dataclass
class Weights:
    W_E: Tensor
    W_pos: Tensor
    W_Q: Tensor  # (layer, head, d_model, d_head)
    W_K: Tensor
    W_V: Tensor
    b_Q: Tensor  # (layer, head, d_head)
    b_K: Tensor
    b_V: Tensor
    W_O: Tensor  # (layer, head, d_head, d_model)
    b_O: Tensor  # (layer, d_model)
    W_in: Tensor  # (layer, d_model, d_mlp)
    b_in: Tensor
    W_out: Tensor  # (layer, d_mlp, d_model)
    b_out: Tensor
    ln1: list[tuple[Tensor, Tensor]]
    ln2: list[tuple[Tensor, Tensor]]
    ln_f: tuple[Tensor, Tensor]
    W_U: Tensor
    b_U: Tensor
    eps: float
    n_layers: int
    n_heads: int
    d_head: int
    act_fn: str = "gelu_new"
    flops: list[float] = field(default_factory=lambda: [0.0])  # matmul FLOPs counter

    @classmethod
    def from_bridge(cls, model) -> "Weights":
        cfg = model.cfg
        assert cfg.normalization_type in ("LN", "LNPre") and cfg.act_fn in ("gelu_new", "gelu"), \
            "the patching engine implements GPT-2-style blocks (LayerNorm, GELU)"
        names = ("W_E", "W_pos", "W_Q", "W_K", "W_V", "b_Q", "b_K", "b_V", "W_O", "b_O", "W_in", "b_in", "W_out", "b_out",
                 "W_U", "b_U")
        wb = lambda ln: (ln.w.detach(), ln.b.detach())  # noqa: E731
        return cls(**{name: getattr(model, name).detach() for name in names},
                   ln1=[wb(block.ln1) for block in model.blocks], ln2=[wb(block.ln2) for block in model.blocks],
                   ln_f=wb(model.ln_final), eps=cfg.eps, n_layers=cfg.n_layers, n_heads=cfg.n_heads, d_head=cfg.d_head,
                   act_fn=cfg.act_fn)


def embed(weights: Weights, tokens: Tensor) -> Float[Tensor, "batch pos d_model"]:
    """Token plus position embedding (edge patching's embedding writer)."""
    return weights.W_E[tokens] + weights.W_pos[: tokens.shape[1]]


def first_difference(a: Tensor, b: Tensor) -> int:
    """First position where any row of token batches a and b differ (length if none): patching starts there."""
    diff = (a != b).any(0).nonzero()
    return int(diff[0]) if len(diff) else a.shape[1]


def layer_norm(x: Tensor, wb: tuple[Tensor, Tensor], eps: float) -> Tensor:
    return torch.nn.functional.layer_norm(x, x.shape[-1:], wb[0], wb[1], eps)


def gelu(x: Tensor, act_fn: str) -> Tensor:
    """The model's activation: GPT-2's gelu_new written out as transformers writes it (torch's fused
    kernel differs in the last bits), or the exact GELU."""
    if act_fn == "gelu":
        return torch.nn.functional.gelu(x)
    return 0.5 * x * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x.pow(3))))


BLOCK = 2 ** 17  # elements per block of bias_act: the block and its temporaries stay in a core's cache


def bias_act(pre: Tensor, b: Tensor, act_fn: str) -> Tensor:
    """gelu(pre + b) in pre's memory, BLOCK elements' worth of rows at a time (the same operations
    in the same order as gelu(): the same bits). Out of place where autograd needs pre; one block on
    a GPU."""
    if pre.requires_grad and torch.is_grad_enabled():
        return gelu(pre + b, act_fn)
    rows = pre.view(-1, pre.shape[-1])  # (row, d_mlp)
    step = max(1, BLOCK // rows.shape[1]) if pre.device.type == "cpu" else len(rows)
    for i in range(0, len(rows), step):
        x = rows[i:i + step]
        x.add_(b)
        if act_fn == "gelu":
            x.copy_(torch.nn.functional.gelu(x))
            continue
        t = x.pow(3)  # 0.5 * x * (1 + tanh(sqrt(2 / pi) * (x + 0.044715 * x^3))), step by step
        t.mul_(0.044715).add_(x).mul_(math.sqrt(2.0 / math.pi)).tanh_().add_(1.0)
        x.mul_(0.5).mul_(t)
    return pre


def qkv(weights: Weights, layer: int, x: Float[Tensor, "... pos d_model"], which: str = "qkv") -> dict[str, Tensor]:
    """Normalized input -> q/k/v, each (..., pos, head, d_head)."""
    out = {}
    for name in which:
        W, b = {"q": (weights.W_Q, weights.b_Q), "k": (weights.W_K, weights.b_K), "v": (weights.W_V, weights.b_V)}[name]
        out[name] = torch.einsum("...pm,hmd->...phd", x, W[layer]) + b[layer]
        weights.flops[0] += 2 * x[..., 0].numel() * W[layer].numel()
    return out


def attend(weights: Weights, q: Tensor, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
    """Causal attention. q (..., Q, head, d_head) are the last Q positions of k/v (..., K, head,
    d_head). Returns (z, pattern (..., head, Q, K))."""
    scores = torch.einsum("...qhd,...khd->...hqk", q, k) / math.sqrt(weights.d_head)
    Q, K = q.shape[-3], k.shape[-3]
    q_pos = torch.arange(K - Q, K, device=q.device)[:, None]
    mask = torch.arange(K, device=q.device)[None, :] > q_pos  # (Q, K)
    pattern = torch.softmax(scores.masked_fill(mask, float("-inf")), dim=-1)
    z = torch.einsum("...hqk,...khd->...qhd", pattern, v)
    weights.flops[0] += 4 * q.numel() * K
    return z, pattern


def attn_out(weights: Weights, layer: int, z: Float[Tensor, "... pos head d_head"]) -> Tensor:
    weights.flops[0] += 2 * z.numel() * weights.W_O.shape[-1]
    return torch.einsum("...phd,hdm->...pm", z, weights.W_O[layer]) + weights.b_O[layer]


def mlp(weights: Weights, layer: int, x: Float[Tensor, "... pos d_model"]) -> Tensor:
    h = bias_act(layer_norm(x, weights.ln2[layer], weights.eps) @ weights.W_in[layer], weights.b_in[layer], weights.act_fn)
    weights.flops[0] += 4 * x[..., 0].numel() * weights.W_in[layer].numel()
    return h @ weights.W_out[layer] + weights.b_out[layer]


class Forward:
    """The engine's one layer loop, from the residual stream where `run` starts to the logit
    difference (or the final residual). Each step is a method that a subclass may override
    (edges.py): layer_start(l, x) (l = n_layers: before the logits), attention(l, x) (the residual
    after layer l's heads), after_heads(l, x), mlp(l, x), read(x). Options:
      end_only   the last layer computes the final position only;
      past       layer -> keys and values (..., n, head, d_head) of n positions before x's (a prefix);
      z_values   {(layer, head): (..., pos, d_head)} replaces those heads' z;
      mlp_values {layer: (..., pos, d_model)} replaces those MLPs' outputs;
      cache      a dict receiving every activation patching reads ('resid_pre.3', 'q.3', 'pattern.3',
                 'z.3', 'attn_out.3', 'resid_mid.3', 'mlp_out.3', 'resid_final');
      keep_grad  keep the gradients of q, k, v, pattern and z (attribution patching)."""

    def __init__(self, weights: Weights, direction: Tensor | None = None, bias: Tensor | None = None,
                 end_only: bool = True, past: Callable[[int], tuple[Tensor, Tensor]] | None = None,
                 z_values: dict[tuple[int, int], Tensor] | None = None, mlp_values: dict[int, Tensor] | None = None,
                 cache: dict[str, Tensor] | None = None, keep_grad: bool = False):
        self.weights, self.direction, self.bias = weights, direction, bias
        self.end_only, self.past, self.cache, self.keep_grad = end_only, past, cache, keep_grad
        self.z_values, self.mlp_values = z_values or {}, mlp_values or {}

    def run(self, x: Float[Tensor, "... pos d_model"], first_layer: int = 0, stage: str = "pre") -> Tensor:
        """From the residual x at (first_layer, stage), stage 'pre' (before the layer) or 'mid' (after
        its heads), to read()'s result."""
        for layer in range(first_layer, self.weights.n_layers):
            if layer == first_layer and stage == "mid":
                x = x[..., -1:, :] if self.end_at(layer) else x
            else:
                x = self.layer_start(layer, x)
                x = self.after_heads(layer, self.attention(layer, x))
            x = self.mlp(layer, x)
        return self.read(self.layer_start(self.weights.n_layers, x))

    def end_at(self, layer: int) -> bool:
        return self.end_only and layer == self.weights.n_layers - 1

    def keep(self, name: str, layer: int, value: Tensor) -> None:
        if self.cache is not None:
            self.cache[f"{name}.{layer}" if layer < self.weights.n_layers else name] = value

    def layer_start(self, layer: int, x: Tensor) -> Tensor:
        self.keep("resid_pre" if layer < self.weights.n_layers else "resid_final", layer, x)
        return x

    def attention(self, layer: int, x: Tensor) -> Tensor:
        w, end = self.weights, self.end_at(layer)
        h = layer_norm(x, w.ln1[layer], w.eps)
        acts = qkv(w, layer, h, "kv") | qkv(w, layer, h[..., -1:, :], "q") if end else qkv(w, layer, h)
        k, v = acts["k"], acts["v"]
        if self.past is not None:
            k_past, v_past = self.past(layer)
            k, v = torch.cat([k_past, k], dim=-3), torch.cat([v_past, v], dim=-3)
        z, pattern = attend(w, acts["q"], k, v)  # (..., pos, head, d_head), (..., head, q, k)
        for (l, head), value in self.z_values.items():
            if l == layer:
                z[..., head, :] = value[..., -z.shape[-3]:, :]
        if self.keep_grad:
            for t in (*acts.values(), pattern, z):
                t.retain_grad()
        a = attn_out(w, layer, z)
        for name, value in (("q", acts["q"]), ("k", k), ("v", v), ("pattern", pattern), ("z", z), ("attn_out", a)):
            self.keep(name, layer, value)
        return (x[..., -1:, :] if end else x) + a

    def after_heads(self, layer: int, x: Tensor) -> Tensor:
        self.keep("resid_mid", layer, x)
        return x

    def mlp(self, layer: int, x: Tensor) -> Tensor:
        value = self.mlp_values.get(layer)
        m = mlp(self.weights, layer, x) if value is None else value[..., -x.shape[-2]:, :]
        self.keep("mlp_out", layer, m)
        return x + m

    def read(self, x: Tensor) -> Tensor:
        return x if self.direction is None else read_logit_diff(self.weights, x[..., -1, :], self.direction, self.bias)


def full_forward(weights: Weights, tokens: Tensor, keep_grad: bool = False) -> dict[str, Tensor]:
    """An ordinary forward caching everything patching reads (Forward's `cache`): shapes (batch, pos,
    ...), pattern (batch, head, q, k). keep_grad: keep the gradients (attribution patching)."""
    x = embed(weights, tokens)  # (batch, pos, d_model)
    if keep_grad:
        x = x.detach().requires_grad_()
    cache: dict[str, Tensor] = {}
    Forward(weights, end_only=False, cache=cache, keep_grad=keep_grad).run(x)
    return cache


def read_logit_diff(weights: Weights, x_end: Float[Tensor, "... batch d_model"], direction: Tensor, bias: Tensor) -> Tensor:
    """Answer-minus-wrong logit from final-position residuals, without the full unembedding."""
    weights.flops[0] += 2 * x_end.numel()
    return (layer_norm(x_end, weights.ln_f, weights.eps) * direction).sum(-1) + bias


def layer_flops(weights: Weights, queries: int, keys: int, new_kv: int) -> float:
    """Matmul FLOPs of one block for one sequence: `queries` positions computed (q, attention out,
    MLP), attending over `keys` positions, of which `new_kv` need fresh keys/values."""
    d, d_mlp = weights.W_O.shape[-1], weights.W_in.shape[-1]  # d_model, d_mlp
    return (2 * queries * d * d + 2 * 2 * new_kv * d * d  # q; k and v
            + 4 * queries * keys * d  # scores and pattern @ v (all heads)
            + 2 * queries * d * d  # W_O
            + 4 * queries * d * d_mlp)  # W_in and W_out


def suffix_flops(weights: Weights, layer: int, stage: str, suffix: int, length: int) -> float:
    """The minimum FLOPs per sequence of a patch at (layer, stage) whose first changed position is
    length - suffix: every later position up to the last layer, only the final position there."""
    total, last = 0.0, weights.n_layers - 1
    for lay in range(layer, weights.n_layers):
        q = 1 if lay == last else suffix
        if lay == layer and stage == "mid":
            total += 4 * q * weights.W_O.shape[-1] * weights.W_in.shape[-1]  # MLP only
        else:
            total += layer_flops(weights, q, length, suffix)
    return total + 2 * weights.W_O.shape[-1]  # read the answer-minus-wrong direction


def ablated(weights: Weights, run: dict[str, Tensor], values: dict[tuple, Tensor],
            direction: Tensor, bias: Tensor) -> Float[Tensor, " batch"]:
    """Logit difference per prompt with components' outputs replaced, from the first replaced layer
    of `run` (full_forward of the same tokens) on: values maps ("z", layer, head) to (batch, pos,
    d_head) and ("mlp", layer) to (batch, pos, d_model)."""
    layers = {key[1] for key in values}
    if not layers:
        return read_logit_diff(weights, run["resid_final"][:, -1], direction, bias)
    first = min(layers)
    forward = Forward(weights, direction, bias, z_values={key[1:]: v for key, v in values.items() if key[0] == "z"},
                      mlp_values={key[1]: v for key, v in values.items() if key[0] == "mlp"})
    return forward.run(run[f"resid_pre.{first}"], first)
