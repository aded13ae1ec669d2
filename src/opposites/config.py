"""Load and validate config.yaml; name result folders after the model."""

from __future__ import annotations

import os
import re
from importlib import resources
from pathlib import Path
from typing import Any

import jsonschema
import yaml

RANDOM_SIZES = ("gpt2", "gpt2-medium", "gpt2-large", "gpt2-xl")


class ConfigError(ValueError):
    """A bad config value, with one sentence that names the key and the fix."""


def schema() -> dict[str, Any]:
    text = resources.files("opposites").joinpath("config.schema.yaml").read_text()
    return yaml.safe_load(text)


def _explain(error: jsonschema.ValidationError, sch: dict[str, Any]) -> str:
    key = ".".join(str(p) for p in error.absolute_path) or "(top level)"
    if error.validator == "additionalProperties":
        allowed = error.schema["properties"]  # of the object that has the unknown key (top level or train)
        unknown = sorted(set(error.instance) - set(allowed))
        where = "" if key == "(top level)" else f" under '{key}'"
        return (f"config key(s) {', '.join(map(repr, unknown))}{where} not recognised; "
                f"allowed keys are {', '.join(allowed)}. Fix config.yaml or --config.")
    if error.validator == "required":
        return f"config is missing {error.message.split()[0]}; add it to config.yaml."
    if error.validator == "enum":
        return (f"config key '{key}' has value {error.instance!r}; allowed values are "
                f"{', '.join(map(str, error.validator_value))}.")
    allowed = error.schema.get("description", "")
    return f"config key '{key}' is invalid: {error.message}. {allowed}".strip()


def _numbers_from_command_line(config: dict[str, Any], sch: dict[str, Any]) -> None:
    """Lists of numbers given on the command line (--config trained_seeds=[0,1]) arrive from
    Snakemake as lists of strings: turn those that are numbers into numbers, in place."""
    for key, value in config.items():
        items = sch["properties"].get(key, {}).get("items", {})
        if isinstance(value, list) and items.get("type") in ("integer", "number"):
            kind = int if items["type"] == "integer" else float
            config[key] = [kind(v) if isinstance(v, str) and re.fullmatch(r"[-+]?\d+(\.\d*)?", v) else v
                           for v in value]


def validate(config: dict[str, Any]) -> dict[str, Any]:
    """Return config (lists of numbers given as strings on the command line made numbers), or raise
    ConfigError naming the bad key."""
    sch = schema()
    _numbers_from_command_line(config, sch)
    errors = sorted(jsonschema.Draft202012Validator(sch).iter_errors(config),
                    key=lambda e: list(e.absolute_path))
    if errors:
        raise ConfigError(_explain(errors[0], sch))
    model_kind(config["model"])  # raises on a malformed random:<size>
    if config["n_prompts"] < config["min_prompts"]:
        raise ConfigError(f"config asks for n_prompts={config['n_prompts']} but requires at least "
                          f"min_prompts={config['min_prompts']} per task; raise n_prompts or lower min_prompts.")
    return config


def load(path: str | Path = "config.yaml", overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    with open(path) as f:
        config = yaml.safe_load(f) or {}
    config.update(overrides or {})
    return validate(config)


def model_kind(model: str) -> str:
    """One of 'toy', 'random', 'trained', 'local', 'hub'."""
    if model in ("toy", "trained"):
        return model
    if model.startswith("random:"):
        size = model.split(":", 1)[1]
        if size not in RANDOM_SIZES:
            raise ConfigError(f"config key 'model' has value {model!r}; random models are "
                              f"{', '.join('random:' + s for s in RANDOM_SIZES)}.")
        return "random"
    if os.path.isdir(model):
        return "local"
    if re.fullmatch(r"[\w.-]+(/[\w.-]+)?", model):
        return "hub"
    raise ConfigError(f"config key 'model' has value {model!r}, which is neither an existing "
                      "directory, a hub id, 'toy', 'trained' nor 'random:<gpt2 size>'.")


def model_slug(model: str) -> str:
    """Folder name under results/ for a model spec; distinct models never share one."""
    kind = model_kind(model)
    if kind == "random":
        return "random-" + model.split(":", 1)[1]
    if kind == "local":
        return Path(model).resolve().name
    return model.replace("/", "--")
