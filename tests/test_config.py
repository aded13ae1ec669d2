import pytest

from opposites import config


def base(**kw):
    return {"model": "toy", "device": "auto", "seed": 0, "n_prompts": 8, "min_prompts": 4,
            "batch_size": 4, "patch_direction": "denoising", "circuit_share": 0.8, "ig_steps": 5, "stability_resamples": 10, "acdc_max_edges": 2000, "tasks": ["ioi", "size"], **kw}


def test_repo_config_is_valid():
    assert config.load("config.yaml")["model"] == "gpt2"


def test_unknown_key_names_key_and_allowed_keys():
    with pytest.raises(config.ConfigError) as e:
        config.validate(base(n_promts=3))
    msg = str(e.value)
    assert "'n_promts'" in msg and "n_prompts" in msg and "\n" not in msg


def test_unknown_task_lists_allowed_values():
    with pytest.raises(config.ConfigError, match=r"'tasks.1'.*'colour'.*ioi, size, antonym, isa"):
        config.validate(base(tasks=["ioi", "colour"]))


@pytest.mark.parametrize("bad", [{"seed": -1}, {"n_prompts": "many"}, {"device": "gpu"}, {"model": "random:gpt3"},
                                 {"model": "not a model!"}])
def test_bad_values_rejected(bad):
    with pytest.raises(config.ConfigError, match="config key 'model'|config key '" + next(iter(bad)) + "'"):
        config.validate(base(**bad))


def test_missing_key():
    cfg = base()
    del cfg["seed"]
    with pytest.raises(config.ConfigError, match="seed"):
        config.validate(cfg)


@pytest.mark.parametrize("model,slug", [("gpt2", "gpt2"), ("EleutherAI/pythia-70m", "EleutherAI--pythia-70m"),
                                        ("toy", "toy"), ("random:gpt2", "random-gpt2"),
                                        ("random:gpt2-medium", "random-gpt2-medium")])
def test_model_slug(model, slug):
    assert config.model_slug(model) == slug


def test_local_dir_slug(tmp_path):
    d = tmp_path / "my-model"
    d.mkdir()
    assert config.model_kind(str(d)) == "local" and config.model_slug(str(d)) == "my-model"


def test_train_block_is_validated_with_its_own_keys():
    with pytest.raises(config.ConfigError, match="'step' under 'train' not recognised; allowed keys are n_layer"):
        config.validate(base(train={"step": 10}))
    with pytest.raises(config.ConfigError, match="train.steps"):
        config.validate(base(train={"steps": 0}))
    assert config.validate(base(model="trained", train={"steps": 10}))["train"] == {"steps": 10}
    assert config.model_slug("trained") == "trained"


def test_fewer_prompts_than_the_minimum_is_one_sentence_naming_both_keys():
    with pytest.raises(config.ConfigError, match=r"n_prompts=4 but requires at least min_prompts=8 per task; raise n_prompts or lower min_prompts"):
        config.validate(base(n_prompts=4, min_prompts=8))


def test_a_list_of_seeds_from_the_command_line_becomes_numbers():
    """Snakemake hands --config trained_seeds=[0,1] over as ['0', '1']; a word stays a word (and fails)."""
    from snakemake.cli import parse_config

    given = parse_config(["trained_seeds=[0,1]"])["trained_seeds"]
    assert given == ["0", "1"]  # what Snakemake passes on
    assert config.validate(base(trained_seeds=given))["trained_seeds"] == [0, 1]
    with pytest.raises(config.ConfigError, match="trained_seeds"):
        config.validate(base(trained_seeds=["zero"]))
