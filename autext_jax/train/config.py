"""The training configuration: a frozen dataclass tree, Python config files, and typed ``--set`` overrides.

A config file is Python with ``get_config() -> TrainConfig``. ``--set a.b=value`` replaces one leaf
field; the value is parsed by the field's annotated type (``int``, ``float``, ``bool``, ``str``,
``X | None``, ``tuple[...]``), and the dataclasses' own validation runs on the result.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from autext_jax.config import ConfigError, ModelConfig, check_dtype
from autext_jax.data.dataset import DataConfig
from autext_jax.train.optim import OptimizerConfig
from autext_jax.train.sharding import MeshConfig


@dataclass(frozen=True)
class CheckpointConfig:
    """Save every ``every_steps`` batches and at the end; keep the newest ``keep``.

    ``stop_check_every``: the fewest batches between two checks whether a process was asked to stop
    (SIGTERM/SIGINT); a multi-process run also spaces them ~5 s apart (``preemption.StopAgreement``:
    a key-value exchange through JAX's coordination service, no device work).
    """

    every_steps: int = 500
    keep: int = 3
    async_save: bool = True
    stop_check_every: int = 1

    def __post_init__(self) -> None:
        for name in ("every_steps", "keep", "stop_check_every"):
            if getattr(self, name) < 1:
                raise ConfigError(f"checkpoint.{name} must be >= 1, got {getattr(self, name)}")


@dataclass(frozen=True)
class EvalConfig:
    """Validation every ``every_steps`` batches (0: only at the end) with ``batch_size`` rows per batch."""

    every_steps: int = 500
    batch_size: int = 64

    def __post_init__(self) -> None:
        if self.every_steps < 0 or self.batch_size < 1:
            raise ConfigError(f"eval.every_steps must be >= 0 and eval.batch_size >= 1, got {self}")


@dataclass(frozen=True)
class TrainConfig:
    """Everything that defines a training run (the resolved copy is saved in the workdir).

    ``init``: a model directory in our HF layout, a Hub id, or an encoder-only HF checkpoint (heads
    start fresh); its config replaces ``model``. Without ``init`` the model is randomly initialised
    from ``model`` and ``tokenizer`` must name a tokenizer directory. ``max_steps`` (batches)
    overrides ``epochs`` and sets the LR schedule's length.
    """

    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    mesh: MeshConfig = field(default_factory=MeshConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    init: str | None = None
    tokenizer: str | None = None
    batch_size: int = 32
    epochs: int = 1
    max_steps: int | None = None
    lang_loss_weight: float = 1.0
    dtype: str = "float32"
    seed: int = 0
    log_every: int = 50
    progress: bool = True
    tensorboard: bool = True  # scalars as TensorBoard event files in WORKDIR/tensorboard
    allow_config_change: bool = False

    def __post_init__(self) -> None:
        check_dtype(self.dtype)
        if self.batch_size < 1 or self.epochs < 1 or self.log_every < 1:
            raise ConfigError("batch_size, epochs and log_every must be >= 1")
        if self.max_steps is not None and self.max_steps < 1:
            raise ConfigError(f"max_steps must be >= 1 (or unset), got {self.max_steps}")
        if self.lang_loss_weight < 0:
            raise ConfigError(f"lang_loss_weight must be >= 0, got {self.lang_loss_weight}")

    def replace(self, **changes: Any) -> TrainConfig:
        return dataclasses.replace(self, **changes)

    def to_json(self) -> dict[str, Any]:
        """Plain JSON data (tuples become lists), as written to ``train_config.json``."""
        return json.loads(json.dumps(dataclasses.asdict(self)))


def load_config_file(path: str | Path) -> TrainConfig:
    """Run a Python config file and return its ``get_config()``."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist; pass e.g. --config configs/tiny.py")
    spec = importlib.util.spec_from_file_location(f"autext_config_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    except SyntaxError as err:
        raise ConfigError(f"{path}:{err.lineno}: syntax error ({err.msg}) in the config file") from None
    except (ValueError, TypeError) as err:  # a config dataclass rejected its values
        raise ConfigError(f"{path}: {err}") from None
    except Exception as err:  # noqa: BLE001 - the user's own file failed to run (a NameError, an import, ...)
        raise ConfigError(f"{path}: the config file failed to run: {type(err).__name__}: {err}") from None
    getter = getattr(module, "get_config", None)
    if not callable(getter):
        raise ConfigError(f"{path} defines no get_config() function")
    cfg = getter()
    if not isinstance(cfg, TrainConfig):
        raise ConfigError(f"{path}: get_config() returned {type(cfg).__name__}, expected TrainConfig")
    return cfg


def apply_overrides(cfg: TrainConfig, items: list[str]) -> TrainConfig:
    """Apply ``key.path=value`` strings in order; each is type-checked against the field it sets."""
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set {item!r}: expected key=value, e.g. --set optimizer.learning_rate=3e-5")
        cfg = _set_path(cfg, key.strip().split("."), raw.strip(), key.strip())
    return cfg


def _set_path(obj: Any, parts: list[str], raw: str, key: str) -> Any:
    if not dataclasses.is_dataclass(obj):
        raise ConfigError(f"--set {key}: {'.'.join(parts)} is below a plain value, not a config section")
    names = [f.name for f in dataclasses.fields(obj) if not f.name.startswith("_")]
    name = parts[0]
    if name not in names:
        raise ConfigError(f"--set {key}: unknown field {name!r}; {type(obj).__name__} has {names}")
    if len(parts) == 1:
        annotation = typing.get_type_hints(type(obj))[name]
        if dataclasses.is_dataclass(annotation):
            raise ConfigError(
                f"--set {key}: {name} is a section; set one of its fields, e.g. {key}.<field>=…"
            )
        value = parse_value(raw, annotation, key)
    else:
        value = _set_path(getattr(obj, name), parts[1:], raw, key)
    try:
        return dataclasses.replace(obj, **{name: value})
    except (ValueError, TypeError) as err:
        raise ConfigError(f"--set {key}={raw}: {err}") from None


_TRUE, _FALSE = ("true", "yes", "1", "on"), ("false", "no", "0", "off")


def parse_value(raw: str, annotation: Any, key: str) -> Any:
    """Parse ``raw`` as ``annotation`` (a field's type hint) or fail naming the field and the type."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        if type(None) in args and raw.lower() in ("none", "null", ""):
            return None
        options = [a for a in args if a is not type(None)]
        errors = []
        for option in options:
            try:
                return parse_value(raw, option, key)
            except ConfigError as err:
                errors.append(str(err))
        raise ConfigError(errors[0] if len(errors) == 1 else f"--set {key}: cannot parse {raw!r}")
    if origin is tuple:
        items = _split_list(raw, key)
        inner = args[0] if args else str
        if len(args) > 1 and args[1] is not Ellipsis:
            raise ConfigError(f"--set {key}: fixed-length tuples are not supported")
        return tuple(parse_value(str(item), inner, key) for item in items)
    if annotation is bool:
        if raw.lower() in _TRUE:
            return True
        if raw.lower() in _FALSE:
            return False
        raise ConfigError(f"--set {key}: expected a boolean (true/false), got {raw!r}")
    if annotation is int:
        try:
            return int(raw)
        except ValueError:
            raise ConfigError(f"--set {key}: expected an integer, got {raw!r}") from None
    if annotation is float:
        try:
            return float(raw)
        except ValueError:
            raise ConfigError(f"--set {key}: expected a number, got {raw!r}") from None
    if annotation is str:
        return raw
    raise ConfigError(f"--set {key}: fields of type {annotation} cannot be set from the command line")


def _split_list(raw: str, key: str) -> list[Any]:
    if raw.startswith("["):
        try:
            items = json.loads(raw)
        except json.JSONDecodeError:
            raise ConfigError(f"--set {key}: {raw!r} is not a JSON list") from None
        if not isinstance(items, list):
            raise ConfigError(f"--set {key}: expected a list, got {raw!r}")
        return items
    return [part.strip() for part in raw.split(",") if part.strip()]
