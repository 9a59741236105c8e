"""Shapes shared by inference, training and evaluation: tokenization, length buckets and padding.

XLA compiles one program per input shape. Padding every batch to one of a few bucket lengths
bounds the number of compilations for any input stream while wasting little compute on padding.
"""

from __future__ import annotations

from collections.abc import Sequence

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
