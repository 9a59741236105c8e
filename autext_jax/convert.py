"""Checkpoints both ways: PyTorch/HF state dicts (safetensors) ↔ the Flax NNX ``MultiTaskModel``.

The *reference layout* is the published model's state dict: ``transformer.*`` (an HF
``XLMRobertaModel``, pooler included), ``bot_head.0/.2`` and ``lang_head.0/.2`` (each head an
``nn.Sequential(Linear, act, Linear)``). One table (the ``_*_MODULES`` rows + ``_KINDS``) maps every
reference name to an nnx parameter path and its transform. Files in other layouts are first
renamed to the reference layout (encoder under any prefix, heads found by name, or an explicit
``key_map``), so every check and error speaks in one vocabulary.

Loading streams: the model is built abstractly (``nnx.eval_shape``), then filled one tensor at a
time, so peak memory stays near one copy of the weights.
"""

from __future__ import annotations

import dataclasses
import json
import re
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.extend.core import ClosedJaxpr, Var, jaxpr_as_fun

from autext_jax.config import EncoderConfig, ModelConfig, read_json_object
from autext_jax.errors import EXIT_USAGE, InputDataError
from autext_jax.model import MultiTaskModel, abstract_model, create_model

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
# Fixed header metadata, a single key: safetensors writes metadata maps in hash order.
_EXPORT_METADATA = {"format": "pt"}
_EXPORT_FREE_FIELDS = ("threshold", "transformer_name")  # may differ from the model's own config

ENCODER_PREFIX = "transformer."
_ANCHOR = "embeddings.word_embeddings.weight"
# Tensors an HF checkpoint may carry that the model does not use (buffers, MLM head).
_ENCODER_EXTRAS = re.compile(r"^(embeddings\.position_ids|embeddings\.token_type_ids)$")
_FOREIGN_EXTRAS = re.compile(r"^(lm_head\.|cls\.predictions\.)")
_HEAD_PARTS = ("bot_head", "lang_head")
_POOLER_REF = "transformer.pooler."


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


# ---- reading tensor files ----------------------------------------------------------------------


class _TensorSource:
    """Names, shapes and (lazily, one at a time) values of the tensors in a checkpoint directory."""

    def __init__(self, model_dir: Path, allow_pickle: bool):
        self.model_dir = model_dir
        self._file_of: dict[str, Path] = {}
        self.shapes: dict[str, tuple[int, ...]] = {}
        self.dtypes: dict[str, str] = {}  # safetensors' names ("F32", "I8", ...) for every tensor
        self._pickled: dict[str, Any] | None = None
        single, index = model_dir / SAFETENSORS_NAME, model_dir / SAFETENSORS_INDEX_NAME
        if single.is_file():
            self._scan_safetensors([single])
        elif index.is_file():
            self._scan_safetensors(self._shards(index))
        elif (model_dir / PICKLE_NAME).is_file():
            if not allow_pickle:
                raise ConversionError(
                    f"{model_dir} has only {PICKLE_NAME} (a pickle, which can run code when loaded); "
                    "if you trust it pass allow_pickle=True (CLI: --allow-pickle), or convert it to "
                    f"{SAFETENSORS_NAME}"
                )
            self._load_pickle(model_dir / PICKLE_NAME)
        else:
            raise ConversionError(
                f"no {SAFETENSORS_NAME} in {model_dir}; pass a directory holding the model's weights"
            )

    @staticmethod
    def _shards(index: Path) -> list[Path]:
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
        except (json.JSONDecodeError, KeyError, TypeError) as err:
            raise ConversionError(f"{index} is not a safetensors index ({err!r})") from None
        return [index.parent / name for name in sorted(set(weight_map.values()))]

    def _scan_safetensors(self, files: list[Path]) -> None:
        from safetensors import SafetensorError, safe_open

        for path in files:
            try:
                with safe_open(path, framework="numpy") as handle:
                    for key in handle.keys():
                        tensor = handle.get_slice(key)
                        self.shapes[key] = tuple(tensor.get_shape())
                        self.dtypes[key] = tensor.get_dtype()
                        self._file_of[key] = path
            except (SafetensorError, OSError) as err:
                raise ConversionError(
                    f"{path} is not a readable safetensors file ({err}); re-download or re-export it"
                ) from None

    def _load_pickle(self, path: Path) -> None:
        import torch  # opt-in path only: the package itself never needs torch

        try:
            try:
                state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
            except RuntimeError:  # legacy (pre-zip) pickles cannot be memory-mapped
                state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as err:  # torch raises many types for bad pickles
            raise ConversionError(f"cannot read {path} as a weights-only torch pickle ({err})") from None
        if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
            state = state["state_dict"]
        self._pickled = {k: v for k, v in state.items() if hasattr(v, "shape")}
        self.shapes = {k: tuple(v.shape) for k, v in self._pickled.items()}
        self.dtypes = {k: _TORCH_DTYPES.get(str(v.dtype), str(v.dtype)) for k, v in self._pickled.items()}

    def read_many(self, keys: list[str]) -> Iterator[tuple[str, np.ndarray]]:
        """Yield ``(key, float32 array)`` one tensor at a time."""
        for key in keys:
            if self._pickled is not None:
                yield key, self._pickled[key].float().numpy()
            else:
                yield key, _read_float32(self._file_of[key], key, self.shapes[key])


# Weights we read as float32 without loss of meaning. Integer (quantised) tensors would need their
# scales, which no supported layout carries: they are refused rather than cast into nonsense.
FLOAT_DTYPES = ("F64", "F32", "F16", "BF16")
_TORCH_DTYPES = {
    "torch.float64": "F64", "torch.float32": "F32", "torch.float16": "F16", "torch.bfloat16": "BF16"
}

# Large tensors are read in row blocks of about this size, reopening the file for each block:
# pages touched through a memory map count towards RSS until it is closed, so reading the
# 768 MB word embedding in one go would briefly hold it twice.
_BLOCK_BYTES = 64 * 2**20


def _read_float32(path: Path, key: str, shape: tuple[int, ...]) -> np.ndarray:
    row_values = int(np.prod(shape[1:], dtype=np.int64)) if len(shape) > 1 else 1
    rows_per_block = max(1, _BLOCK_BYTES // (4 * row_values))
    if not shape or shape[0] <= rows_per_block:
        return _rows(path, key, None, None)
    out = np.empty(shape, dtype=np.float32)
    for start in range(0, shape[0], rows_per_block):
        stop = min(start + rows_per_block, shape[0])
        out[start:stop] = _rows(path, key, start, stop)
    return out


def _rows(path: Path, key: str, start: int | None, stop: int | None) -> np.ndarray:
    """Rows ``start:stop`` (all when ``None``) of one tensor as float32; the file is closed after."""
    from safetensors import safe_open

    with safe_open(path, framework="numpy") as handle:
        tensor = handle.get_slice(key)
        if tensor.get_dtype() != "BF16":
            return np.asarray(tensor[start:stop] if start is not None else handle.get_tensor(key), np.float32)
    # numpy has no bfloat16: read it through JAX (ml_dtypes) instead.
    with safe_open(path, framework="flax") as handle:
        tensor = handle.get_slice(key)
        return np.asarray(tensor[start:stop] if start is not None else handle.get_tensor(key), np.float32)


# ---- detecting the layout ----------------------------------------------------------------------


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

    for role in _HEAD_PARTS:
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
    for head in _HEAD_PARTS:
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


def _config_for(model_dir: Path, shapes_by_ref: dict[str, tuple[int, ...]]) -> tuple[ModelConfig, bool]:
    """The model config and whether config.json is an encoder-only HF config (not the published form)."""
    path = model_dir / "config.json"
    if path.is_file():
        data = read_json_object(path)
        published = "hidden_nodes" in data or "transformer_name" in data or "encoder" in data
        if not published and "hidden_size" in data:
            encoder = EncoderConfig.from_hf_config(data)
            return ModelConfig(encoder=encoder, transformer_name=_encoder_name(encoder, model_dir)), True
    return ModelConfig.load(model_dir), False


def _encoder_name(encoder: EncoderConfig, model_dir: Path) -> str:
    from autext_jax.config import KNOWN_ENCODERS

    for name, known in KNOWN_ENCODERS.items():
        if "/" not in name and known.replace(hidden_dropout=0, attention_dropout=0) == encoder.replace(
            hidden_dropout=0, attention_dropout=0
        ):
            return name
    return model_dir.name


# ---- loading -----------------------------------------------------------------------------------


@dataclass
class LoadedCheckpoint:
    """A loaded model, its config, and which parts (if any) were initialised randomly."""

    config: ModelConfig
    model: MultiTaskModel
    fresh: tuple[str, ...] = ()
    ignored: tuple[str, ...] = ()
    model_dir: Path | None = None


def _fresh_part(ref_key: str) -> str | None:
    if ref_key.startswith(_POOLER_REF):
        return "encoder.pooler"
    head = ref_key.split(".")[0]
    return head if head in _HEAD_PARTS else None


def _match_rules(
    layout: Layout,
    explicit: dict[str, str | None],
    rules: dict[str, TensorRule],
    config: ModelConfig,
    allow_fresh: bool,
    model_dir: Path,
) -> tuple[dict[str, str], list[str]]:
    """Reference key → file key for every rule, and the parts to initialise; raise on any gap."""
    bad_targets = {k: v for k, v in explicit.items() if v is not None and v not in rules}
    if bad_targets:
        raise ConversionError(
            f"key map targets that are not reference keys for this config: {bad_targets}; "
            "use names like 'transformer.encoder.layer.0.output.dense.weight' or 'bot_head.0.weight'"
        )
    unknown = list(layout.unknown) + sorted(
        k for k, ref in layout.mapping.items() if ref is not None and ref not in rules
    )
    if not config.encoder.use_pooler:  # a stored pooler the config does not use is a known extra
        unknown = [k for k in unknown if not (layout.mapping.get(k) or "").startswith(_POOLER_REF)]
    if unknown:
        raise ConversionError(
            f"unknown tensors in {model_dir}: {unknown}; pass a key map (HF key → our key) for them"
        )
    by_ref = {ref: k for k, ref in layout.mapping.items() if ref in rules}
    missing = [ref for ref in rules if ref not in by_ref]
    fresh = sorted({_fresh_part(ref) for ref in missing} - {None})
    if missing and (not allow_fresh or any(_fresh_part(r) is None for r in missing)):
        raise ConversionError(
            f"missing tensors in {model_dir}: {missing}"
            + (
                "; only the heads and the pooler may be missing, even with allow_fresh"
                if allow_fresh
                else "; pass allow_fresh=True only if random heads/pooler are intended"
            )
        )
    for part in fresh:  # a fresh part must be wholly absent, never half-loaded
        present = [by_ref[r] for r in by_ref if _fresh_part(r) == part]
        if present:
            raise ConversionError(
                f"{part} is only partly present in {model_dir} (has {present}); fix the file"
            )

    return by_ref, fresh


def load_checkpoint(
    model_dir: str | Path,
    *,
    key_map: dict[str, str] | str | Path | None = None,
    allow_pickle: bool = False,
    dtype=None,
    allow_fresh: bool = False,
    seed: int = 0,
    config: ModelConfig | None = None,
    head_settings: dict[str, Any] | None = None,
) -> LoadedCheckpoint:
    """Load an HF-layout directory (published, exported or encoder-only) into a ``MultiTaskModel``.

    ``dtype`` is the compute dtype; parameters are always float32. ``allow_fresh`` lets whole heads
    or the pooler be missing (they are initialised from ``seed`` and named in ``fresh``); otherwise
    anything missing is an error. ``config`` overrides config.json (still checked against shapes).
    ``head_settings`` (ModelConfig fields) shape the heads of an encoder-only checkpoint, whose
    config.json says nothing about them (e.g. mean pooling for an e5 encoder).
    The model comes back in eval mode (dropout off).
    """
    model_dir = Path(model_dir)
    dtype = None if dtype is None else jnp.dtype(dtype)
    if not model_dir.is_dir():
        raise MissingModelError(
            f"model directory {model_dir} does not exist; pass a directory in the HF layout"
        )
    source = _TensorSource(model_dir, allow_pickle)
    explicit = read_key_map(key_map)
    layout = detect_layout(source.shapes, explicit)
    if layout.problems:
        raise ConversionError(f"cannot map the tensors in {model_dir}: {'; '.join(layout.problems)}")
    shapes_by_ref = {ref: source.shapes[k] for k, ref in layout.mapping.items() if ref is not None}
    if config is None:
        config, encoder_only = _config_for(model_dir, shapes_by_ref)
    else:
        encoder_only = False
    if encoder_only and head_settings:
        config = config.replace(**head_settings)
    if encoder_only and not allow_fresh:
        raise ConversionError(
            f"{model_dir} holds an encoder-only HF checkpoint (no task heads); pass allow_fresh=True "
            "(training's --init) to start the heads from random weights"
        )
    validate_config(config, shapes_by_ref, str(model_dir))

    rules = tensor_rules(config)
    by_ref, fresh = _match_rules(layout, explicit, rules, config, allow_fresh, model_dir)

    graphdef, params, rest, fresh_values = _skeleton(config, dtype, seed, tuple(fresh))
    want = expected_shapes(config, params)
    bad = [
        f"{file_key} {source.shapes[file_key]} (expected {want[ref]})"
        for ref, file_key in by_ref.items()
        if tuple(source.shapes[file_key]) != want[ref]
    ]
    if bad:
        raise ConversionError(f"mis-shaped tensors in {model_dir}: {sorted(bad)}")
    dtypes = source.dtypes
    not_float = sorted(f"{k} ({dtypes[k]})" for k in by_ref.values() if dtypes[k] not in FLOAT_DTYPES)
    if not_float:
        raise ConversionError(
            f"{len(not_float)} tensors in {model_dir} are not floating point, e.g. "
            f"{', '.join(not_float[:3])}; quantised checkpoints are not supported: store the weights as "
            f"{'/'.join(FLOAT_DTYPES)}"
        )

    values: dict[tuple, jax.Array] = dict(fresh_values)
    ref_of_file = {k: ref for ref, k in by_ref.items()}
    non_finite = []
    for file_key, array in source.read_many(list(ref_of_file)):
        if array.size and not (np.isfinite(array.min()) and np.isfinite(array.max())):  # NaN propagates;
            non_finite.append(file_key)  # two reductions, no temporary as large as the tensor
        rule = rules[ref_of_file[file_key]]
        if rule.transpose:
            array = np.ascontiguousarray(array.T)
        # Wait for each transfer: async copies would keep many host buffers alive at once.
        values[rule.path] = jax.device_put(array).block_until_ready()
        del array
    if non_finite:
        raise ConversionError(
            f"{len(non_finite)} tensors in {model_dir} hold NaN or infinite values, e.g. "
            f"{', '.join(sorted(non_finite)[:3])}; the checkpoint is damaged: re-download or re-export it"
        )
    flat = nnx.to_flat_state(params)
    for path, variable in flat:
        variable.set_value(values.pop(path))
    model = nnx.merge(graphdef, params, rest)
    model.eval()  # a loaded checkpoint scores; training switches it back with model.train()
    ignored = tuple(sorted(k for k, ref in layout.mapping.items() if ref is None or ref not in rules))
    return LoadedCheckpoint(config, model, tuple(fresh), ignored, model_dir)


def check_tokenizer(tokenizer, config: ModelConfig, where: str | Path) -> None:
    """Refuse a tokenizer whose ids do not all fit the embedding table (they would index out of range)."""
    size = len(tokenizer)
    if size > config.encoder.vocab_size:
        raise ConversionError(
            f"the tokenizer in {where} has {size} tokens but the model's embedding has "
            f"{config.encoder.vocab_size} rows; use the tokenizer the model was trained with"
        )


def expected_shapes(cfg: ModelConfig, params: nnx.State | None = None) -> dict[str, tuple[int, ...]]:
    """Reference key → shape in the file (torch orientation) for a model with config ``cfg``."""
    if params is None:
        params = nnx.state(abstract_model(cfg), nnx.Param)
    shapes = {path: tuple(var.get_value().shape) for path, var in nnx.to_flat_state(params)}
    return {
        key: shapes[rule.path][::-1] if rule.transpose else shapes[rule.path]
        for key, rule in tensor_rules(cfg).items()
    }


def _skeleton(cfg: ModelConfig, dtype, seed: int, fresh: tuple[str, ...]):
    """Graph, abstract parameters, RNG state and ``fresh`` parts' parameters of a model seeded with ``seed``.

    With nothing fresh (every scoring load) one trace of the initialiser gives the structure and the RNG
    state is computed from that trace alone, with no compilation (see ``_rng_state``).
    """
    if fresh:
        graphdef, params, _ = nnx.split(abstract_model(cfg, dtype=dtype), nnx.Param, ...)
        rest, fresh_values = _materialise_rest(cfg, dtype, seed, fresh)
        return graphdef, params, rest, fresh_values
    graphdef, params, rest = _rng_state(cfg, dtype, seed)
    return graphdef, params, rest, {}


def _rng_state(cfg: ModelConfig, dtype, seed: int):
    """Graph, abstract parameters and concrete non-parameter (RNG) state of ``create_model(cfg, seed)``.

    The RNG keys are a few ``fold_in`` steps from the seeds; evaluating just the traced equations that
    lead to them (op by op, integer maths only) gives the same bits as running the whole initialiser
    under ``jit``, without compiling it or computing a single weight.
    """
    graph = {}

    def build():
        graph["def"], params, rest = nnx.split(create_model(cfg, seed=seed, dtype=dtype), nnx.Param, ...)
        return params, rest

    closed, (params, rest) = jax.make_jaxpr(build, return_shape=True)()
    jaxpr = closed.jaxpr
    n_params = len(jax.tree.leaves(params))
    wanted = jaxpr.outvars[n_params:]
    needed = {v for v in wanted if isinstance(v, Var)}
    eqns = []
    for eqn in reversed(jaxpr.eqns):  # dead-code elimination: keep what the RNG state depends on
        if any(v in needed for v in eqn.outvars):
            eqns.append(eqn)
            needed.update(v for v in eqn.invars if isinstance(v, Var))
    pruned = ClosedJaxpr(jaxpr.replace(outvars=wanted, eqns=eqns[::-1]), closed.consts)
    values = jax.device_put(jaxpr_as_fun(pruned)())  # op by op, no compilation; literal counts → arrays too
    return graph["def"], params, jax.tree.unflatten(jax.tree.structure(rest), values)


def _materialise_rest(cfg: ModelConfig, dtype, seed: int, fresh: tuple[str, ...]):
    """RNG state (and the parameters of ``fresh`` parts) of a model seeded with ``seed``.

    Runs model creation under ``jit``: XLA drops the initialisers of everything not returned,
    so a full-size model never materialises random weights that would be overwritten.
    """

    def build():
        _, params, rest = nnx.split(create_model(cfg, seed=seed, dtype=dtype), nnx.Param, ...)
        chosen = {
            path: var.get_value()
            for path, var in nnx.to_flat_state(params)
            if any(".".join(map(str, path)).startswith(part + ".") for part in fresh)
        }
        return rest, chosen

    return jax.jit(build)()


# ---- export ------------------------------------------------------------------------------------


def to_state_dict(model: MultiTaskModel) -> dict[str, np.ndarray]:
    """Reference-layout state dict (torch names and orientation, float32, C-contiguous)."""
    out = {}
    params = nnx.state(model, nnx.Param)
    flat = {path: var for path, var in nnx.to_flat_state(params)}
    for key, rule in tensor_rules(model.cfg).items():
        array = np.asarray(jax.device_get(flat[rule.path].get_value()), dtype=np.float32)
        # A writable copy (jax buffers are read-only; torch.from_numpy warns on those).
        out[key] = np.array(array.T if rule.transpose else array, order="C", copy=True)
    return out


# Storage dtypes for export (numpy can write both; parameters are float32 in memory either way).
STORAGE_DTYPES = {"float32": np.float32, "float16": np.float16}


def export_checkpoint(
    model: MultiTaskModel,
    config: ModelConfig,
    out_dir: str | Path,
    *,
    tokenizer_dir: str | Path | None = None,
    storage_dtype: str = "float32",
) -> Path:
    """Write an HF-layout directory the published code (and ``load_checkpoint``) can read.

    ``model.safetensors`` (reference layout), ``config.json`` (published form + ``encoder``) and the
    tokenizer files from ``tokenizer_dir``. Same model and config → the same bytes.
    ``storage_dtype="float16"`` halves the file by storing the matrices (ndim ≥ 2) in float16; vectors
    (biases, LayerNorm) stay float32: they are ~0.1% of the bytes but, measured on the mini model,
    rounding them moves probabilities more than rounding all the matrices. Loading always computes
    from float32 copies.
    """
    if storage_dtype not in STORAGE_DTYPES:
        raise ConversionError(f"storage_dtype {storage_dtype!r} is not one of {sorted(STORAGE_DTYPES)}")
    from safetensors.numpy import save_file

    out_dir = Path(out_dir)
    # Only the threshold and the encoder's name may differ from the config the model was built with.
    differs = [
        f.name
        for f in dataclasses.fields(ModelConfig)
        if f.name not in _EXPORT_FREE_FIELDS and getattr(config, f.name) != getattr(model.cfg, f.name)
    ]
    if differs:
        raise ConversionError(
            f"export config does not describe the model (differs in {differs}); pass the model's own "
            "config, changing only threshold or transformer_name"
        )
    out_dir.mkdir(parents=True, exist_ok=True)
    state = to_state_dict(model)
    stored = {
        k: state[k].astype(STORAGE_DTYPES[storage_dtype] if state[k].ndim >= 2 else np.float32, copy=False)
        for k in sorted(state)
    }
    save_file(stored, str(out_dir / SAFETENSORS_NAME), metadata=_EXPORT_METADATA)
    config.save(out_dir, torch_dtype=storage_dtype)
    if tokenizer_dir is not None:
        copy_tokenizer_files(tokenizer_dir, out_dir)
    return out_dir


def copy_tokenizer_files(tokenizer_dir: str | Path, out_dir: str | Path) -> list[Path]:
    """Copy the tokenizer files that exist in ``tokenizer_dir`` (error if there are none)."""
    src, dst = Path(tokenizer_dir), Path(out_dir)
    found = [src / name for name in TOKENIZER_FILES if (src / name).is_file()]
    if not found:
        raise ConversionError(f"no tokenizer files ({', '.join(TOKENIZER_FILES)}) in {src}")
    copied = []
    for path in found:
        target = dst / path.name
        if path.resolve() != target.resolve():
            shutil.copyfile(path, target)
        copied.append(target)
    return copied


def export_model(
    model: MultiTaskModel, config: ModelConfig, out: str | Path, *, tokenizer_dir: str | Path
) -> str:
    """``export_checkpoint`` to a local folder or a URL, never leaving a half-written export behind.

    Locally: a temporary folder renamed into place. At a URL (``gs://``, where renames are copies): a
    local export uploaded file by file with ``config.json`` last, so a reader that finds
    ``config.json`` finds the whole export.
    """
    import tempfile

    from autext_jax import paths

    out = str(out)
    if not paths.is_url(out):
        target = paths.local(out)
        tmp = target.with_name(target.name + ".partial")
        shutil.rmtree(tmp, ignore_errors=True)
        export_checkpoint(model, config, tmp, tokenizer_dir=tokenizer_dir)
        shutil.rmtree(target, ignore_errors=True)
        tmp.rename(target)
        return str(target)
    with tempfile.TemporaryDirectory(prefix="autext-export-") as tmp:
        export_checkpoint(model, config, tmp, tokenizer_dir=tokenizer_dir)
        if paths.exists(out):
            paths.remove(out, recursive=True)
        files = sorted(Path(tmp).iterdir(), key=lambda p: (p.name == "config.json", p.name))
        fs = paths.filesystem(out)
        for file in files:
            fs.put_file(str(file), paths.join(out, file.name))
    return out
