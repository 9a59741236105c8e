"""Shapes shared by inference, training and evaluation: tokenization, length buckets, packed rows.

XLA compiles one program per input shape. Padding every batch to one of a few bucket lengths
bounds the number of compilations for any input stream while wasting little compute on padding;
training batches use ``bucket_lengths``/``pad_batch``, scoring packs several texts into each row
(``ShapePolicy``), which wastes almost nothing.
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


def bucket_lengths(max_length: int, smallest: int = 16) -> tuple[int, ...]:
    """Bucket lengths ``smallest·2^k`` below ``max_length``, then ``max_length`` itself."""
    if max_length < 2:
        raise ValueError(f"max_length must be at least 2 (for <s> and </s>), got {max_length}")
    lengths = []
    size = smallest
    while size < max_length:
        lengths.append(size)
        size *= 2
    lengths.append(max_length)
    return tuple(lengths)


def bucket_for(length: int, buckets: Sequence[int]) -> int:
    """The smallest bucket that holds ``length`` tokens (the largest one if none does)."""
    for size in buckets:
        if length <= size:
            return size
    return buckets[-1]


def tokenize(tokenizer, texts: Sequence[str], max_length: int | None) -> list[list[int]]:
    """Token ids with special tokens, truncated to ``max_length`` (``None``: no truncation)."""
    encoded = tokenizer(
        list(texts),
        add_special_tokens=True,
        truncation=max_length is not None,
        max_length=max_length,
        padding=False,
        return_attention_mask=False,
        return_token_type_ids=False,
    )
    return encoded["input_ids"]


def pad_batch(
    sequences: Sequence[Sequence[int]], length: int, rows: int, pad_id: int
) -> tuple[np.ndarray, np.ndarray]:
    """``(input_ids, attention_mask)`` int32 arrays of shape ``(rows, length)``, right-padded.

    Rows beyond ``len(sequences)`` are all padding (mask 0); callers drop or zero-weight them.
    """
    if len(sequences) > rows:
        raise ValueError(f"{len(sequences)} sequences do not fit in a batch of {rows} rows")
    ids = np.full((rows, length), pad_id, dtype=np.int32)
    mask = np.zeros((rows, length), dtype=np.int32)
    for i, seq in enumerate(sequences):
        if len(seq) > length:
            raise ValueError(f"sequence of {len(seq)} tokens does not fit bucket length {length}")
        ids[i, : len(seq)] = seq
        mask[i, : len(seq)] = 1
    return ids, mask


# ---- inference shapes: packed rows ------------------------------------------------------------


@dataclass(frozen=True)
class Batch:
    """One forward pass: ``rows`` row lists of item indices (each row's texts back to back), padded
    with empty rows to ``n_rows`` rows of ``length`` tokens, at most ``texts`` texts per row."""

    length: int
    n_rows: int
    texts: int
    rows: tuple[tuple[int, ...], ...]


@dataclass(frozen=True)
class ShapePolicy:
    """The one place that decides inference shapes: row lengths, texts per row and rows per batch.

    Packed (``max_texts > 1``): items are packed best-fit-decreasing into rows of the shortest row
    length that holds them, filling leftover room of longer rows with shorter items. Unpacked
    (``max_texts == 1``): one item per row, i.e. plain length buckets. A batch has the full row count
    of its length or, for the last rows of a length, one of its halvings down to ``min_tokens``
    tokens; a last batch of the fewest rows is cut to the shortest ``tail_lengths`` bucket that holds
    it (one short text alone is not padded to 256). So the shapes (and XLA compilations) are few and
    known in advance: ``shapes()``.
    """

    lengths: tuple[int, ...]
    full_rows: tuple[int, ...]
    max_texts: tuple[int, ...]
    row_multiple: int = 1
    min_tokens: int = 256
    tail_lengths: tuple[int, ...] = ()

    @classmethod
    def build(
        cls,
        max_length: int,
        tokens_per_batch: int,
        *,
        pack_length: int | None = 256,
        smallest: int = 16,
        max_rows: int = 1024,
        row_multiple: int = 1,
        min_tokens: int = 256,
    ) -> ShapePolicy:
        """``pack_length`` ``None``: unpacked buckets ``bucket_lengths(max_length, smallest)``.
        Otherwise rows of ``pack_length`` tokens for items that fit and of ``max_length`` for longer ones."""
        if pack_length is None:
            lengths = bucket_lengths(max_length, smallest=min(smallest, max_length))
            texts = tuple(1 for _ in lengths)
        else:
            lengths = tuple(sorted({min(pack_length, max_length), max_length}))
            texts = tuple(max(1, n // 4) for n in lengths)
        rows = tuple(_round_up(max(1, min(max_rows, tokens_per_batch // n)), row_multiple) for n in lengths)
        tails = bucket_lengths(max_length, smallest=min(smallest, max_length))
        return cls(lengths, rows, texts, row_multiple, min_tokens, tails)

    def row_options(self, length: int) -> tuple[int, ...]:
        """Row counts a batch of ``length`` may have, descending: the full count and its halvings."""
        full = self.full_rows[self.lengths.index(length)]
        floor = max(1, -(-self.min_tokens // length))
        options, rows = [], full
        while True:
            options.append(_round_up(rows, self.row_multiple))
            if rows <= floor:
                break
            rows = max(floor, -(-rows // 2))
        return tuple(sorted(set(options), reverse=True))

    def shapes(self) -> list[tuple[int, int]]:
        """Every ``(rows, length)`` a batch can have."""
        shapes = {(rows, n) for n in self.lengths for rows in self.row_options(n)}
        shapes |= {(self.row_options(n)[-1], t) for n in self.lengths for t in self.tail_lengths if t < n}
        return sorted(shapes, key=lambda s: (s[1], -s[0]))

    def plan(self, item_lengths: Sequence[int]) -> list[Batch]:
        """Batches covering every item once (items longer than the longest row are an error)."""
        rows_by_length: dict[int, list[list[int]]] = {n: [] for n in self.lengths}
        for row, length in self._pack(item_lengths):
            rows_by_length[length].append(row)
        batches = []
        for length, texts in zip(self.lengths, self.max_texts, strict=True):
            rows = rows_by_length[length]
            options = self.row_options(length)
            while rows:
                fitting = [r for r in options if r <= len(rows)]
                n_rows = fitting[0] if fitting else options[-1]
                taken, rows = rows[:n_rows], rows[n_rows:]
                cut, cut_texts = length, texts
                if n_rows == options[-1]:
                    longest = max(sum(item_lengths[i] for i in row) for row in taken)
                    most = max(len(row) for row in taken)
                    fits = [t for t in self.tail_lengths if longest <= t < length and most <= self._texts(t)]
                    cut, cut_texts = (min(fits), self._texts(min(fits))) if fits else (length, texts)
                batches.append(Batch(cut, n_rows, cut_texts, tuple(tuple(r) for r in taken)))
        return batches

    def _texts(self, tail: int) -> int:
        """Texts per row of a cut tail row: as its policy length would allow, at most one per 2 tokens."""
        native = next(k for n, k in zip(self.lengths, self.max_texts, strict=True) if n >= tail)
        return max(1, min(native, tail // 2))

    def _pack(self, item_lengths: Sequence[int]) -> list[tuple[list[int], int]]:
        """Best-fit decreasing: ``(item indices, row length)`` per row; rows keep items in input order."""
        rows: list[tuple[list[int], int]] = []
        open_rows: list[tuple[int, int]] = []  # (room left, row index), sorted; rows with room for more texts
        for index in sorted(range(len(item_lengths)), key=lambda i: -item_lengths[i]):
            need = item_lengths[index]
            if need > self.lengths[-1]:
                raise ValueError(f"an item of {need} tokens does not fit rows of {self.lengths[-1]}")
            at = bisect.bisect_left(open_rows, (need, -1))
            if at < len(open_rows):
                room, row = open_rows.pop(at)
            else:
                length = next(n for n in self.lengths if n >= need)
                rows.append(([], length))
                room, row = length, len(rows) - 1
            members, length = rows[row]
            members.append(index)
            limit = self.max_texts[self.lengths.index(length)]
            if room - need > 1 and len(members) < limit:  # a text takes at least <s> and </s>
                bisect.insort(open_rows, (room - need, row))
        return [(sorted(members), length) for members, length in rows]


def _round_up(value: int, multiple: int) -> int:
    return -(-value // multiple) * multiple
