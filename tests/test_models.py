import time
from pathlib import Path

import pytest
import torch
from transformers import GPT2LMHeadModel

from opposites import models


def test_tokenizer_matches_gpt2_ids(tokenizer):
    # Known GPT-2 ids: "When" 2215, " Mary" 5335, " and" 290, " John" 1757; <|endoftext|> 50256.
    assert tokenizer("When Mary and John")["input_ids"] == [2215, 5335, 290, 1757]
    assert tokenizer.eos_token_id == 50256 and len(tokenizer) == 50257


def test_build_is_seeded(tmp_path):
    a = models.build_offline_model("toy", tmp_path / "a", seed=3)
    b = models.build_offline_model("toy", tmp_path / "b", seed=3)
    c = models.build_offline_model("toy", tmp_path / "c", seed=4)
    wa, wb, wc = (GPT2LMHeadModel.from_pretrained(p).transformer.h[0].attn.c_attn.weight for p in (a, b, c))
    assert torch.equal(wa, wb) and not torch.equal(wa, wc)


def test_random_gpt2_has_gpt2_small_shape():
    assert models.offline_shape("random:gpt2") == (12, 12, 768)
    assert models.offline_shape("random:gpt2-xl") == (48, 25, 1600)


def test_toy_boots_through_transformer_lens(toy):
    assert toy.cfg.n_layers == 4 and toy.cfg.n_heads == 4 and toy.cfg.d_vocab == 50257
    assert toy.to_tokens("John is")[0, 0].item() == 50256  # BOS prepended


def test_unreachable_hub_model_fails_fast_with_offline_options(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    start = time.perf_counter()
    with pytest.raises(models.ModelUnavailable) as e:
        models.check_available("surely-not/a-cached-model-xyz")
    assert time.perf_counter() - start < 10
    assert "model=toy" in str(e.value) and "HF_HUB_OFFLINE" in str(e.value) and "Did you mean" not in str(e.value)
    offline = str(e.value).split("Offline choices:")[1]
    assert offline.index("model=trained") < offline.index("model=toy")  # the model with circuits first


def test_a_misspelt_built_in_model_is_suggested(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(models.ModelUnavailable, match="Did you mean 'trained'\\?"):
        models.check_available("trianed")


def test_offline_models_need_no_hub():
    models.check_available("toy")
    models.check_available("random:gpt2")


def test_a_model_folder_is_checked_before_any_job(toy_dir, tmp_path):
    """The start-up check names what makes a folder unusable (the workflow tests run it end to end)."""
    import shutil

    assert models.model_dir_problem(toy_dir) is None
    cut = Path(shutil.copytree(toy_dir, tmp_path / "cut"))
    weights = cut / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-1])  # one byte short
    assert "truncated or damaged weights file, model.safetensors" in models.model_dir_problem(cut)
    bare = Path(shutil.copytree(toy_dir, tmp_path / "bare"))
    (bare / "tokenizer.json").unlink()
    assert "no tokenizer files" in models.model_dir_problem(bare)
    with pytest.raises(models.ModelUnavailable, match=f"The model folder {bare} has no tokenizer files"):
        models.check_model_dir(bare)
