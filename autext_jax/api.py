"""Python API: ``autext_jax.load(...)`` returns a ``Detector`` that scores texts with the engine.

    >>> detector = autext_jax.load("path/to/model")            # or a Hub id, or None: the embedded model
    >>> detector.score(["Some text.", "Otro texto."])["bot_prob"]

Probabilities and ``is_bot`` come from ``decision.Decision`` (the checkpoint's threshold unless
``threshold`` overrides it). A model directory with a ``calibration.json`` (``calibration.py``)
reports calibrated probabilities with the same decisions, and offers operating points
(``detector.operating_points``). Records are built by ``records.py`` (the CLI, the service, Ray and
evaluate share it) and can carry per-segment scores (``segments.py``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import fields, replace
from pathlib import Path
from typing import Any

import numpy as np

from autext_jax import calibration as calib
from autext_jax import records
from autext_jax import segments as seg
from autext_jax.config import ModelConfig, check_threshold
from autext_jax.convert import load_checkpoint
from autext_jax.decision import Decision
from autext_jax.engine import DocLogits, EngineOptions, EngineStats, InferenceEngine
from autext_jax.hub import check_tokenizer, load_tokenizer, resolve_model_dir
from autext_jax.model import compute_dtype

__all__ = ["Detector", "load", "load_tokenizer"]

class Detector:
    """A loaded detector: config, NNX model, tokenizer, the inference engine, and its ``Decision``
    (threshold, calibration, operating points: ``decision.py``). Records come from ``records.py``."""

    def __init__(
        self,
        config: ModelConfig,
        model,
        tokenizer,
        *,
        model_dir: str | Path | None = None,
        threshold: float | None = None,
        options: EngineOptions | None = None,
        calibration: calib.Calibration | None = None,
    ):
        if threshold is not None:
            check_threshold(threshold)
        check_tokenizer(tokenizer, config, model_dir or "the given tokenizer")
        self.config = config
        self.model = model
        self.tokenizer = tokenizer
        self.model_dir = Path(model_dir) if model_dir is not None else None
        self.calibration = calibration
        # A given threshold is on the reported (calibrated) scale; the model's own decides on raw scores.
        self.decision = Decision(float(config.threshold), threshold, calibration)
        self.engine = InferenceEngine(model, tokenizer, options)

    @property
    def raw_threshold(self) -> float:
        """The model's own threshold, on the uncalibrated ``sigmoid(logit)``."""
        return self.decision.raw_threshold

    @property
    def threshold(self) -> float:
        """The threshold in force, on the reported ``bot_prob`` scale."""
        return self.decision.threshold

    @property
    def operating_points(self) -> dict[str, float]:
        """Operating-point name (``"fpr=0.01"``) → its threshold on the reported ``bot_prob`` scale."""
        return {name: point.threshold for name, point in self.decision.operating_points.items()}

    @property
    def min_tokens(self) -> int:
        """Texts with fewer tokens than this are ``short``: below the lengths the model was validated on."""
        return self.decision.min_tokens

    def logits(self, texts: list[str]) -> dict[str, np.ndarray]:
        """float32 raw logits ``{"bot", "english"}`` of shape (N,) (for evaluation and calibration)."""
        out = self.engine.logits(_text_list(texts))
        return {"bot": out["bot"], "english": out["english"]}

    def probabilities(self, bot_logits, english_logits) -> dict[str, np.ndarray]:
        """Reported (calibrated when the model has a calibration) ``bot_prob`` and ``english_prob``."""
        return {
            "bot_prob": self.decision.bot_prob(bot_logits),
            "english_prob": self.decision.english_prob(english_logits),
        }

    def decide(self, bot_logits, operating_point: str | None = None) -> np.ndarray:
        """``is_bot`` from raw logits: at an operating point, else at the threshold in force."""
        return self.decision.is_bot(bot_logits, operating_point)

    def score(self, texts: list[str], *, operating_point: str | None = None) -> dict[str, np.ndarray]:
        """``{"bot_prob": float32 (N,), "english_prob": float32 (N,), "is_bot": bool (N,)}``, input order."""
        if operating_point is not None:
            self.decision.operating_point(operating_point)
        out = self.logits(texts)
        decided = self.decide(out["bot"], operating_point)
        return {**self.probabilities(out["bot"], out["english"]), "is_bot": decided}

    def score_iter(self, texts: Iterable[str]) -> Iterator[dict[str, Any]]:
        """Stream per-text records (as ``score_records``) in input order; memory stays bounded."""
        for _, record in self.stream_records(enumerate(_checked(texts))):
            yield record

    def score_records(
        self, texts: list[str], *, segments: str | None = None, operating_point: str | None = None
    ) -> list[dict[str, Any]]:
        """One record per text (``records.py``): ``bot_prob``, ``english_prob``, ``is_bot``,
        ``n_chunks``, ``n_tokens``, ``truncated``, ``short``; ``operating_point`` when one is selected;
        ``segments`` (``[{"start", "end", "bot_prob", "truncated"}]``, character offsets) with
        ``segments="sentence"`` or ``"window"``."""
        items = enumerate(_checked(texts))
        return [r for _, r in self.stream_records(items, segments=segments, operating_point=operating_point)]

    def stream_records(
        self,
        items: Iterable[tuple[Any, str | None]],
        *,
        segments: str | None = None,
        operating_point: str | None = None,
        stop: Callable[[], bool] | None = None,
    ) -> Iterator[tuple[Any, dict[str, Any] | None]]:
        """``(tag, text)`` pairs → ``(tag, record)`` in input order (a ``None`` text gives ``(tag, None)``),
        records as ``score_records`` makes them. See ``scored`` for reading errors and ``stop``."""
        builder = self.builder(records.Layout(operating_point=operating_point, segments=segments))
        for tag, doc, spans in self.scored(items, segments=segments, stop=stop):
            yield tag, None if doc is None else builder.build(doc, id=tag, segments=spans)

    def builder(self, layout: records.Layout) -> records.RecordBuilder:
        """The record builder for this detector's decision and ``layout`` (checks the operating point)."""
        return records.RecordBuilder(self.decision, layout)

    def scored(
        self,
        items: Iterable[tuple[Any, str | None]],
        *,
        segments: str | None = None,
        stop: Callable[[], bool] | None = None,
    ) -> Iterator[tuple[Any, DocLogits | None, list[seg.ScoredSpan] | None]]:
        """``(tag, text)`` pairs → ``(tag, DocLogits, segments)`` in input order (``segments`` is ``None``
        unless asked for; a ``None`` text gives ``(tag, None, ...)``).

        If reading ``items`` raises, the results of everything read before are yielded first.
        ``stop`` is asked between batches; when it returns true ``StopRequested`` is raised.
        """
        seg.check_mode(segments)
        if segments is None:
            for tag, doc in self.engine.run(items, stop):
                yield tag, doc, None
            return
        yield from seg.scored(self.engine, items, segments, self._language, stop)

    def _language(self, doc: DocLogits) -> str:
        return "en" if self.decision.english_prob(np.float32([doc.english]))[0] >= 0.5 else "es"

    def run(
        self, items: Iterable[tuple[Any, str | None]], stop: Callable[[], bool] | None = None
    ) -> Iterator[tuple[Any, DocLogits | None]]:
        """``(tag, text)`` pairs to ``(tag, DocLogits)``, raw logits, in input order (see the engine)."""
        return self.engine.run(items, stop)

    @property
    def stats(self) -> EngineStats:
        """What the engine has done so far (texts, batches, padding, compilations)."""
        return self.engine.stats


def load(
    model: str | Path | None = None,
    *,
    dtype: str = "float32",
    threshold: float | None = None,
    key_map: dict[str, str] | str | Path | None = None,
    allow_pickle: bool = False,
    options: EngineOptions | None = None,
    calibrated: bool = True,
    **option_fields: Any,
) -> Detector:
    """Load a detector from a local HF-layout directory, a Hub id, or ``None`` (the embedded default model).

    Scoring options: ``options`` or its fields as keywords (``max_length=512, long="chunk",
    stride=128, batch_size=None, ...``; see ``engine.EngineOptions``). ``calibrated=False`` ignores the
    directory's ``calibration.json`` (raw probabilities, no operating points). ``normalize=False``
    scores the raw text instead of undoing cheap evasions first (``normalize.py``); records then have
    ``obfuscated`` and ``n_changed`` null.

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
        calibration=calib.load(model_dir) if calibrated else None,
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
