"""Python API: ``autext_jax.load(...)`` returns a ``Detector`` that scores texts with the engine.

    >>> detector = autext_jax.load("path/to/model")            # or a Hub id, or None: the embedded model
    >>> detector.score(["Some text.", "Otro texto."])["bot_prob"]

Probabilities and ``is_bot`` come from ``scores.scores_from_logits`` (the one place they are made),
with the checkpoint's threshold unless ``threshold`` overrides it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import fields, replace
from pathlib import Path
from typing import Any

import numpy as np

from autext_jax.config import ModelConfig, check_threshold
from autext_jax.convert import load_checkpoint
from autext_jax.engine import DocLogits, EngineOptions, EngineStats, InferenceEngine
from autext_jax.hub import check_tokenizer, load_tokenizer, resolve_model_dir
from autext_jax.model import compute_dtype
from autext_jax.scores import scores_from_logits

__all__ = ["Detector", "load", "load_tokenizer"]

class Detector:
    """A loaded detector: config, NNX model, tokenizer, and the inference engine built on them."""

    def __init__(
        self,
        config: ModelConfig,
        model,
        tokenizer,
        *,
        model_dir: str | Path | None = None,
        threshold: float | None = None,
        options: EngineOptions | None = None,
    ):
        if threshold is not None:
            check_threshold(threshold)
        check_tokenizer(tokenizer, config, model_dir or "the given tokenizer")
        self.config = config
        self.model = model
        self.tokenizer = tokenizer
        self.model_dir = Path(model_dir) if model_dir is not None else None
        self.threshold = float(config.threshold if threshold is None else threshold)
        self.engine = InferenceEngine(model, tokenizer, options)

    def logits(self, texts: list[str]) -> dict[str, np.ndarray]:
        """float32 logits ``{"bot", "english"}`` of shape (N,) (for evaluation and threshold tuning)."""
        out = self.engine.logits(_text_list(texts))
        return {"bot": out["bot"], "english": out["english"]}

    def score(self, texts: list[str]) -> dict[str, np.ndarray]:
        """``{"bot_prob": float32 (N,), "english_prob": float32 (N,), "is_bot": bool (N,)}``, input order."""
        out = self.logits(texts)
        return scores_from_logits(out["bot"], out["english"], self.threshold)

    def score_iter(self, texts: Iterable[str]) -> Iterator[dict[str, Any]]:
        """Stream per-text records ``{"bot_prob", "english_prob", "is_bot", "n_chunks"}`` in input order.

        Memory stays bounded for any length of ``texts`` (it is read lazily).
        """
        for _, doc in self.engine.run(enumerate(_checked(texts))):
            yield self.record(doc)

    def run(
        self, items: Iterable[tuple[Any, str | None]], stop: Callable[[], bool] | None = None
    ) -> Iterator[tuple[Any, DocLogits | None]]:
        """``(tag, text)`` pairs to ``(tag, DocLogits)`` in input order (see ``InferenceEngine.run``)."""
        return self.engine.run(items, stop)

    @property
    def stats(self) -> EngineStats:
        """What the engine has done so far (texts, batches, padding, compilations)."""
        return self.engine.stats

    def record(self, doc: DocLogits) -> dict[str, Any]:
        """One text's record from the engine's result (the one place records are built: API and CLI).

        ``n_tokens``/``truncated`` say how much of the text the scores rest on.
        """
        s = scores_from_logits(np.float32([doc.bot]), np.float32([doc.english]), self.threshold)
        return {
            "bot_prob": float(s["bot_prob"][0]),
            "english_prob": float(s["english_prob"][0]),
            "is_bot": bool(s["is_bot"][0]),
            "n_chunks": int(doc.n_chunks),
            "n_tokens": int(doc.n_tokens),
            "truncated": bool(doc.truncated),
        }


def load(
    model: str | Path | None = None,
    *,
    dtype: str = "float32",
    threshold: float | None = None,
    key_map: dict[str, str] | str | Path | None = None,
    allow_pickle: bool = False,
    options: EngineOptions | None = None,
    **option_fields: Any,
) -> Detector:
    """Load a detector from a local HF-layout directory, a Hub id, or ``None`` (the embedded default model).

    Scoring options: ``options`` or its fields as keywords (``max_length=512, long="chunk",
    stride=128, batch_size=None, ...``; see ``engine.EngineOptions``).

    Hub ids download weights/config/tokenizer files only (never code). Raises
    ``hub.ModelNotFoundError``, ``convert.ConversionError`` or ``config.ConfigError`` with a message
    saying what to do.
    """
    jax_dtype = compute_dtype(dtype)
    try:
        options = replace(options or EngineOptions(), **option_fields)
    except TypeError:
        known = {f.name for f in fields(EngineOptions)}
        unknown = sorted(set(option_fields) - known)
        raise TypeError(f"unknown scoring options {unknown}; known: {sorted(known)}") from None
    model_dir = resolve_model_dir(model)
    checkpoint = load_checkpoint(model_dir, key_map=key_map, allow_pickle=allow_pickle, dtype=jax_dtype)
    tokenizer = load_tokenizer(model_dir)
    return Detector(
        checkpoint.config,
        checkpoint.model,
        tokenizer,
        model_dir=model_dir,
        threshold=threshold,
        options=options,
    )


def _text_list(texts: list[str]) -> list[str]:
    return list(_checked(texts))


def _checked(texts: Iterable[str]) -> Iterator[str]:
    if isinstance(texts, str):
        raise TypeError("pass a list of texts, not a single string (e.g. detector.score([text]))")
    for text in texts:
        if not isinstance(text, str):
            raise TypeError(f"every text must be a str, got {type(text).__name__}")
        yield text
