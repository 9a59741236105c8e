"""Show a checkpoint's tensors and where the converter puts them, reading only the safetensors header.

    python -m tools.inspect_checkpoint MODEL_DIR_OR_FILE [--key-map MAP.json]

For every tensor: name, shape, dtype, then the reference-layout key and the nnx parameter path it
maps to (``(ignored)`` for known extras, ``UNMAPPED`` otherwise), followed by what the shapes
reveal about the encoder. No tensor data is read, so a 1.1 GB file is inspected at once.
Exit status (the project's scheme): 0 every tensor maps; 1 some do not, the layout is ambiguous, or the
file is not a readable safetensors file; 2 a missing path or bad flags.
"""

from __future__ import annotations

import argparse
import json
import struct
import sys
from pathlib import Path

from autext_jax import cli
from autext_jax.config import EncoderConfig, ModelConfig, read_json_object
from autext_jax.errors import UsageError
from autext_jax.hf_layout import (
    SAFETENSORS_INDEX_NAME,
    SAFETENSORS_NAME,
    ConversionError,
    detect_layout,
    read_key_map,
    shape_facts,
    tensor_rules,
)

_MAX_HEADER = 100 * 2**20


def read_header(path: Path) -> dict[str, tuple[tuple[int, ...], str]]:
    """``name -> (shape, dtype)`` from a safetensors header (8-byte length, then JSON)."""
    with path.open("rb") as handle:
        prefix = handle.read(8)
        if len(prefix) != 8:
            raise ConversionError(f"{path} is too short to be a safetensors file")
        (size,) = struct.unpack("<Q", prefix)
        if size > _MAX_HEADER:
            raise ConversionError(f"{path} is not a safetensors file (header length {size})")
        try:
            header = json.loads(handle.read(size))
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise ConversionError(f"{path} is not a safetensors file (its header is not JSON)") from None
    if not isinstance(header, dict):
        raise ConversionError(f"{path} is not a safetensors file (its header is not a JSON object)")
    return {name: _entry(path, name, info) for name, info in header.items() if name != "__metadata__"}


def _entry(path: Path, name: str, info) -> tuple[tuple[int, ...], str]:
    """One header entry's ``(shape, dtype)``; a damaged entry is one line naming the tensor."""
    missing = [k for k in ("shape", "dtype") if not isinstance(info, dict) or k not in info]
    if missing:
        raise ConversionError(f"{path}: header entry for tensor {name!r} has no {' or '.join(missing)}")
    shape, dtype = info["shape"], info["dtype"]
    if not isinstance(shape, list) or not all(isinstance(d, int) and d >= 0 for d in shape):
        raise ConversionError(f"{path}: tensor {name!r} has a malformed shape {shape!r} in the header")
    return tuple(shape), str(dtype)


def checkpoint_files(target: Path) -> list[Path]:
    if target.is_file():
        return [target]
    if (target / SAFETENSORS_NAME).is_file():
        return [target / SAFETENSORS_NAME]
    if (target / SAFETENSORS_INDEX_NAME).is_file():
        index = read_json_object(target / SAFETENSORS_INDEX_NAME)
        if not isinstance(index.get("weight_map"), dict):
            raise ConversionError(f"{target / SAFETENSORS_INDEX_NAME} has no 'weight_map' object")
        return [target / name for name in sorted(set(index["weight_map"].values()))]
    if not target.exists():
        raise UsageError(f"{target} does not exist; pass a model directory or a .safetensors file")
    raise ConversionError(f"no {SAFETENSORS_NAME} in {target}; pass a model directory or a .safetensors file")


def config_from_shapes(shapes_by_ref: dict[str, tuple[int, ...]]) -> ModelConfig:
    """A config whose table covers the file's layers (head count does not affect names or shapes)."""
    facts = shape_facts(shapes_by_ref)
    encoder_fields = {k: v for k, v in facts.items() if k != "hidden_nodes"}
    encoder = EncoderConfig(
        **encoder_fields,
        num_heads=1,
        use_pooler=any(k.startswith("transformer.pooler.") for k in shapes_by_ref),
    )
    return ModelConfig(encoder=encoder, hidden_nodes=facts.get("hidden_nodes", 64))


def describe(target: Path, key_map: str | None) -> tuple[list[str], bool]:
    """Lines to print and whether every tensor maps."""
    tensors: dict[str, tuple[tuple[int, ...], str]] = {}
    for path in checkpoint_files(target):
        tensors.update(read_header(path))
    layout = detect_layout({k: shape for k, (shape, _) in tensors.items()}, read_key_map(key_map))
    shapes_by_ref = {ref: tensors[k][0] for k, ref in layout.mapping.items() if ref is not None}
    rules = tensor_rules(config_from_shapes(shapes_by_ref)) if shapes_by_ref else {}
    lines, unmapped = [], []
    width = max(len(k) for k in tensors) if tensors else 0
    for name in sorted(tensors):
        shape, dtype = tensors[name]
        ref = layout.mapping.get(name, "")
        if name in layout.mapping and ref is None:
            where = "(ignored: known extra)"
        elif ref in rules:
            rule = rules[ref]
            path = ".".join(map(str, rule.path))
            renamed = f"as {ref} " if ref != name else ""
            where = f"{renamed}-> {path}" + (" (transposed)" if rule.transpose else "")
        else:
            where = "UNMAPPED"
            unmapped.append(name)
        lines.append(f"{name:<{width}}  {str(list(shape)):<14} {dtype:<5} {where}")
    n_params = sum(_numel(shape) for shape, _ in tensors.values())
    lines.append(f"{len(tensors)} tensors, {n_params:,} values")
    lines.append(f"shapes say: {json.dumps(shape_facts(shapes_by_ref))}")
    lines += [f"problem: {p}" for p in layout.problems]
    if unmapped:
        lines.append(f"{len(unmapped)} tensor(s) UNMAPPED: pass --key-map with HF key -> reference key")
    return lines, not unmapped and not layout.problems


def _numel(shape: tuple[int, ...]) -> int:
    total = 1
    for dim in shape:
        total *= dim
    return total


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint", type=Path, help="model directory or .safetensors file")
    parser.add_argument("--key-map", help="JSON file of HF key -> reference key overrides")
    cli.add_debug_flag(parser)
    return cli.main("inspect_checkpoint", parser, _main, argv)


def _main(args: argparse.Namespace) -> int:
    lines, ok = describe(args.checkpoint, args.key_map)
    print("\n".join(lines))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
