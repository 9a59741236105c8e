"""Where a model lives: the embedded default, a local directory, or a Hugging Face Hub id.

Hub downloads fetch only weights, configs and tokenizer files — never Python files, so nothing
remote is ever executed. Offline or unreachable Hubs fail at once with a one-line error.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from autext_jax import paths
from autext_jax.config import ModelConfig
from autext_jax.errors import AutextError
from autext_jax.hf_layout import ConversionError

DEFAULT_MODEL_DIR: Path = Path(__file__).resolve().parent / "assets" / "autext-jax-mini"

# Files a model directory needs: weights, configs, the sentencepiece model and tokenizer files.
ALLOW_PATTERNS = (
    "*.safetensors",
    "*.safetensors.index.json",
    "*.json",
    "*.model",
    "tokenizer*",
)
PICKLE_PATTERNS = ("*.bin",)
CODE_PATTERNS = ("*.py",)  # only for tools/parity_check.py, which runs the original code on purpose
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")


class ModelNotFoundError(AutextError, FileNotFoundError):
    """No model at the given place; the message says what to pass instead."""


class TokenizerMismatchError(ConversionError):
    """A tokenizer with ids beyond the model's embedding table (they would index out of range)."""


def looks_like_hub_id(model: str) -> bool:
    """``owner/name`` (or a bare legacy name) that is not a local path."""
    return bool(_HUB_ID.match(model)) and not model.startswith((".", "~")) and ".." not in model


def resolve_model_dir(
    model: str | Path | None,
    *,
    revision: str | None = None,
    allow_pickle: bool = False,
    allow_code: bool = False,
    cache_dir: str | Path | None = None,
) -> Path:
    """A local directory holding the model: ``None`` → the embedded default; a directory → itself;
    a Hub id → a snapshot of its weights/config/tokenizer files (``*.bin`` only with
    ``allow_pickle``, ``*.py`` only with ``allow_code``)."""
    if model is None:
        if not (DEFAULT_MODEL_DIR / "config.json").is_file():
            raise ModelNotFoundError(
                f"the embedded default model is missing ({DEFAULT_MODEL_DIR}); reinstall autext_jax "
                "or pass a model directory or Hub id"
            )
        return DEFAULT_MODEL_DIR
    if isinstance(model, str) and paths.is_url(model):
        return fetch_dir(model, cache_dir)
    path = Path(model).expanduser()
    if path.is_dir():
        return path
    if path.exists():
        raise ModelNotFoundError(f"{model} is a file; pass the model's directory (with config.json)")
    if isinstance(model, Path) or not looks_like_hub_id(model):
        raise ModelNotFoundError(
            f"model directory {model} does not exist; pass a local directory or a Hub id"
        )
    return _download(model, revision, allow_pickle, allow_code, cache_dir)


def fetch_dir(url: str, cache_dir: str | Path | None = None) -> Path:
    """A local copy of a model or tokenizer folder at a URL (``gs://…``): tokenizers and the
    safetensors reader need local files. Copied once per URL; a partial copy is never reused."""
    import hashlib
    import shutil

    if not paths.isdir(url):
        raise ModelNotFoundError(f"{url} is not a folder (or not readable); pass a model directory URL")
    root = Path(cache_dir or Path(os.environ.get("XDG_CACHE_HOME", "~/.cache")) / "autext_jax" / "remote")
    target = root.expanduser() / hashlib.sha256(url.rstrip("/").encode()).hexdigest()[:16]
    if (target / ".complete").is_file():
        return target
    partial = target.with_name(target.name + f".partial{os.getpid()}")
    shutil.rmtree(partial, ignore_errors=True)
    prefix, fs = url.rstrip("/") + "/", paths.filesystem(url)
    for remote in paths.walk_files(url):
        dest = partial / remote[len(prefix) :]
        dest.parent.mkdir(parents=True, exist_ok=True)
        fs.get_file(remote, str(dest))  # bytes as stored (no .gz decoding)
    (partial / ".complete").write_text(url + "\n")
    shutil.rmtree(target, ignore_errors=True)
    partial.rename(target)
    return target


def _download(repo_id: str, revision, allow_pickle: bool, allow_code: bool, cache_dir) -> Path:
    from huggingface_hub import snapshot_download

    patterns = list(ALLOW_PATTERNS) + (list(PICKLE_PATTERNS) if allow_pickle else [])
    patterns += list(CODE_PATTERNS) if allow_code else []
    ignore = [] if allow_code else list(CODE_PATTERNS)
    try:
        local = snapshot_download(
            repo_id,
            revision=revision,
            allow_patterns=patterns,
            ignore_patterns=ignore or None,
            cache_dir=cache_dir,
            etag_timeout=5,
        )
    except Exception as err:  # offline, unreachable, unknown repo, bad id: all end the same way for users
        raise ModelNotFoundError(
            f"no local directory {repo_id!r} and cannot fetch it from the Hugging Face Hub "
            f"({_reason(err)}); download it elsewhere and pass its local directory instead"
        ) from None
    return Path(local)


def _reason(err: Exception) -> str:
    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        return "HF_HUB_OFFLINE is set and it is not in the local cache"
    first = str(err).strip().split("\n")[0].split(". ")[0]
    return f"{type(err).__name__}: {first[:160]}"


def load_tokenizer(model_dir: str | Path):
    """The checkpoint's own tokenizer, never running code from the directory.

    The class comes from ``tokenizer_config.json`` (``AutoTokenizer`` would read the published
    ``config.json``, whose ``auto_map`` points at remote code).
    """
    import json

    import transformers

    model_dir = Path(model_dir)
    config_path = model_dir / "tokenizer_config.json"
    try:
        name = json.loads(config_path.read_text()).get("tokenizer_class") if config_path.is_file() else None
        # The class by its public name: transformers' auto-class lookup would import torch.
        known = bool(name) and name.endswith(("Tokenizer", "TokenizerFast"))
        tokenizer_class = getattr(transformers, name, None) if known else None
        if tokenizer_class is not None:
            return tokenizer_class.from_pretrained(str(model_dir))
        return transformers.AutoTokenizer.from_pretrained(str(model_dir), trust_remote_code=False)
    except (OSError, ValueError, TypeError) as err:
        raise FileNotFoundError(
            f"cannot load a tokenizer from {model_dir} ({type(err).__name__}: {str(err)[:120]}); the "
            "model directory needs tokenizer.json (or sentencepiece.bpe.model) and tokenizer_config.json"
        ) from None


def check_tokenizer(tokenizer, config: ModelConfig, where: str | Path) -> None:
    """Refuse a tokenizer whose ids do not all fit the embedding table (scoring and training alike)."""
    size = len(tokenizer)
    if size > config.encoder.vocab_size:
        raise TokenizerMismatchError(
            f"the tokenizer in {where} has {size} tokens but the model's embedding has "
            f"{config.encoder.vocab_size} rows; use the tokenizer the model was trained with"
        )
