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

from autext_jax.config import ModelConfig
from autext_jax.hf_layout import (
    FLOAT_DTYPES,
    HEAD_PARTS,
    PICKLE_NAME,
    POOLER_REF,
    SAFETENSORS_INDEX_NAME,
    SAFETENSORS_NAME,
    TOKENIZER_FILES,
    ConversionError,
    Layout,
    MissingModelError,
    TensorRule,
    config_for,
    detect_layout,
    read_key_map,
    tensor_rules,
    validate_config,
)
from autext_jax.model import MultiTaskModel, abstract_model, create_model

# Fixed header metadata, a single key: safetensors writes metadata maps in hash order.
_EXPORT_METADATA = {"format": "pt"}
_EXPORT_FREE_FIELDS = ("threshold", "transformer_name")  # may differ from the model's own config


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
    if ref_key.startswith(POOLER_REF):
        return "encoder.pooler"
    head = ref_key.split(".")[0]
    return head if head in HEAD_PARTS else None


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
        unknown = [k for k in unknown if not (layout.mapping.get(k) or "").startswith(POOLER_REF)]
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
        config, encoder_only = config_for(model_dir, shapes_by_ref)
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
