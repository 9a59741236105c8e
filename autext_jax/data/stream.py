"""Fixed-shape, length-bucketed global batches of a tokenized dataset, for training and evaluation.

Batching policy (why the shapes are what they are): every row goes to the smallest
``batching.bucket_lengths`` bucket that holds it, so XLA compiles one program per bucket and padding
stays small. All buckets use the same number of rows per global batch (``global_batch_size``): one
static batch dimension keeps sharding and the optimizer's per-example scaling simple, and the shorter
buckets are cheap anyway. A bucket's leftover rows (fewer than a batch) move up to the next longer
bucket instead of being dropped; only the longest bucket's remainder is dropped (training, a different
random remainder each epoch) or padded with zero-weight rows (evaluation).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np

from autext_jax.data.batching import bucket_for, pad_batch
from autext_jax.data.sources import DataError, DataUsageError


class BatchStream:
    """Deterministic length-bucketed batches of fixed shapes; see the module docstring for the policy.

    Every process computes the same global plan (from all rows' lengths) and materialises only its
    slice ``[process_index·B_local, (process_index+1)·B_local)`` of each global batch, so
    ``jax.make_array_from_process_local_data`` can assemble the global array. The plan for an epoch
    is a pure function of ``(seed, epoch)``; ``batches(epoch, start)`` skips the first ``start``.
    """

    def __init__(
        self,
        ds,
        *,
        global_batch_size: int,
        buckets: Sequence[int],
        seed: int = 0,
        pad_id: int = 1,
        process_index: int = 0,
        process_count: int = 1,
        shuffle: bool = True,
        drop_remainder: bool = True,
        with_index: bool = False,
    ):
        if global_batch_size < 1 or global_batch_size % process_count:
            raise DataError(
                f"global_batch_size {global_batch_size} must be a positive multiple of "
                f"process_count {process_count}"
            )
        if not 0 <= process_index < process_count:
            raise DataUsageError(f"process_index {process_index} is outside [0, {process_count})")
        if len(ds) == 0:
            raise DataError("cannot batch an empty dataset")
        missing = [c for c in ("input_ids", "bot", "english") if c not in ds.column_names]
        if missing:
            raise DataError(
                f"dataset lacks columns {missing} (run tokenize_dataset first); it has {ds.column_names}"
            )
        self.buckets = tuple(sorted(buckets))
        self.global_batch_size = global_batch_size
        self.local_batch_size = global_batch_size // process_count
        self.seed, self.pad_id = seed, pad_id
        self.process_index, self.process_count = process_index, process_count
        self.shuffle, self.drop_remainder, self.with_index = shuffle, drop_remainder, with_index

        table = ds.with_format("arrow", columns=["input_ids", "bot", "english"])[:]
        ids = table.column("input_ids").combine_chunks()
        self._offsets = np.asarray(ids.offsets, dtype=np.int64)
        self._tokens = np.asarray(ids.values, dtype=np.int32)
        self.lengths = np.diff(self._offsets).astype(np.int64)
        too_long = int(self.lengths.max())
        if too_long > self.buckets[-1]:
            raise DataError(f"a row has {too_long} tokens, more than the longest bucket {self.buckets[-1]}")
        self.bot = np.asarray(table.column("bot").to_numpy(), dtype=np.int8)
        self.english = np.asarray(table.column("english").to_numpy(), dtype=np.int8)
        self.bucket_of_row = np.searchsorted(np.asarray(self.buckets), self.lengths, side="left")
        self._counts = np.bincount(self.bucket_of_row, minlength=len(self.buckets))

    @property
    def num_rows(self) -> int:
        return len(self.lengths)

    @property
    def steps_per_epoch(self) -> int:
        """Global batches per epoch: depends only on the row lengths, so it is the same everywhere."""
        steps, carry = 0, 0
        for count in self._counts:
            available = int(count) + carry
            steps += available // self.global_batch_size
            carry = available % self.global_batch_size
        if carry and not self.drop_remainder:
            steps += 1
        return steps

    def plan(self, epoch: int) -> list[tuple[int, np.ndarray]]:
        """``[(bucket_length, row_indices)]`` of every global batch of ``epoch``, in order.

        A final padded batch (``drop_remainder=False``) has fewer than ``global_batch_size`` indices.
        """
        rng = np.random.default_rng([self.seed, epoch]) if self.shuffle else None
        batches: list[tuple[int, np.ndarray]] = []
        carry = np.zeros(0, dtype=np.int64)
        size = self.global_batch_size
        for b, length in enumerate(self.buckets):
            rows = np.flatnonzero(self.bucket_of_row == b)
            if rng is not None:
                rows = rng.permutation(rows)
            rows = np.concatenate([carry, rows])
            full = len(rows) // size * size
            batches.extend((length, rows[i : i + size]) for i in range(0, full, size))
            carry = rows[full:]
        if len(carry) and not self.drop_remainder:
            batches.append((bucket_for(int(self.lengths[carry].max()), self.buckets), carry))
        if rng is not None:
            batches = [batches[i] for i in rng.permutation(len(batches))]
        return batches

    def batches(self, epoch: int, start: int = 0) -> Iterator[dict[str, np.ndarray]]:
        """This process's rows of global batches ``start..steps_per_epoch-1`` of ``epoch``."""
        if not 0 <= start <= self.steps_per_epoch:
            raise DataError(f"start {start} is outside [0, {self.steps_per_epoch}]")
        for length, rows in self.plan(epoch)[start:]:
            yield self._materialize(length, rows)

    def _materialize(self, length: int, rows: np.ndarray) -> dict[str, np.ndarray]:
        lo = self.process_index * self.local_batch_size
        mine = rows[lo : lo + self.local_batch_size]
        n, b = len(mine), self.local_batch_size
        seqs = [self._tokens[self._offsets[r] : self._offsets[r + 1]] for r in mine]
        input_ids, attention_mask = pad_batch(seqs, length, b, self.pad_id)
        weight = np.zeros(b, np.float32)
        weight[:n] = 1.0
        out = {"input_ids": input_ids, "attention_mask": attention_mask, "weight": weight}
        for task, labels in (("bot", self.bot), ("english", self.english)):
            values = np.zeros(b, np.float32)
            present = np.zeros(b, np.float32)
            values[:n] = np.maximum(labels[mine], 0)
            present[:n] = labels[mine] >= 0
            out[task], out[f"{task}_mask"] = values, present
        if self.with_index:
            index = np.full(b, -1, np.int32)
            index[:n] = mine
            out["index"] = index
        return out


def eval_batches(
    ds,
    *,
    global_batch_size: int,
    buckets: Sequence[int],
    pad_id: int = 1,
    process_index: int = 0,
    process_count: int = 1,
) -> Iterator[dict[str, np.ndarray]]:
    """Every row exactly once, in fixed-shape bucketed batches; padding rows have weight 0, index -1.

    ``index`` holds each row's position in ``ds`` so predictions can be put back in dataset order.
    """
    stream = BatchStream(
        ds,
        global_batch_size=global_batch_size,
        buckets=buckets,
        pad_id=pad_id,
        process_index=process_index,
        process_count=process_count,
        shuffle=False,
        drop_remainder=False,
        with_index=True,
    )
    return stream.batches(0)


__all__ = ["BatchStream", "eval_batches"]
