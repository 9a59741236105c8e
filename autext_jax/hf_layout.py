"""The Hugging Face side of checkpoints, without JAX: the name table and the layout of a state dict.

The *reference layout* is the published model's state dict: ``transformer.*`` (an HF
``XLMRobertaModel``, pooler included), ``bot_head.0/.2`` and ``lang_head.0/.2`` (each head an
``nn.Sequential(Linear, act, Linear)``). One table (the ``_*_MODULES`` rows + ``_KINDS``) maps every
reference name to an nnx parameter path and its transform. Files in other layouts are first
renamed to the reference layout (encoder under any prefix, heads found by name, or an explicit
``key_map``) by ``detect_layout``, so every check and error speaks in one vocabulary. The runtime
loader and exporter that use this table are in ``convert.py``.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

from autext_jax.config import KNOWN_ENCODERS, EncoderConfig, ModelConfig, is_model_config, read_json_object
from autext_jax.errors import EXIT_USAGE, InputDataError

SAFETENSORS_NAME = "model.safetensors"
SAFETENSORS_INDEX_NAME = "model.safetensors.index.json"
PICKLE_NAME = "pytorch_model.bin"
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "sentencepiece.bpe.model",
    "added_tokens.json",
)
FLOAT_DTYPES = ("F64", "F32", "F16", "BF16")

ENCODER_PREFIX = "transformer."
_ANCHOR = "embeddings.word_embeddings.weight"
# Tensors an HF checkpoint may carry that the model does not use (buffers, MLM head).
_ENCODER_EXTRAS = re.compile(r"^(embeddings\.position_ids|embeddings\.token_type_ids)$")
_FOREIGN_EXTRAS = re.compile(r"^(lm_head\.|cls\.predictions\.)")
HEAD_PARTS = ("bot_head", "lang_head")
POOLER_REF = "transformer.pooler."

class ConversionError(InputDataError):
    """A checkpoint that cannot be converted; the message says which keys or files and what to do."""


class MissingModelError(ConversionError):
    """The model directory is not there at all: a wrong path, so a usage error (exit 2)."""

    exit_code = EXIT_USAGE


# ---- the table ---------------------------------------------------------------------------------
# kind -> (torch parameter name, nnx variable name, transpose?)
_KINDS: dict[str, tuple[tuple[str, str, bool], ...]] = {
    "linear": (("weight", "kernel", True), ("bias", "bias", False)),
    "layer_norm": (("weight", "scale", False), ("bias", "bias", False)),
    "embedding": (("weight", "embedding", False),),
}
# (reference module, nnx module path, kind). "{i}" is the layer index.
_EMBEDDING_MODULES = (
    ("transformer.embeddings.word_embeddings", "encoder.embeddings.word", "embedding"),
    ("transformer.embeddings.position_embeddings", "encoder.embeddings.position", "embedding"),
    ("transformer.embeddings.token_type_embeddings", "encoder.embeddings.token_type", "embedding"),
    ("transformer.embeddings.LayerNorm", "encoder.embeddings.norm", "layer_norm"),
)
_LAYER_MODULES = (
    ("transformer.encoder.layer.{i}.attention.self.query", "encoder.layers.{i}.attention.query", "linear"),
    ("transformer.encoder.layer.{i}.attention.self.key", "encoder.layers.{i}.attention.key", "linear"),
    ("transformer.encoder.layer.{i}.attention.self.value", "encoder.layers.{i}.attention.value", "linear"),
    ("transformer.encoder.layer.{i}.attention.output.dense", "encoder.layers.{i}.attention.output", "linear"),
    (
        "transformer.encoder.layer.{i}.attention.output.LayerNorm",
        "encoder.layers.{i}.attention_norm",
        "layer_norm",
    ),
    ("transformer.encoder.layer.{i}.intermediate.dense", "encoder.layers.{i}.intermediate", "linear"),
    ("transformer.encoder.layer.{i}.output.dense", "encoder.layers.{i}.output", "linear"),
    ("transformer.encoder.layer.{i}.output.LayerNorm", "encoder.layers.{i}.output_norm", "layer_norm"),
)
_POOLER_MODULES = (("transformer.pooler.dense", "encoder.pooler.dense", "linear"),)
_HEAD_MODULES = (
    ("bot_head.0", "bot_head.hidden", "linear"),
    ("bot_head.2", "bot_head.out", "linear"),
    ("lang_head.0", "lang_head.hidden", "linear"),
    ("lang_head.2", "lang_head.out", "linear"),
)


@dataclass(frozen=True)
class TensorRule:
    """One row of the table: a reference-layout tensor and where it lives in the nnx model."""

    ref_key: str
    path: tuple[str | int, ...]
    transpose: bool


def _nnx_path(dotted: str) -> tuple[str | int, ...]:
    return tuple(int(p) if p.isdigit() else p for p in dotted.split("."))


def tensor_rules(cfg: ModelConfig) -> dict[str, TensorRule]:
    """Reference key → rule for every parameter of a model with config ``cfg``."""
    modules = list(_EMBEDDING_MODULES)
    for i in range(cfg.encoder.num_layers):
        modules += [(ref.format(i=i), ours.format(i=i), kind) for ref, ours, kind in _LAYER_MODULES]
    if cfg.encoder.use_pooler:
        modules += _POOLER_MODULES
    modules += _HEAD_MODULES
    rules = {}
    for ref_module, nnx_module, kind in modules:
        for torch_name, nnx_name, transpose in _KINDS[kind]:
            key = f"{ref_module}.{torch_name}"
            rules[key] = TensorRule(key, _nnx_path(f"{nnx_module}.{nnx_name}"), transpose)
    return rules


def _natural_key(name: str) -> tuple:
    return tuple((0, int(p), "") if p.isdigit() else (1, 0, p) for p in name.split("."))


def _head_role(module: str) -> str | None:
    name = module.lower()
    if "bot" in name:
        return "bot_head"
    if "lang" in name or "english" in name or "en_" in name:
        return "lang_head"
    return None


@dataclass
class Layout:
    """How the file's keys map to reference keys (``None``: a known extra to ignore)."""

    mapping: dict[str, str | None]
    unknown: list[str]
    problems: list[str]


def read_key_map(key_map: dict[str, str] | str | Path | None) -> dict[str, str | None]:
    if key_map is None:
        return {}
    if isinstance(key_map, dict):
        return dict(key_map)
    path = Path(key_map)
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise ConversionError(
            f"cannot read key map {path} ({err}); pass a JSON object of HF key → our key"
        ) from None
    if not isinstance(data, dict):
        raise ConversionError(f"key map {path} must be a JSON object of HF key → our key")
    return data


def detect_layout(shapes: dict[str, tuple[int, ...]], key_map: dict[str, str | None] | None = None) -> Layout:
    """Rename the file's keys to the reference layout: explicit ``key_map`` first, then detection."""
    key_map = key_map or {}
    mapping: dict[str, str | None] = {}
    problems: list[str] = []
    absent = sorted(set(key_map) - set(shapes))
    if absent:
        problems.append(f"key map names keys not in the checkpoint: {absent}")
    mapping.update({k: v for k, v in key_map.items() if k in shapes})
    rest = [k for k in shapes if k not in key_map]

    prefixes = sorted({k[: -len(_ANCHOR)] for k in rest if k.endswith(_ANCHOR)})
    if len(prefixes) > 1:
        problems.append(f"several encoders in the file (prefixes {prefixes}); pass a key map to choose one")
    prefix = prefixes[0] if len(prefixes) == 1 else None

    head_layers: dict[str, dict[str, list[str]]] = {"bot_head": {}, "lang_head": {}}
    head_modules: dict[str, set[str]] = {"bot_head": set(), "lang_head": set()}
    unknown = []
    for key in rest:
        rel = key[len(prefix) :] if prefix is not None and key.startswith(prefix) else None
        if rel is not None and rel.split(".")[0] in ("embeddings", "encoder", "pooler"):
            mapping[key] = None if _ENCODER_EXTRAS.match(rel) else ENCODER_PREFIX + rel
            continue
        if _FOREIGN_EXTRAS.match(key):
            mapping[key] = None
            continue
        layer, _, param = key.rpartition(".")
        module = layer.rpartition(".")[0]  # "" for top-level layers such as ``bot_fc1``
        role = _head_role(module or layer) if param in ("weight", "bias") else None
        if role is None:
            unknown.append(key)
            continue
        head_modules[role].add(module or "(top level)")
        head_layers[role].setdefault(layer, []).append(key)

    for role in HEAD_PARTS:
        if len(head_modules[role]) > 1:
            problems.append(
                f"several modules look like the {role}: {sorted(head_modules[role])}; pass a key map"
            )
            continue
        layers = sorted(head_layers[role], key=_natural_key)
        if layers and len(layers) != 2:
            keys = [k for layer in layers for k in sorted(head_layers[role][layer])]
            problems.append(
                f"{role} should be 2 Linear layers (H→hidden_nodes→1); found {len(layers)}: {keys}"
            )
            continue
        if not layers:  # a wholly absent head: load_checkpoint decides (error or allow_fresh)
            continue
        for index, layer in zip((0, 2), layers, strict=True):
            for key in head_layers[role][layer]:
                mapping[key] = f"{role}.{index}.{key.rpartition('.')[2]}"
    sources: dict[str, list[str]] = {}
    for key, ref in mapping.items():
        if ref is not None:
            sources.setdefault(ref, []).append(key)
    clashes = {ref: sorted(keys) for ref, keys in sources.items() if len(keys) > 1}
    if clashes:
        problems.append(f"several tensors map to the same key: {clashes}; pass a key map")
    return Layout(mapping, sorted(unknown), problems)


# ---- config ↔ shapes ---------------------------------------------------------------------------


def shape_facts(shapes_by_ref: dict[str, tuple[int, ...]]) -> dict[str, int]:
    """Hyperparameters that the tensor shapes reveal (head count cannot be among them)."""
    facts: dict[str, int] = {}
    emb = "transformer.embeddings."
    if (s := shapes_by_ref.get(emb + "word_embeddings.weight")) and len(s) == 2:
        facts["vocab_size"], facts["hidden_size"] = s
    if (s := shapes_by_ref.get(emb + "position_embeddings.weight")) and len(s) == 2:
        facts["max_position_embeddings"] = s[0]
    if (s := shapes_by_ref.get(emb + "token_type_embeddings.weight")) and len(s) == 2:
        facts["type_vocab_size"] = s[0]
    layer_ids = {
        int(m.group(1)) for k in shapes_by_ref if (m := re.match(r"transformer\.encoder\.layer\.(\d+)\.", k))
    }
    if layer_ids:
        facts["num_layers"] = max(layer_ids) + 1
    if (s := shapes_by_ref.get("transformer.encoder.layer.0.intermediate.dense.weight")) and len(s) == 2:
        facts["intermediate_size"] = s[0]
    for head in HEAD_PARTS:
        if (s := shapes_by_ref.get(f"{head}.0.weight")) and len(s) == 2:
            facts.setdefault("hidden_nodes", s[0])
    return facts


def validate_config(cfg: ModelConfig, shapes_by_ref: dict[str, tuple[int, ...]], where: str) -> None:
    """Raise if ``cfg`` disagrees with what the tensor shapes say."""
    facts = shape_facts(shapes_by_ref)
    ours = {**{f: getattr(cfg.encoder, f) for f in facts if f != "hidden_nodes"}}
    if "hidden_nodes" in facts:
        ours["hidden_nodes"] = cfg.hidden_nodes
    wrong = [
        f"{name} {ours[name]} in config vs {value} in tensors"
        for name, value in facts.items()
        if ours[name] != value
    ]
    if wrong:
        raise ConversionError(
            f"config.json disagrees with the weights in {where}: {'; '.join(wrong)}; fix the config's "
            "'encoder' object (or 'hidden_nodes') to match the checkpoint"
        )


def config_for(model_dir: Path, shapes_by_ref: dict[str, tuple[int, ...]]) -> tuple[ModelConfig, bool]:
    """The model config and whether config.json is an encoder-only HF config (not the published form)."""
    path = model_dir / "config.json"
    if path.is_file():
        data = read_json_object(path)
        if not is_model_config(data) and "hidden_size" in data:
            encoder = EncoderConfig.from_hf_config(data)
            return ModelConfig(encoder=encoder, transformer_name=_encoder_name(encoder, model_dir)), True
    return ModelConfig.load(model_dir), False


def _encoder_name(encoder: EncoderConfig, model_dir: Path) -> str:
    for name, known in KNOWN_ENCODERS.items():
        if "/" not in name and known.replace(hidden_dropout=0, attention_dropout=0) == encoder.replace(
            hidden_dropout=0, attention_dropout=0
        ):
            return name
    return model_dir.name


