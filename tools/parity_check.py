"""Compare the JAX port with the original PyTorch model on the same texts.

    python -m tools.parity_check MODEL_DIR_OR_HUB_ID [--tolerance 1e-5] [--key-map MAP.json]

The directory must hold the original ``model.py`` (and ``config.py`` if it has one). Its model class
(named by ``config.json``'s ``auto_map``) is built directly — transformers 5 refuses the original
``from_pretrained`` path — with the encoder's own ``from_pretrained(transformer_name)`` replaced
by an offline ``XLMRobertaModel`` of the checkpoint's shape; then the weights are loaded with
``load_state_dict(strict=True)``. Both models score English and Spanish texts one at a time, as a
padded batch, and as one text longer than 512 tokens (truncated), and the largest absolute
differences per output are printed; ``engine_raw`` scores the same texts through the scoring engine
(``autext_jax.load(..., normalize=False)``: the raw text, as the original reads it).
Exit status: 0 within tolerance, 1 above it, 2 bad input.
Importing ``model.py`` runs its code: use this only on files you trust.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import importlib.util
import json
import sys
import types
from pathlib import Path

import numpy as np

from autext_jax import cli
from autext_jax.errors import InputDataError, UsageError

SAMPLES = {
    "en": "The committee will publish its final report next week, after reviewing all the comments.",
    "es": "El comité publicará su informe final la próxima semana, tras revisar todos los comentarios.",
    "en_short": "Thanks!",
    "es_short": "¿Dónde está la estación de tren?",
}
_STALE_BUFFERS = ("embeddings.position_ids", "embeddings.token_type_ids")
LONG_TEXT = " ".join([SAMPLES["en"], SAMPLES["es"]] * 60)


class ParityError(UsageError):
    """Bad input for the parity check: missing original files or flags (exit status 2)."""


def import_original(model_dir: Path) -> tuple[type, type | None]:
    """The model class (and config class, if any) named by ``auto_map``, imported from ``model_dir``."""
    config = json.loads((model_dir / "config.json").read_text())
    auto_map = config.get("auto_map", {})
    model_ref = auto_map.get("AutoModel", "model.AutextificationMTLModel")
    config_ref = auto_map.get("AutoConfig", "config.AutextificationMTLConfig")
    package = f"_autext_original_{abs(hash(str(model_dir.resolve())))}"
    # A synthetic package, so both ``from .config import X`` and ``from config import X`` work.
    pkg = types.ModuleType(package)
    pkg.__path__ = [str(model_dir)]
    sys.modules[package] = pkg
    sys.path.insert(0, str(model_dir))

    def load(ref: str):
        module_name, _, attr = ref.rpartition(".")
        path = model_dir / f"{module_name}.py"
        if not path.is_file():
            return None
        full = f"{package}.{module_name}"
        if full not in sys.modules:
            spec = importlib.util.spec_from_file_location(full, path)
            module = importlib.util.module_from_spec(spec)
            sys.modules[full] = module
            spec.loader.exec_module(module)
        return getattr(sys.modules[full], attr, None)

    model_cls = load(model_ref)
    if model_cls is None:
        raise ParityError(
            f"{model_dir} has no {model_ref.replace('.', '.py: ', 1)}; parity needs the original code"
        )
    config_cls = load(config_ref) or getattr(
        sys.modules[model_cls.__module__], config_ref.rpartition(".")[2], None
    )
    return model_cls, config_cls


@contextlib.contextmanager
def offline_encoder(hf_encoder_config: dict):
    """While the original model is built, ``from_pretrained`` of the encoder (``AutoModel``,
    ``XLMRobertaModel``) and of its config (``AutoConfig``, ``XLMRobertaConfig``) work offline:
    they return a random encoder / the config of the checkpoint's shape. Weights come later."""
    import transformers

    def encoder_config(*_args, **_kwargs):
        fields = {k: v for k, v in hf_encoder_config.items() if k != "use_pooler"}
        config = transformers.XLMRobertaConfig(**fields)
        config._attn_implementation = "eager"
        return config

    def encoder(*_args, **_kwargs):
        pooler = hf_encoder_config.get("use_pooler", True)
        return transformers.XLMRobertaModel(encoder_config(), add_pooling_layer=pooler)

    replacements = {
        transformers.AutoModel: encoder,
        transformers.XLMRobertaModel: encoder,
        transformers.AutoConfig: encoder_config,
        transformers.XLMRobertaConfig: encoder_config,
    }
    saved = {target: target.__dict__.get("from_pretrained") for target in replacements}
    for target, replacement in replacements.items():
        target.from_pretrained = staticmethod(replacement)
    try:
        yield
    finally:
        for target, original in saved.items():
            if original is None:
                del target.from_pretrained
            else:
                target.from_pretrained = original


def build_original(model_dir: Path, hf_encoder_config: dict, allow_pickle: bool):
    """The original torch model from its own code, weights loaded with ``strict=True``."""
    model_cls, config_cls = import_original(model_dir)
    data = json.loads((model_dir / "config.json").read_text())
    if config_cls is not None:
        config = config_cls(**{k: v for k, v in data.items() if k not in ("auto_map", "architectures")})
    else:
        config = types.SimpleNamespace(**data)
    with offline_encoder(hf_encoder_config):
        model = model_cls(config)
    state = _torch_state(model_dir, allow_pickle)
    # Files saved by older transformers store these buffers; newer ones do not register them.
    wanted = set(model.state_dict())
    state = {k: v for k, v in state.items() if k in wanted or not k.endswith(_STALE_BUFFERS)}
    model.load_state_dict(state, strict=True)
    return model.eval()


def _torch_state(model_dir: Path, allow_pickle: bool) -> dict:
    import torch
    from safetensors.torch import load_file

    if (model_dir / "model.safetensors").is_file():
        return load_file(str(model_dir / "model.safetensors"))
    if (model_dir / "pytorch_model.bin").is_file() and allow_pickle:
        return torch.load(model_dir / "pytorch_model.bin", map_location="cpu", weights_only=True)
    raise ParityError(f"no model.safetensors in {model_dir} (a pytorch_model.bin needs --allow-pickle)")


def run_jax(loaded, input_ids: np.ndarray, attention_mask: np.ndarray) -> dict[str, np.ndarray]:
    from autext_jax.scores import scores_from_logits

    logits = _jitted_forward()(loaded.model, input_ids, attention_mask)
    return scores_from_logits(
        np.asarray(logits["bot"]), np.asarray(logits["english"]), loaded.config.threshold
    )


@functools.cache
def _jitted_forward():
    """One compiled program per shape (op-by-op dispatch would compile hundreds of small ones)."""
    from flax import nnx

    return nnx.jit(lambda model, ids, mask: model(ids, mask))


def run_torch(model, input_ids: np.ndarray, attention_mask: np.ndarray) -> dict[str, np.ndarray]:
    import torch
    from transformers import BatchEncoding

    batch = BatchEncoding(
        {
            "input_ids": torch.from_numpy(input_ids).long(),
            "attention_mask": torch.from_numpy(attention_mask).long(),
        }
    )
    with torch.no_grad():
        out = model(batch)
    return {k: np.asarray(out[k].reshape(-1).cpu().numpy()) for k in ("bot_prob", "english_prob", "is_bot")}


def compare(model_dir: Path, *, key_map=None, allow_pickle: bool = False, max_length: int = 512) -> dict:
    """Largest absolute differences per output and case, plus is_bot disagreements."""
    from transformers import AutoTokenizer

    from autext_jax.convert import load_checkpoint

    loaded = load_checkpoint(model_dir, key_map=key_map, allow_pickle=allow_pickle)
    original = build_original(model_dir, loaded.config.encoder.to_hf_config(), allow_pickle)
    tokenizer = AutoTokenizer.from_pretrained(str(model_dir), trust_remote_code=False)
    cases = {f"single/{k}": [v] for k, v in SAMPLES.items()}
    cases["batch_padded"] = list(SAMPLES.values())
    cases["long_truncated"] = [LONG_TEXT, SAMPLES["es_short"]]
    report: dict = {}
    for name, texts in cases.items():
        enc = tokenizer(texts, padding=True, truncation=True, max_length=max_length, return_tensors="np")
        ids, mask = enc["input_ids"].astype(np.int32), enc["attention_mask"].astype(np.int32)
        ours, theirs = run_jax(loaded, ids, mask), run_torch(original, ids, mask)
        report[name] = {
            "tokens": int(ids.shape[1]),
            "bot_prob": float(np.abs(ours["bot_prob"] - theirs["bot_prob"]).max()),
            "english_prob": float(np.abs(ours["english_prob"] - theirs["english_prob"]).max()),
            "is_bot_disagreements": int((ours["is_bot"] != theirs["is_bot"]).sum()),
        }
    report["engine_raw"] = _engine_case(model_dir, tokenizer, original, key_map, allow_pickle, max_length)
    return report


def _engine_case(model_dir: Path, tokenizer, original, key_map, allow_pickle: bool, max_length: int) -> dict:
    """The scoring engine itself (packed rows, prefix tokenizing) on the raw text: ``normalize=False``,
    as the published model reads it, against the original on a padded batch of the same texts."""
    from autext_jax.api import load

    detector = load(
        str(model_dir), key_map=key_map, allow_pickle=allow_pickle, max_length=max_length,
        calibrated=False, normalize=False,
    )
    texts = [*SAMPLES.values(), LONG_TEXT]
    enc = tokenizer(texts, padding=True, truncation=True, max_length=max_length, return_tensors="np")
    theirs = run_torch(original, enc["input_ids"].astype(np.int32), enc["attention_mask"].astype(np.int32))
    ours = detector.score(texts)
    return {
        "tokens": int(enc["input_ids"].shape[1]),
        "bot_prob": float(np.abs(ours["bot_prob"] - theirs["bot_prob"]).max()),
        "english_prob": float(np.abs(ours["english_prob"] - theirs["english_prob"]).max()),
        "is_bot_disagreements": int((ours["is_bot"] != theirs["is_bot"]).sum()),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", help="local directory or Hub id with the original model.py")
    parser.add_argument("--tolerance", type=float, default=1e-5, help="max |diff| of probabilities")
    parser.add_argument("--key-map", help="JSON file of HF key -> reference key overrides")
    parser.add_argument("--allow-pickle", action="store_true", help="accept a pickled pytorch_model.bin")
    parser.add_argument("--max-length", type=int, default=512)
    cli.add_debug_flag(parser)
    return cli.main("parity_check", parser, _main, argv)


def _main(args: argparse.Namespace) -> int:
    from autext_jax.hub import resolve_model_dir

    model_dir = resolve_model_dir(args.model, allow_code=True, allow_pickle=args.allow_pickle)
    for needed in ("config.json", "model.py"):
        if not (model_dir / needed).is_file():
            raise ParityError(f"no {needed} in {model_dir}; parity needs the original files incl. model.py")
    try:
        report = compare(
            model_dir, key_map=args.key_map, allow_pickle=args.allow_pickle, max_length=args.max_length
        )
    except RuntimeError as err:  # torch's strict load_state_dict failure
        detail = " ".join(str(err).split())[:600]
        raise InputDataError(f"the original model rejected the weights: {detail}") from None
    worst = 0.0
    for name, row in report.items():
        worst = max(worst, row["bot_prob"], row["english_prob"])
        print(
            f"{name:<16} tokens {row['tokens']:>4}  max|Δ bot_prob| {row['bot_prob']:.2e}  "
            f"max|Δ english_prob| {row['english_prob']:.2e}  "
            f"is_bot disagreements {row['is_bot_disagreements']}"
        )
    disagreements = sum(row["is_bot_disagreements"] for row in report.values())
    ok = worst <= args.tolerance and disagreements == 0
    print(f"{'PASS' if ok else 'FAIL'}: worst |diff| {worst:.2e} (tolerance {args.tolerance:.0e})")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
