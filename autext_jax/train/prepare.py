"""The model a training run starts from: ``--init`` (a full model or an encoder only) or random weights.

Reads the checkpoint once through ``convert`` and returns the model config, the parameter layout the
jitted steps need and the initial values; nothing here touches data, devices or the workdir.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from autext_jax import paths
from autext_jax.config import ConfigError, ModelConfig
from autext_jax.convert import load_checkpoint
from autext_jax.hub import check_tokenizer, fetch_dir, load_tokenizer, resolve_model_dir
from autext_jax.model import abstract_model, compute_dtype
from autext_jax.train.config import TrainConfig
from autext_jax.train.steps import ModelLayout, describe_model

# ModelConfig fields that only shape the task heads: taken from the config when --init has no heads.
HEAD_FIELDS = ("hidden_nodes", "pooling", "head_activation", "head_dropout", "threshold")


@dataclass
class Prepared:
    """The model a run starts from, before any data or devices are touched."""

    cfg: TrainConfig
    model_cfg: ModelConfig
    tokenizer_dir: Path
    initial: dict[str, Any] | None  # parameter values from --init, or None for a random start
    layout: ModelLayout
    fresh_note: str = ""  # what --init lacked and was initialised randomly (logged on a fresh start)


def _local_dir(location: str) -> Path:
    """A model or tokenizer folder as a local path (a URL is copied once into the local cache)."""
    return fetch_dir(location) if paths.is_url(location) else Path(location)


def prepare_model(cfg: TrainConfig) -> Prepared:
    """Resolve ``init``/``model``/``tokenizer`` into a model config, a layout and initial values.

    ``--init`` is read once; an encoder-only checkpoint gets heads shaped by the config's head fields.
    """
    dtype = compute_dtype(cfg.dtype)
    if cfg.init:
        model_dir = resolve_model_dir(cfg.init)
        heads = {f: getattr(cfg.model, f) for f in HEAD_FIELDS}
        loaded = load_checkpoint(model_dir, allow_fresh=True, dtype=dtype, seed=cfg.seed, head_settings=heads)
        fresh_note = ""
        if loaded.fresh:
            fresh_note = (
                f"{model_dir} has no {', '.join(loaded.fresh)}: initialised fresh from seed {cfg.seed} "
                "(random weights, trained from scratch)"
            )
        layout, values = describe_model(loaded.model)
        tokenizer_dir = _local_dir(cfg.tokenizer) if cfg.tokenizer else model_dir
        return Prepared(
            cfg.replace(model=loaded.config), loaded.config, tokenizer_dir, values, layout, fresh_note
        )
    if not cfg.tokenizer:
        raise ConfigError(
            "no model to start from: pass --init MODEL_DIR_OR_HUB_ID, or --set tokenizer=DIR to train "
            "the config's model from random weights"
        )
    layout, _ = describe_model(abstract_model(cfg.model, dtype=dtype))
    return Prepared(cfg, cfg.model, _local_dir(cfg.tokenizer), None, layout)


def load_training_tokenizer(directory: Path, model_cfg: ModelConfig, max_length: int):
    if not directory.is_dir():
        raise ConfigError(f"tokenizer directory {directory} does not exist")
    try:
        tokenizer = load_tokenizer(directory)
    except FileNotFoundError as err:
        raise ConfigError(str(err)) from None
    check_tokenizer(tokenizer, model_cfg, directory)
    if max_length > model_cfg.encoder.max_tokens:
        raise ConfigError(
            f"data.max_length {max_length} exceeds the model's {model_cfg.encoder.max_tokens} positions"
        )
    return tokenizer
