"""The one place a text's output record is assembled, for every path: the Python API, the CLI (a file
or a corpus folder), the HTTP service (through ``Detector.score_records``), Ray Data and evaluate.

A record is, in this column order (``Layout.columns``):

- ``id`` (the CLI, corpus parts, Ray, evaluate; not the API, whose records are in input order);
- ``bot_prob``, ``english_prob`` (reported: calibrated when the model has a calibration), ``is_bot``
  (``decision.Decision``), ``n_chunks`` (all but the CLI without ``--long chunk``);
- ``n_tokens``, ``truncated``, ``short``: how much text the scores rest on (``short``: fewer tokens
  than the model was validated on);
- the facts the text's encoding reported (``FACT_FIELDS``, from ``EncodedText.facts``);
- ``operating_point`` (when one decides), ``segments`` (``[{"start", "end", "bot_prob", "truncated"}]``,
  character offsets, when asked for), ``source`` (corpus parts: the input file the row came from),
  ``text`` (when asked for), ``error`` (when bad inputs are kept as records: their scores are null).

A non-finite score is refused (``InputDataError``): it means broken weights or a dtype that overflowed,
and a NaN written as a score would be silently wrong.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from autext_jax import segments as seg
from autext_jax.errors import InputDataError

if TYPE_CHECKING:
    from autext_jax.decision import Decision
    from autext_jax.engine import DocLogits

SCORE_FIELDS = ("bot_prob", "english_prob", "is_bot")
LENGTH_FIELDS = ("n_tokens", "truncated", "short")
# Per-text facts learnt while encoding (``EncodedText.facts``), in column order, with their Arrow types.
# ``obfuscated``: normalization undid an evasion (``normalize.py``); ``n_changed``: the characters it
# removed, folded, re-cased or replaced. Both null when the detector scores raw text (``normalize=False``).
FACT_FIELDS: tuple[str, ...] = ("obfuscated", "n_changed")
_FACT_TYPES: dict[str, str] = {"obfuscated": "bool", "n_changed": "int64"}


@dataclass(frozen=True)
class Layout:
    """Which fields the records of one run carry (see the module docstring for their order)."""

    ids: bool = False
    chunks: bool = True
    operating_point: str | None = None
    segments: str | None = None
    source: bool = False
    text: bool = False
    errors: bool = False

    def columns(self) -> list[str]:
        out = ["id"] if self.ids else []
        out += SCORE_FIELDS
        out += ["n_chunks"] if self.chunks else []
        out += LENGTH_FIELDS
        out += FACT_FIELDS
        out += ["operating_point"] if self.operating_point is not None else []
        out += ["segments"] if self.segments is not None else []
        out += ["source"] if self.source else []
        out += ["text"] if self.text else []
        out += ["error"] if self.errors else []
        return out


class RecordBuilder:
    """Builds the records of one run: one ``Decision`` (threshold, calibration) and one ``Layout``."""

    def __init__(self, decision: Decision, layout: Layout = Layout()):
        seg.check_mode(layout.segments)
        if layout.operating_point is not None:
            decision.operating_point(layout.operating_point)  # an unknown name fails before any work
        self.decision = decision
        self.layout = layout
        self.columns = layout.columns()

    def build(
        self,
        doc: DocLogits | None,
        *,
        id: Any = None,  # noqa: A002 - the record's field
        text: str | None = None,
        error: str | None = None,
        source: str | None = None,
        segments: Sequence[seg.ScoredSpan] | None = None,
    ) -> dict[str, Any]:
        """The record of one input: scored from ``doc``, or (``doc`` is ``None``) null scores and ``error``.

        ``id`` also names the record in a non-finite-score error; ``segments`` are the document's
        scored spans (``segments.score_segments``) when the layout asks for them.
        """
        values: dict[str, Any] = {"id": id, "source": source, "text": text, "error": error}
        if doc is not None:
            values.update(self._scores(doc, id))
            if self.layout.segments is not None:
                values["segments"] = self._segments(segments or [])
        elif error is None:
            raise ValueError(f"record {id!r}: neither a score nor an error")
        return {column: values.get(column) for column in self.columns}

    def _scores(self, doc: DocLogits, where: Any) -> dict[str, Any]:
        decision = self.decision
        bot = np.float32([doc.bot])
        bot_prob = float(decision.bot_prob(bot)[0])
        english_prob = float(decision.english_prob(np.float32([doc.english]))[0])
        if not math.isfinite(bot_prob) or not math.isfinite(english_prob):
            raise InputDataError(
                f"record {where!r}: the model gave a non-finite score (broken weights or dtype)"
            )
        out = {
            "bot_prob": bot_prob,
            "english_prob": english_prob,
            "is_bot": bool(decision.is_bot(bot, self.layout.operating_point)[0]),
            "n_chunks": int(doc.n_chunks),
            "n_tokens": int(doc.n_tokens),
            "truncated": bool(doc.truncated),
            "short": bool(decision.is_short(doc.n_tokens)),
            "operating_point": self.layout.operating_point,
        }
        out.update({name: doc.facts.get(name) for name in FACT_FIELDS})
        return out

    def _segments(self, spans: Sequence[seg.ScoredSpan]) -> list[dict[str, Any]]:
        probs = self.decision.bot_prob(np.float32([s.bot for s in spans]))
        pairs = zip(spans, probs, strict=True)
        return [
            {"start": s.start, "end": s.end, "bot_prob": float(p), "truncated": s.truncated} for s, p in pairs
        ]


def arrow_schema(columns: Sequence[str], int_ids: bool):
    """The Arrow schema of records with ``columns`` (``id``: int64 when ``int_ids``, else string)."""
    import pyarrow as pa

    segment = pa.struct(
        [("start", pa.int64()), ("end", pa.int64()), ("bot_prob", pa.float64()), ("truncated", pa.bool_())]
    )
    types = {
        "id": pa.int64() if int_ids else pa.string(), "bot_prob": pa.float64(), "english_prob": pa.float64(),
        "is_bot": pa.bool_(), "n_chunks": pa.int64(), "n_tokens": pa.int64(), "truncated": pa.bool_(),
        "short": pa.bool_(), "operating_point": pa.string(), "segments": pa.list_(segment),
        "source": pa.string(), "text": pa.string(), "error": pa.string(),
        **{name: pa.type_for_alias(alias) for name, alias in _FACT_TYPES.items()},
    }
    return pa.schema([(c, types.get(c, pa.string())) for c in columns])
