"""Python API: ``autext_jax.load(...)`` returns a ``Detector`` that scores texts with the engine.

    >>> detector = autext_jax.load("path/to/model")            # or a Hub id, or None: the embedded model
    >>> detector.score(["Some text.", "Otro texto."])["bot_prob"]

Probabilities and ``is_bot`` come from ``scores.scores_from_logits`` (the one place they are made),
with the checkpoint's threshold unless ``threshold`` overrides it. A model directory with a
``calibration.json`` (``calibration.py``) reports calibrated probabilities with the same decisions,
and offers operating points (``detector.operating_points``). Records (``score_records``, the CLI and
the service share them) can carry per-segment scores (``segments.py``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import fields, replace
from itertools import islice
from pathlib import Path
from typing import Any

import numpy as np

from autext_jax import calibration as calib
from autext_jax import segments as seg
from autext_jax.config import ModelConfig, check_threshold
from autext_jax.convert import load_checkpoint
from autext_jax.engine import DocLogits, EngineOptions, EngineStats, InferenceEngine
from autext_jax.errors import UsageError
from autext_jax.hub import check_tokenizer, load_tokenizer, resolve_model_dir
from autext_jax.model import compute_dtype
from autext_jax.scores import is_bot, scores_from_logits, sigmoid

__all__ = ["Detector", "load", "load_tokenizer"]

class Detector:
    """A loaded detector: config, NNX model, tokenizer, the inference engine, and its calibration (if any)."""

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
        self._given_threshold = threshold
        self.raw_threshold = float(config.threshold)
        self.threshold = float(threshold) if threshold is not None else self._mapped(self.raw_threshold)
        self.engine = InferenceEngine(model, tokenizer, options)

    def _mapped(self, raw_threshold: float) -> float:
        return raw_threshold if self.calibration is None else self.calibration.threshold(raw_threshold)

    @property
    def operating_points(self) -> dict[str, float]:
        """Operating-point name (``"fpr=0.01"``) → its threshold on the reported ``bot_prob`` scale."""
        points = self.calibration.operating_points if self.calibration is not None else {}
        return {name: point.threshold for name, point in points.items()}

    @property
    def min_tokens(self) -> int:
        """Texts with fewer tokens than this are ``short``: below the lengths the model was validated on."""
        return self.calibration.min_tokens if self.calibration is not None else calib.DEFAULT_MIN_TOKENS

    def logits(self, texts: list[str]) -> dict[str, np.ndarray]:
        """float32 raw logits ``{"bot", "english"}`` of shape (N,) (for evaluation and calibration)."""
        out = self.engine.logits(_text_list(texts))
        return {"bot": out["bot"], "english": out["english"]}

    def probabilities(self, bot_logits, english_logits) -> dict[str, np.ndarray]:
        """Reported (calibrated when the model has a calibration) ``bot_prob`` and ``english_prob``."""
        if self.calibration is None:
            return {"bot_prob": sigmoid(bot_logits), "english_prob": sigmoid(english_logits)}
        return {
            "bot_prob": self.calibration.bot_prob(bot_logits),
            "english_prob": self.calibration.english_prob(english_logits),
        }

    def decide(self, bot_logits, operating_point: str | None = None) -> np.ndarray:
        """``is_bot`` from raw logits: at an operating point, else at the threshold (as uncalibrated)."""
        raw = np.asarray(bot_logits, np.float32)
        if operating_point is not None:
            return raw >= np.float32(self._operating_point(operating_point).raw_logit)
        if self._given_threshold is None:
            return is_bot(sigmoid(raw), self.raw_threshold)
        return is_bot(self.probabilities(raw, raw)["bot_prob"], self._given_threshold)

    def _operating_point(self, name: str) -> calib.OperatingPoint:
        points = self.calibration.operating_points if self.calibration is not None else {}
        if name not in points:
            have = ", ".join(points) or "none (fit them: python -m autext_jax.evaluate --calibrate OUT_DIR)"
            raise UsageError(f"operating point {name!r} is not stored with this model; it has: {have}")
        return points[name]

    def score(self, texts: list[str], *, operating_point: str | None = None) -> dict[str, np.ndarray]:
        """``{"bot_prob": float32 (N,), "english_prob": float32 (N,), "is_bot": bool (N,)}``, input order."""
        out = self.logits(texts)
        if self.calibration is None and operating_point is None:
            return scores_from_logits(out["bot"], out["english"], self.threshold)
        decided = self.decide(out["bot"], operating_point)
        return {**self.probabilities(out["bot"], out["english"]), "is_bot": decided}

    def score_iter(self, texts: Iterable[str]) -> Iterator[dict[str, Any]]:
        """Stream per-text records (as ``score_records``) in input order; memory stays bounded."""
        for _, record in self.stream_records(enumerate(_checked(texts))):
            yield record

    def score_records(
        self, texts: list[str], *, segments: str | None = None, operating_point: str | None = None
    ) -> list[dict[str, Any]]:
        """One record per text, in the CLI's shape: ``bot_prob``, ``english_prob``, ``is_bot``,
        ``n_chunks``, ``n_tokens``, ``truncated``, ``short``; ``operating_point`` when one is selected;
        ``segments`` (``[{"start", "end", "bot_prob"}]``, character offsets) with ``segments="sentence"`` or
        ``"window"``."""
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
        """``(tag, text)`` pairs → ``(tag, record)`` in input order (a ``None`` text gives ``(tag, None)``).

        If reading ``items`` raises, the records of everything read before are yielded first.
        ``stop`` is asked between batches; when it returns true ``StopRequested`` is raised.
        """
        seg.check_mode(segments)
        if operating_point is not None:
            self._operating_point(operating_point)
        if segments is None:
            for tag, doc in self.engine.run(items, stop):
                yield tag, None if doc is None else self.record(doc, operating_point)
            return
        source = iter(items)
        window = self.engine.options.window
        while True:
            block: list[tuple[Any, str | None]] = []
            try:
                block.extend(islice(source, window))
            except Exception:
                yield from self._segmented_block(block, segments, operating_point, stop)
                raise
            if block:
                yield from self._segmented_block(block, segments, operating_point, stop)
            if len(block) < window:
                return

    def run(
        self, items: Iterable[tuple[Any, str | None]], stop: Callable[[], bool] | None = None
    ) -> Iterator[tuple[Any, DocLogits | None]]:
        """``(tag, text)`` pairs to ``(tag, DocLogits)``, raw logits, in input order (see the engine)."""
        return self.engine.run(items, stop)

    @property
    def stats(self) -> EngineStats:
        """What the engine has done so far (texts, batches, padding, compilations)."""
        return self.engine.stats

    def _segmented_block(
        self,
        block: list[tuple[Any, str | None]],
        mode: str,
        operating_point: str | None,
        stop: Callable[[], bool] | None,
    ) -> Iterator[tuple[Any, dict[str, Any] | None]]:
        """Documents first (their language picks the splitter's rules), then all their segments in one run."""
        docs = [doc for _, doc in self.engine.run(block, stop)]
        records = [None if doc is None else self.record(doc, operating_point) for doc in docs]
        spans: list[list[tuple[int, int]]] = []
        pieces = []
        for k, ((_, text), record) in enumerate(zip(block, records, strict=True)):
            spans.append([] if record is None else self._spans(text, mode, record["english_prob"]))
            whole = len(spans[k]) == 1 and docs[k].n_chunks == 1
            if not whole:  # one segment of an untruncated text: its score is the document's
                pieces += [((k, j), text[a:b]) for j, (a, b) in enumerate(spans[k])]
        scored = {tag: doc for tag, doc in self.engine.run(pieces, stop)}
        for k, record in enumerate(records):
            if record is not None:
                own = [scored.get((k, j), docs[k]).bot for j in range(len(spans[k]))]
                probs = self.probabilities(np.float32(own), np.float32(own))["bot_prob"]
                record["segments"] = [
                    {"start": a, "end": b, "bot_prob": float(p)}
                    for (a, b), p in zip(spans[k], probs, strict=True)
                ]
            yield block[k][0], record

    def _spans(self, text: str, mode: str, english_prob: float) -> list[tuple[int, int]]:
        if mode == "window":
            opts = self.engine.options
            return seg.window_segments(text, self.tokenizer, opts.max_length, opts.stride)
        return seg.sentence_segments(text, self.tokenizer, "en" if english_prob >= 0.5 else "es")

    def record(self, doc: DocLogits, operating_point: str | None = None) -> dict[str, Any]:
        """One text's record from the engine's result: the one place records are built (API, CLI,
        service, Ray). ``n_tokens``/``truncated``/``short`` say how much text the scores rest on."""
        bot = np.float32([doc.bot])
        probs = self.probabilities(bot, np.float32([doc.english]))
        out: dict[str, Any] = {
            "bot_prob": float(probs["bot_prob"][0]),
            "english_prob": float(probs["english_prob"][0]),
            "is_bot": bool(self.decide(bot, operating_point)[0]),
            "n_chunks": int(doc.n_chunks),
            "n_tokens": int(doc.n_tokens),
            "truncated": bool(doc.truncated),
            "short": bool(doc.n_tokens < self.min_tokens),
        }
        if operating_point is not None:
            out["operating_point"] = operating_point
        return out


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
    directory's ``calibration.json`` (raw probabilities, no operating points).

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
