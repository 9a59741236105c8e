"""Cutting a document into segments scored on their own: sentences (merged to a judgeable length) or windows.

Sentences come from ``sentencex`` (Wikimedia's rule-based splitter, ~300 languages, maintained;
an optional dependency: ``pip install -e ".[segments]"``), with the language the model's English
head gave the document (``en`` or ``es``). A lone sentence is often too short for the model to
judge (the AuTexTification training texts are rarely under ~30 tokens, and scores of 10-token
snippets are close to noise), so neighbouring sentences are merged, in order, until a segment has
at least ``MIN_SEGMENT_TOKENS`` tokens (a short tail joins the segment before it).

Segments tile the text: the first starts at 0, each ends where the next starts, the last ends at
``len(text)`` (whitespace between sentences belongs to the segment before it), so offsets always
cover the whole document and each segment is a run of whole sentences.

``windows`` gives the character spans of the token windows ``--long chunk`` scores (from the
tokenizer's offsets), so a long document's windows can be reported the same way.

``scored`` runs it all on an engine: each block of documents first (their language picks the
splitter's rules), then all their segments in one engine run; a document that is one segment and
was scored whole keeps its own score. Segments are found in the text as the engine reads it
(normalized, ``normalize.py``) and their offsets mapped back to the original text, which they tile.
``records.py`` turns the raw logits into ``bot_prob``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from itertools import islice
from typing import TYPE_CHECKING, Any

from autext_jax.errors import UsageError

if TYPE_CHECKING:
    from autext_jax.engine import DocLogits, InferenceEngine

MODES = ("sentence", "window")
MIN_SEGMENT_TOKENS = 30


def check_mode(mode: str | None) -> str | None:
    if mode is not None and mode not in MODES:
        raise UsageError(f"segments must be one of {MODES} (or none), got {mode!r}")
    return mode


def _splitter():
    try:
        import sentencex
    except ImportError:
        raise UsageError(
            'sentence segments need the sentence splitter: pip install -e ".[segments]" (sentencex)'
        ) from None
    return sentencex


def sentence_spans(text: str, language: str = "en") -> list[tuple[int, int]]:
    """Character spans of the sentences of ``text`` (whitespace-only pieces dropped), in order."""
    if not text.strip():
        return []
    spans = []
    cursor = 0
    for piece in _splitter().get_sentence_boundaries(language, text):
        start, end = int(piece["start_index"]), int(piece["end_index"])
        if text[start:end] != piece["text"]:  # offsets not in characters: locate the piece instead
            found = text.find(piece["text"], cursor)
            if found < 0:
                continue
            start, end = found, found + len(piece["text"])
        cursor = max(cursor, end)
        if text[start:end].strip():
            spans.append((start, end))
    return spans or [(0, len(text))]


def merge_spans(
    spans: Sequence[tuple[int, int]],
    n_tokens: Sequence[int],
    text_length: int,
    min_tokens: int = MIN_SEGMENT_TOKENS,
) -> list[tuple[int, int]]:
    """Neighbouring spans merged until each has ``>= min_tokens`` tokens, then stretched to tile the text."""
    groups: list[list[int]] = []  # [first span, last span, tokens]
    for i, n in enumerate(n_tokens):
        if groups and groups[-1][2] < min_tokens:
            groups[-1][1], groups[-1][2] = i, groups[-1][2] + n
        else:
            groups.append([i, i, n])
    if len(groups) > 1 and groups[-1][2] < min_tokens:
        tail = groups.pop()
        groups[-1][1], groups[-1][2] = tail[1], groups[-1][2] + tail[2]
    starts = [0] + [spans[g[0]][0] for g in groups[1:]]
    ends = starts[1:] + [text_length]
    return list(zip(starts, ends, strict=True))


def sentence_segments(
    text: str, tokenizer, language: str = "en", min_tokens: int = MIN_SEGMENT_TOKENS
) -> list[tuple[int, int]]:
    """Segments of whole sentences, each ``>= min_tokens`` tokens where the text allows, tiling ``text``."""
    spans = sentence_spans(text, language)
    if not spans:
        return []
    counts = token_counts(tokenizer, [text[a:b] for a, b in spans])
    return merge_spans(spans, counts, len(text), min_tokens)


def token_counts(tokenizer, texts: list[str]) -> list[int]:
    """Tokens of each text without special tokens (the measure segment lengths are judged by)."""
    if not texts:
        return []
    ids = tokenizer(texts, add_special_tokens=False, truncation=False)["input_ids"]
    return [len(x) for x in ids]


def window_segments(
    text: str, tokenizer, max_length: int, stride: int, n_special: int = 2
) -> list[tuple[int, int]]:
    """Character spans of the windows ``long="chunk"`` cuts ``text`` into (as the engine: ``max_length``
    tokens with special tokens, consecutive windows sharing ``stride``), tiling the text."""
    if not text.strip():
        return []
    encoded = tokenizer(text, add_special_tokens=False, truncation=False, return_offsets_mapping=True)
    offsets = encoded["offset_mapping"]
    body = max_length - n_special
    step = body - stride
    if not offsets:
        return [(0, len(text))]
    starts = list(range(0, max(len(offsets) - stride, 1), step))
    # Each window is reported from where the previous one's new tokens end (no overlap in the report).
    cuts = [0] + [offsets[s + stride][0] if s + stride < len(offsets) else offsets[s][0] for s in starts[1:]]
    ends = cuts[1:] + [len(text)]
    return [(a, b) for a, b in zip(cuts, ends, strict=True) if b > a]


@dataclass(frozen=True)
class ScoredSpan:
    """A segment: character offsets ``[start, end)``, its raw bot logit, and whether only its start was
    scored (a segment longer than ``max_length`` tokens is truncated like a document)."""

    start: int
    end: int
    bot: float
    truncated: bool = False


def scored(
    engine: InferenceEngine,
    items: Iterable[tuple[Any, str | None]],
    mode: str,
    language_of: Callable[[DocLogits], str],
    stop: Callable[[], bool] | None = None,
) -> Iterator[tuple[Any, DocLogits | None, list[ScoredSpan]]]:
    """``(tag, text)`` pairs → ``(tag, DocLogits, segments)`` in input order, a block of ``window`` at a time.

    ``language_of(doc)`` picks the sentence splitter's language (``"en"``/``"es"``). If reading
    ``items`` raises, the results of everything read before are yielded first.
    """
    check_mode(mode)
    source = iter(items)
    window = engine.options.window
    while True:
        block: list[tuple[Any, str | None]] = []
        try:
            block.extend(islice(source, window))
        except Exception:
            yield from _block(engine, block, mode, language_of, stop)
            raise
        if block:
            yield from _block(engine, block, mode, language_of, stop)
        if len(block) < window:
            return


def _block(engine, block, mode, language_of, stop):
    docs = [doc for _, doc in engine.run(block, stop)]
    spans: list[list[tuple[int, int]]] = []
    pieces = []
    for k, ((_, text), doc) in enumerate(zip(block, docs, strict=True)):
        spans.append([] if doc is None else _spans(engine, text, mode, language_of(doc)))
        whole = len(spans[k]) == 1 and doc.n_chunks == 1
        if not whole:  # one segment of an untruncated text: its score is the document's
            pieces += [((k, j), text[a:b]) for j, (a, b) in enumerate(spans[k])]
    own = {tag: doc for tag, doc in engine.run(pieces, stop)}
    for k, doc in enumerate(docs):
        scores = [(a, b, own.get((k, j), doc)) for j, (a, b) in enumerate(spans[k])]
        yield block[k][0], doc, [ScoredSpan(a, b, d.bot, bool(d.truncated)) for a, b, d in scores]


def _spans(engine, text: str, mode: str, language: str) -> list[tuple[int, int]]:
    """Segments of the text as the engine reads it (normalized), reported on the original text."""
    prepared = engine.encoder.prepare(text)
    if mode == "window":
        opts = engine.options
        spans = window_segments(prepared.text, engine.tokenizer, opts.max_length, opts.stride)
    else:
        spans = sentence_segments(prepared.text, engine.tokenizer, language)
    return prepared.original_tiling(spans)
