"""Configuration schema: the encoder's hyperparameters and the multi-task model built on it.

One schema serves every entry point. ``EncoderConfig`` mirrors the fields of a Hugging Face
``XLMRobertaConfig``; ``ModelConfig`` adds the two heads and reads/writes the published
``config.json`` of ``pandrei7/autextification-upb-mtl`` (plus our ``"encoder"`` extension).
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from autext_jax.errors import AutextError

POOLINGS = ("cls", "mean", "pooler")
HEAD_ACTIVATIONS = ("relu", "gelu", "tanh")
ENCODER_ACTIVATIONS = ("gelu", "gelu_new", "gelu_pytorch_tanh", "relu")
# The one list of compute dtypes (inference and training); parameters are float32 either way.
COMPUTE_DTYPES = ("float32", "bfloat16")


# ``config.json`` exactly as published with ``pandrei7/autextification-upb-mtl`` (from its Hub page).
PUBLISHED_CONFIG_JSON: dict[str, Any] = {
    "architectures": ["AutextificationMTLModel"],
    "auto_map": {
        "AutoConfig": "config.AutextificationMTLConfig",
        "AutoModel": "model.AutextificationMTLModel",
    },
    "hidden_nodes": 64,
    "model_type": "custom-text-classifier",
    "threshold": 0.9919,
    "torch_dtype": "float32",
    "transformer_name": "xlm-roberta-base",
    "transformers_version": "4.25.1",
}


def is_model_config(data: dict[str, Any]) -> bool:
    """Whether a ``config.json`` is a whole detector's (ours or the published form), not an encoder's."""
    return "hidden_nodes" in data or "transformer_name" in data or "encoder" in data


class ConfigError(AutextError, ValueError):
    """A configuration that cannot describe a usable model; the message says what to fix."""


def check_threshold(value: Any, what: str = "threshold") -> float:
    """The one range check of a decision threshold: a real number in [0, 1] (not a string or bool)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(f"{what} must be a number in [0, 1], got {type(value).__name__} {value!r}")
    if not (math.isfinite(value) and 0.0 <= value <= 1.0):
        raise ConfigError(f"{what} {value} is outside [0, 1]")
    return float(value)


def check_dtype(name: Any, what: str = "dtype") -> str:
    """The one check of a compute dtype name against ``COMPUTE_DTYPES``."""
    if name not in COMPUTE_DTYPES:
        raise ConfigError(f"{what} {name!r} is not one of {COMPUTE_DTYPES}")
    return name


def read_json_object(path: Path) -> dict[str, Any]:
    """A JSON file that must hold one object (``config.json`` and friends); anything else is one line."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ConfigError(f"{path} is not valid JSON ({err})") from None
    except RecursionError:
        raise ConfigError(f"{path} is nested too deeply to be a config file") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path} must hold a JSON object, not a {type(data).__name__}")
    return data


_KINDS = {int: (int,), float: (int, float), str: (str,), bool: (bool,)}


def _check_types(cfg: Any) -> None:
    """Each scalar field has its declared kind (a ``"64"`` from a hand-edited config.json is one line)."""
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        kind = type(f.default) if f.default is not dataclasses.MISSING else None
        allowed = _KINDS.get(kind)
        if allowed is None:
            continue
        if (isinstance(value, bool) and kind is not bool) or not isinstance(value, allowed):
            raise ConfigError(f"{f.name} must be a {kind.__name__}, got {type(value).__name__} {value!r}")


@dataclass(frozen=True)
class EncoderConfig:
    """XLM-RoBERTa encoder hyperparameters (defaults: ``xlm-roberta-base``)."""

    vocab_size: int = 250_002
    hidden_size: int = 768
    num_layers: int = 12
    num_heads: int = 12
    intermediate_size: int = 3072
    max_position_embeddings: int = 514
    type_vocab_size: int = 1
    layer_norm_eps: float = 1e-5
    pad_token_id: int = 1
    hidden_act: str = "gelu"
    hidden_dropout: float = 0.1
    attention_dropout: float = 0.1
    use_pooler: bool = True

    def __post_init__(self) -> None:
        _check_types(self)
        if self.hidden_size % self.num_heads:
            raise ConfigError(
                f"hidden_size {self.hidden_size} is not divisible by num_heads {self.num_heads}"
            )
        if self.hidden_act not in ENCODER_ACTIVATIONS:
            raise ConfigError(f"hidden_act {self.hidden_act!r} is not one of {ENCODER_ACTIVATIONS}")

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    @property
    def max_tokens(self) -> int:
        """Longest sequence (special tokens included) the position table can embed."""
        return self.max_position_embeddings - self.pad_token_id - 1

    # Hugging Face field name -> our field name.
    _HF_FIELDS = {
        "vocab_size": "vocab_size",
        "hidden_size": "hidden_size",
        "num_hidden_layers": "num_layers",
        "num_attention_heads": "num_heads",
        "intermediate_size": "intermediate_size",
        "max_position_embeddings": "max_position_embeddings",
        "type_vocab_size": "type_vocab_size",
        "layer_norm_eps": "layer_norm_eps",
        "pad_token_id": "pad_token_id",
        "hidden_act": "hidden_act",
        "hidden_dropout_prob": "hidden_dropout",
        "attention_probs_dropout_prob": "attention_dropout",
    }

    @classmethod
    def from_hf_config(cls, hf: dict[str, Any]) -> EncoderConfig:
        """Build from a Hugging Face ``config.json`` dict (XLM-R / RoBERTa / BERT style)."""
        if not isinstance(hf, dict):
            raise ConfigError(f"the encoder config must be a JSON object, not a {type(hf).__name__}")
        missing = [k for k in ("hidden_size", "num_hidden_layers", "num_attention_heads") if k not in hf]
        if missing:
            raise ConfigError(f"encoder config lacks {missing}; expected a Hugging Face XLM-R config.json")
        kwargs = {ours: hf[theirs] for theirs, ours in cls._HF_FIELDS.items() if hf.get(theirs) is not None}
        if "use_pooler" in hf:
            kwargs["use_pooler"] = bool(hf["use_pooler"])
        return cls(**kwargs)

    def to_hf_config(self) -> dict[str, Any]:
        """The equivalent Hugging Face ``XLMRobertaConfig`` dict."""
        out: dict[str, Any] = {"model_type": "xlm-roberta", "architectures": ["XLMRobertaModel"]}
        for theirs, ours in self._HF_FIELDS.items():
            out[theirs] = getattr(self, ours)
        out.update(bos_token_id=0, eos_token_id=2, initializer_range=0.02, position_embedding_type="absolute")
        if not self.use_pooler:
            out["use_pooler"] = False
        return out

    def replace(self, **changes: Any) -> EncoderConfig:
        return dataclasses.replace(self, **changes)


# Encoders known without any file: the published model names ``xlm-roberta-base``.
KNOWN_ENCODERS: dict[str, EncoderConfig] = {
    "xlm-roberta-base": EncoderConfig(),
    "xlm-roberta-large": EncoderConfig(
        hidden_size=1024, num_layers=24, num_heads=16, intermediate_size=4096
    ),
}
for _alias in ("FacebookAI/xlm-roberta-base", "FacebookAI/xlm-roberta-large"):
    KNOWN_ENCODERS[_alias] = KNOWN_ENCODERS[_alias.split("/")[1]]


@dataclass(frozen=True)
class ModelConfig:
    """The multi-task detector: encoder + a bot head and a language head."""

    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    hidden_nodes: int = 64
    threshold: float = 0.9919
    pooling: str = "cls"
    head_activation: str = "relu"
    head_dropout: float = 0.1
    transformer_name: str = "xlm-roberta-base"

    def __post_init__(self) -> None:
        if self.pooling not in POOLINGS:
            raise ConfigError(f"pooling {self.pooling!r} is not one of {POOLINGS}")
        if self.head_activation not in HEAD_ACTIVATIONS:
            raise ConfigError(f"head_activation {self.head_activation!r} is not one of {HEAD_ACTIVATIONS}")
        if self.pooling == "pooler" and not self.encoder.use_pooler:
            raise ConfigError("pooling='pooler' needs an encoder with use_pooler=True")
        check_threshold(self.threshold)
        _check_types(self)

    def replace(self, **changes: Any) -> ModelConfig:
        return dataclasses.replace(self, **changes)

    # ---- the published config.json form ---------------------------------------------------

    def to_published_json(self, torch_dtype: str = "float32") -> dict[str, Any]:
        """``config.json`` as published (so the original code can read it) plus our ``encoder`` object."""
        published = {k: v for k, v in PUBLISHED_CONFIG_JSON.items() if k != "transformers_version"}
        return {
            **published,
            "torch_dtype": torch_dtype,
            "hidden_nodes": self.hidden_nodes,
            "threshold": self.threshold,
            "transformer_name": self.transformer_name,
            "pooling": self.pooling,
            "head_activation": self.head_activation,
            "head_dropout": self.head_dropout,
            "encoder": self.encoder.to_hf_config(),
        }

    @classmethod
    def from_published_json(cls, data: dict[str, Any], base_dir: str | Path | None = None) -> ModelConfig:
        """Read a published (or exported) ``config.json`` dict.

        Encoder hyperparameters come from, in order: our ``"encoder"`` object, ``transformer_name``
        as a local directory holding an HF ``config.json`` (relative paths resolve against
        ``base_dir``), or the built-in table of known encoders.
        """
        name = data.get("transformer_name", "xlm-roberta-base")
        encoder = _resolve_encoder(data.get("encoder"), name, base_dir)
        kwargs: dict[str, Any] = {"encoder": encoder, "transformer_name": name}
        for key in ("hidden_nodes", "threshold", "pooling", "head_activation", "head_dropout"):
            if key in data:
                kwargs[key] = data[key]
        return cls(**kwargs)

    def save(self, directory: str | Path, torch_dtype: str = "float32") -> Path:
        """Write ``config.json``; ``torch_dtype`` names the storage dtype of the weights beside it."""
        path = Path(directory) / "config.json"
        data = self.to_published_json(torch_dtype)
        path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
        return path

    @classmethod
    def load(cls, directory: str | Path) -> ModelConfig:
        path = Path(directory) / "config.json"
        if not path.is_file():
            raise ConfigError(f"no config.json in {directory}; pass a model directory in the HF layout")
        try:
            return cls.from_published_json(read_json_object(path), base_dir=path.parent)
        except ConfigError as err:
            raise ConfigError(f"{path}: {err}" if str(path) not in str(err) else str(err)) from None


def _resolve_encoder(
    encoder_json: dict[str, Any] | None, transformer_name: str, base_dir: str | Path | None
) -> EncoderConfig:
    if encoder_json is not None:
        return EncoderConfig.from_hf_config(encoder_json)
    candidates = [Path(transformer_name)]
    if base_dir is not None and not Path(transformer_name).is_absolute():
        candidates.insert(0, Path(base_dir) / transformer_name)
    for directory in candidates:
        if (directory / "config.json").is_file():
            return EncoderConfig.from_hf_config(json.loads((directory / "config.json").read_text()))
    if transformer_name in KNOWN_ENCODERS:
        return KNOWN_ENCODERS[transformer_name]
    raise ConfigError(
        f"cannot tell the encoder's shape: config.json has no 'encoder' object, transformer_name "
        f"{transformer_name!r} is neither a local directory with config.json nor one of "
        f"{sorted(KNOWN_ENCODERS)}; add an 'encoder' object (an HF XLM-R config) to config.json"
    )
