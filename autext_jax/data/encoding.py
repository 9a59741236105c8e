"""Texts → the token windows the model scores: tokenizing, truncating and windowing, on the host.

``TextEncoder.encode`` is the one entry from text to tokens for scoring (the engine calls nothing
else), so anything that must happen to every text just before it is tokenized goes there once, and
what it learns about a text travels with it in ``EncodedText.facts`` to the record (``records.py``).
That is where ``normalize.normalize`` runs (unless ``normalize=False``): the text tokenized is the
normalized one, and the facts say ``obfuscated`` and ``n_changed``.

Long texts: ``long="truncate"`` keeps the first ``max_length`` tokens (as the original model card)
and tokenizes only a character prefix (grown only if it yields too few tokens); ``long="chunk"``
cuts the text into overlapping windows of ``max_length`` tokens (each with its own special tokens,
consecutive windows sharing ``stride`` tokens), tokenizing a very long text in pieces cut at
whitespace into one int32 array, so memory stays bounded for any line length.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from autext_jax.data import batching
from autext_jax.normalize import Normalized, normalize

LONG_MODES = ("truncate", "chunk")
_PREFIX_CHARS_PER_TOKEN = 16  # a character prefix this long per token holds max_length tokens in practice
_PIECE_CHARS = 1 << 16  # chunk mode tokenizes very long texts in pieces of about this many characters


@dataclass(frozen=True)
class EncodedText:
    """One text ready for the model: its token windows (special tokens included, int32), whether its
    end was cut off, and ``facts`` learnt before tokenizing that belong in its record."""

    windows: list[np.ndarray]
    truncated: bool = False
    facts: Mapping[str, Any] = field(default_factory=dict)


class TextEncoder:
    """Tokenizes texts into scoring windows of ``max_length`` tokens (see the module docstring)."""

    def __init__(
        self, tokenizer, max_length: int, long: str = "truncate", stride: int = 128, normalize: bool = True
    ):
        if long not in LONG_MODES:
            raise ValueError(f"long must be one of {LONG_MODES}, got {long!r}")
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.long = long
        self.stride = stride
        self.normalize = normalize
        self.prefix, self.suffix = special_tokens(tokenizer)

    def prepare(self, text: str) -> Normalized:
        """The text as it is tokenized: normalized (``normalize.py``), or as given (``normalize=False``)."""
        return normalize(text) if self.normalize else _as_given(text)

    def encode(self, texts: Sequence[str]) -> list[EncodedText]:
        """Per text, in order, its windows (one unless ``long="chunk"`` and the text is longer)."""
        for text in texts:
            if not isinstance(text, str):
                raise TypeError(f"texts must be strings, got {type(text).__name__}")
        if not texts:
            return []
        if self.long == "truncate":
            pairs = self._prefix_tokens(texts, self.max_length + 1, self.prepare)
            encoded = [self._truncated(ids) for ids, _ in pairs]
            prepared = [p for _, p in pairs]
        else:
            prepared = [self.prepare(text) for text in texts]
            body = self.max_length - len(self.prefix) - len(self.suffix)
            step = body - self.stride
            prefix, suffix = np.int32(self.prefix), np.int32(self.suffix)
            encoded = []
            for ids in self.tokenize_plain([p.text for p in prepared]):
                starts = range(0, max(len(ids) - self.stride, 1), step)
                encoded.append(
                    EncodedText([np.concatenate([prefix, ids[s : s + body], suffix]) for s in starts])
                )
        if not self.normalize:
            return encoded
        return [
            replace(e, facts={"obfuscated": p.obfuscated, "n_changed": p.changed})
            for e, p in zip(encoded, prepared, strict=True)
        ]

    def _truncated(self, ids: list[int]) -> EncodedText:
        """``ids`` were tokenized to one token more than fits: more means the text was cut."""
        n = self.max_length
        cut = len(ids) > n
        if cut:
            ids = ids[: n - len(self.suffix)] + ids[len(ids) - len(self.suffix) :]
        return EncodedText([np.asarray(ids, dtype=np.int32)], cut)

    def tokenize_truncated(self, texts: Sequence[str], n: int | None = None) -> list[list[int]]:
        """``batching.tokenize`` of the texts as given, truncated to ``n`` tokens (default ``max_length``),
        reading only as much of each text as needed (see ``_prefix_tokens``)."""
        return [ids for ids, _ in self._prefix_tokens(texts, n or self.max_length, _as_given)]

    def _prefix_tokens(
        self, texts: Sequence[str], n: int, prepare: Callable[[str], Normalized]
    ) -> list[tuple[list[int], Normalized]]:
        """Per text, its first ``n`` tokens and the prepared (normalized) text they come from.

        A text longer than the prefix budget is prepared and tokenized from a character prefix; the
        prefix is accepted when it and one twice as long give the same ``n`` tokens (so a cut word at
        its end changed nothing), else it doubles, up to the whole text. So a huge line is only
        normalized and tokenized as far as it is scored (``n_changed`` counts that part).
        """
        budget = self.max_length * _PREFIX_CHARS_PER_TOKEN
        whole = [prepare(t) if len(t) <= budget else Normalized("", 0) for t in texts]
        out = list(zip(batching.tokenize(self.tokenizer, [p.text for p in whole], n), whole, strict=True))
        for i, text in enumerate(texts):
            size = budget
            while len(text) > budget:
                shorter, longer = prepare(text[:size]), prepare(text[: 2 * size])
                first, second = batching.tokenize(self.tokenizer, [shorter.text, longer.text], n)
                if 2 * size >= len(text) or (first == second and len(first) == n):
                    out[i] = (second, longer)
                    break
                size *= 2
        return out

    def tokenize_plain(self, texts: Sequence[str]) -> list[np.ndarray]:
        """Token ids without special tokens or truncation (for chunking long texts), as int32 arrays.

        A very long text is tokenized in pieces cut before a whitespace that follows a non-space
        (the XLM-R tokenizer splits on whitespace first, so the ids are the same) to bound the
        tokenizer's per-token memory. Through the tokenizer's own ``__call__`` (it resets
        truncation state left by earlier calls), with its "sequence longer than the maximum"
        warning silenced: chunking is the point here.
        """
        from transformers.utils import logging as hf_logging

        verbosity = hf_logging.get_verbosity()
        hf_logging.set_verbosity_error()
        try:
            out = []
            for text in texts:
                pieces = whitespace_pieces(text, _PIECE_CHARS)
                parts = []
                for at in range(0, len(pieces), 8):  # a few pieces at a time: bounded tokenizer memory
                    ids = self.tokenizer(pieces[at : at + 8], add_special_tokens=False, truncation=False)
                    parts.append(np.fromiter((t for p in ids["input_ids"] for t in p), dtype=np.int32))
                out.append(np.concatenate(parts))
            return out
        finally:
            hf_logging.set_verbosity(verbosity)


def _as_given(text: str) -> Normalized:
    return Normalized(text, len(text))


_CUT = re.compile(r"(?<=\S)\s")


def whitespace_pieces(text: str, size: int) -> list[str]:
    """``text`` cut into pieces of ``size`` to ``2·size`` characters, each cut before a whitespace run
    (a stretch of ``size`` characters without one is cut where it is: only its edge tokens may change)."""
    pieces, start = [], 0
    while len(text) - start > 2 * size:
        match = _CUT.search(text, start + size, start + 2 * size)
        cut = match.start() if match is not None else start + size
        pieces.append(text[start:cut])
        start = cut
    pieces.append(text[start:])
    return pieces


def special_tokens(tokenizer) -> tuple[list[int], list[int]]:
    """The ids the tokenizer puts before and after a single text (``<s>`` and ``</s>`` for XLM-R)."""
    probe = "a"
    with_special = tokenizer(probe, add_special_tokens=True)["input_ids"]
    plain = tokenizer(probe, add_special_tokens=False)["input_ids"]
    for start in range(len(with_special) - len(plain) + 1):
        if with_special[start : start + len(plain)] == plain:
            return with_special[:start], with_special[start + len(plain) :]
    raise ValueError("cannot locate the special tokens this tokenizer adds around a text")
