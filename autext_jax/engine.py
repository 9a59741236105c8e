"""The inference engine: tokenize → bucket → jitted forward → restore input order, streaming.

Why it is fast: texts are tokenized in chunks and grouped by length into a few bucket lengths
(``batching.bucket_lengths``), each bucket with a fixed batch shape holding roughly the same number
of tokens (more rows for short buckets). Little compute goes to padding, and the number of XLA
compilations is bounded by the number of (bucket, rows) shapes, whatever the input stream: per
bucket, the full row count and its halvings down to ``min_tokens`` tokens (for the last, partial
batches of a bucket, which are split into those sizes rather than padded with empty rows).

Why memory stays flat: at most ``window`` inputs are in flight (read but not yet emitted); when
that budget is reached, the bucket holding the oldest input runs, even if not full, so results come
out in input order while the input is still being read.

Long texts: ``long="truncate"`` keeps the first ``max_length`` tokens (as the original model card);
``long="chunk"`` scores overlapping windows of ``max_length`` tokens (each with its own special
tokens, consecutive windows sharing ``stride`` tokens) and averages the windows' logits weighted by
their token counts; the probability is the sigmoid of that mean (``scores.scores_from_logits``).
"""

from __future__ import annotations

import logging
from collections import Counter, deque
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from autext_jax import batching

log = logging.getLogger(__name__)

LONG_MODES = ("truncate", "chunk")
_TRACES = 0  # incremented each time the forward pass is traced, i.e. compiled for a new shape
_CACHE_HITS = 0  # persistent compilation cache hits (counted when a cache directory is enabled)
_CACHE_LISTENER_ADDED = False


# ---- the jitted forward pass ------------------------------------------------------------------


@partial(jax.jit, static_argnums=0)
def _forward(graphdef: nnx.GraphDef, state: nnx.State, input_ids: jax.Array, attention_mask: jax.Array):
    global _TRACES
    _TRACES += 1  # Python side effect: runs only while tracing
    model = nnx.merge(graphdef, state)
    model.eval()  # the traced copy only: dropout off, the caller's model is untouched
    return model(input_ids, attention_mask)


def forward_logits(model: nnx.Module, input_ids, attention_mask) -> dict[str, jax.Array]:
    """fp32 logits ``{"bot", "english"}`` of ``model`` in eval mode (dropout off), jitted per shape.

    Reusable by evaluation and training; compiled once per (model structure, input shape).
    """
    graphdef, state = nnx.split(model)
    return _forward(graphdef, state, jnp.asarray(input_ids), jnp.asarray(attention_mask))


def compilation_count() -> int:
    """How many times the forward pass has been compiled (traced) in this process."""
    return _TRACES


def enable_compile_cache(directory: str | Path) -> Path:
    """Persist XLA executables in ``directory`` so later runs skip compiling the same shapes."""
    global _CACHE_LISTENER_ADDED
    path = Path(directory).expanduser()
    path.mkdir(parents=True, exist_ok=True)
    jax.config.update("jax_compilation_cache_dir", str(path))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    if not _CACHE_LISTENER_ADDED:
        jax.monitoring.register_event_listener(_count_cache_hit)
        _CACHE_LISTENER_ADDED = True
    return path


def _count_cache_hit(event: str, **_: Any) -> None:
    global _CACHE_HITS
    if event == "/jax/compilation_cache/cache_hits":
        _CACHE_HITS += 1


def cache_hit_count() -> int:
    """Executables loaded from the persistent compilation cache in this process."""
    return _CACHE_HITS


# ---- results ----------------------------------------------------------------------------------


@dataclass
class DocLogits:
    """One input's logits: the token-weighted mean over its windows (one window unless chunked)."""

    bot: float
    english: float
    n_chunks: int
    n_tokens: int


@dataclass
class _Doc:
    tag: Any
    windows_left: int
    n_chunks: int
    weight: float = 0.0
    bot: float = 0.0
    english: float = 0.0
    n_tokens: int = 0

    @property
    def done(self) -> bool:
        return self.windows_left == 0


@dataclass
class EngineStats:
    texts: int = 0
    windows: int = 0
    batches: int = 0
    real_tokens: int = 0
    padded_tokens: int = 0
    compilations: int = 0
    shapes: Counter[tuple[int, int]] = field(default_factory=Counter)  # (rows, length) -> batches

    @property
    def padding_fraction(self) -> float:
        return 1.0 - self.real_tokens / self.padded_tokens if self.padded_tokens else 0.0


# ---- the engine -------------------------------------------------------------------------------


class InferenceEngine:
    """Scores streams of texts with an NNX ``MultiTaskModel`` and its Hugging Face tokenizer.

    ``batch_size`` is the number of rows of a ``max_length`` batch; shorter buckets get
    proportionally more rows (same tokens per batch), capped at ``max_rows``. ``None`` picks
    2048 tokens per batch on CPU (enough to keep its cores busy, little partial-batch waste) and
    32 rows of ``max_length`` on accelerators. ``fine_buckets`` adds the midpoints (24, 48, 96, ...)
    to ``batching.bucket_lengths``: less padding for twice the shapes. With several devices the
    batch dimension is sharded over a 1-D mesh and rows are rounded to the device count.
    """

    def __init__(
        self,
        model: nnx.Module,
        tokenizer,
        *,
        max_length: int = 512,
        batch_size: int | None = None,
        long: str = "truncate",
        stride: int = 128,
        window: int = 2048,
        max_rows: int = 1024,
        tokenize_chunk: int = 256,
        smallest_bucket: int = 16,
        fine_buckets: bool = True,
        min_tokens: int = 256,
        devices: Sequence[jax.Device] | None = None,
    ):
        if long not in LONG_MODES:
            raise ValueError(f"long must be one of {LONG_MODES}, got {long!r}")
        limit = model.cfg.encoder.max_tokens
        if not 2 < max_length <= limit:
            raise ValueError(f"max_length must be in 3..{limit} (the position table), got {max_length}")
        if long == "chunk" and not 0 <= stride < max_length - 2:
            raise ValueError(f"stride must be in 0..{max_length - 3} (max_length {max_length}), got {stride}")
        self.devices = list(devices) if devices is not None else jax.devices()
        if batch_size is None:
            on_cpu = self.devices[0].platform == "cpu"
            batch_size = max(1, 2048 // max_length) if on_cpu else 32
        if batch_size < 1 or window < 1:
            raise ValueError(f"batch_size and window must be positive, got {batch_size} and {window}")
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.long = long
        self.stride = stride
        self.window = window
        self.tokenize_chunk = max(1, min(tokenize_chunk, window))
        pad_id = tokenizer.pad_token_id
        self.pad_id = model.cfg.encoder.pad_token_id if pad_id is None else pad_id
        self.buckets = _buckets(max_length, min(smallest_bucket, max_length), fine_buckets)
        self.stats = EngineStats()
        self._prefix, self._suffix = _special_tokens(tokenizer)

        n_dev = len(self.devices)
        tokens_per_batch = batch_size * max_length
        self.batch_size = batch_size
        self.rows = {
            b: _round_up(max(1, min(max_rows, tokens_per_batch // b)), n_dev) for b in self.buckets
        }
        self.row_options = {b: _row_options(r, b, n_dev, min_tokens) for b, r in self.rows.items()}
        graphdef, state = nnx.split(model)
        if n_dev > 1:
            mesh = jax.sharding.Mesh(np.array(self.devices), ("batch",))
            self._data_sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("batch"))
            state = jax.device_put(state, jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec()))
        else:
            self._data_sharding = self.devices[0]
            state = jax.device_put(state, self.devices[0])
        self._graphdef, self._state = graphdef, state

    # -- public -----------------------------------------------------------------------------

    def logits(self, texts: Iterable[str]) -> dict[str, np.ndarray]:
        """``{"bot", "english"}`` float32 logits, ``"n_chunks"`` int32, one entry per text in input order."""
        docs = [doc for _, doc in self.run((i, t) for i, t in enumerate(texts))]
        return {
            "bot": np.array([d.bot for d in docs], dtype=np.float32),
            "english": np.array([d.english for d in docs], dtype=np.float32),
            "n_chunks": np.array([d.n_chunks for d in docs], dtype=np.int32),
        }

    def run(self, items: Iterable[tuple[Any, str | None]]) -> Iterator[tuple[Any, DocLogits | None]]:
        """Stream ``(tag, text)`` pairs to ``(tag, DocLogits)`` pairs in input order.

        A ``None`` text passes through as ``(tag, None)`` (the CLI uses it for skipped bad lines).
        If reading ``items`` raises, every result before the failure is yielded first, then the
        exception propagates, so a caller writing records has written all of them.
        """
        state = _RunState()
        source = iter(items)
        while True:
            chunk: list[tuple[Any, str | None]] = []
            try:
                for item in source:
                    chunk.append(item)
                    if len(chunk) >= self.tokenize_chunk:
                        break
            except Exception:
                self._admit(state, chunk)
                yield from self._drain(state)
                raise
            if not chunk:
                break
            self._admit(state, chunk)
            yield from state.pop_ready()
            while state.in_flight >= self.window:
                self._run_oldest(state)
                yield from state.pop_ready()
        yield from self._drain(state)

    # -- internals --------------------------------------------------------------------------

    def _admit(self, state: _RunState, chunk: list[tuple[Any, str | None]]) -> None:
        texts = [t for _, t in chunk if t is not None]
        for t in texts:
            if not isinstance(t, str):
                raise TypeError(f"texts must be strings, got {type(t).__name__}")
        windows = iter(self._windows(texts))
        for tag, text in chunk:
            doc_windows = [] if text is None else next(windows)
            doc = _Doc(tag=tag, windows_left=len(doc_windows), n_chunks=len(doc_windows))
            index = state.add_doc(doc)
            if text is None:
                continue
            self.stats.texts += 1
            for ids in doc_windows:
                bucket = batching.bucket_for(len(ids), self.buckets)
                state.pools.setdefault(bucket, deque()).append((index, ids))
                if len(state.pools[bucket]) >= self.rows[bucket]:
                    self._run_batch(state, bucket)

    def _windows(self, texts: list[str]) -> list[list[list[int]]]:
        """Per text, its token windows (special tokens included)."""
        if not texts:
            return []
        if self.long == "truncate":
            return [[ids] for ids in batching.tokenize(self.tokenizer, texts, self.max_length)]
        body = self.max_length - len(self._prefix) - len(self._suffix)
        step = body - self.stride
        out = []
        for ids in _tokenize_plain(self.tokenizer, texts):
            starts = range(0, max(len(ids) - self.stride, 1), step)
            out.append([self._prefix + ids[s : s + body] + self._suffix for s in starts])
        return out

    def _run_oldest(self, state: _RunState) -> None:
        """Run one batch from the bucket whose queue holds the oldest waiting input."""
        bucket = min((b for b, q in state.pools.items() if q), key=lambda b: state.pools[b][0][0])
        self._run_batch(state, bucket)

    def _drain(self, state: _RunState) -> Iterator[tuple[Any, DocLogits | None]]:
        while any(state.pools.values()):
            self._run_oldest(state)
            yield from state.pop_ready()
        yield from state.pop_ready()

    def _run_batch(self, state: _RunState, bucket: int) -> None:
        queue = state.pools[bucket]
        options = self.row_options[bucket]  # descending; options[0] is the full batch
        fitting = [r for r in options if r <= len(queue)]
        rows = fitting[0] if fitting else options[-1]
        items = [queue.popleft() for _ in range(min(rows, len(queue)))]
        take = len(items)
        ids, mask = batching.pad_batch([seq for _, seq in items], bucket, rows, self.pad_id)
        before = _TRACES
        out = _forward(
            self._graphdef,
            self._state,
            jax.device_put(ids, self._data_sharding),
            jax.device_put(mask, self._data_sharding),
        )
        bot, english = np.asarray(out["bot"]), np.asarray(out["english"])
        self.stats.compilations += _TRACES - before
        self.stats.shapes[(rows, bucket)] += 1
        self.stats.batches += 1
        self.stats.windows += take
        self.stats.padded_tokens += rows * bucket
        for row, (index, seq) in enumerate(items):
            self.stats.real_tokens += len(seq)
            state.add_result(index, len(seq), float(bot[row]), float(english[row]))


class _RunState:
    """Bookkeeping of one ``run``: inputs in flight, per-bucket queues, the next index to emit."""

    def __init__(self) -> None:
        self.docs: dict[int, _Doc] = {}
        self.pools: dict[int, deque[tuple[int, list[int]]]] = {}
        self.next_index = 0
        self.next_emit = 0

    @property
    def in_flight(self) -> int:
        return self.next_index - self.next_emit

    def add_doc(self, doc: _Doc) -> int:
        index = self.next_index
        self.docs[index] = doc
        self.next_index += 1
        return index

    def add_result(self, index: int, n_tokens: int, bot: float, english: float) -> None:
        doc = self.docs[index]
        doc.weight += n_tokens
        doc.bot += n_tokens * bot
        doc.english += n_tokens * english
        doc.n_tokens += n_tokens
        doc.windows_left -= 1

    def pop_ready(self) -> Iterator[tuple[Any, DocLogits | None]]:
        while self.next_emit < self.next_index and self.docs[self.next_emit].done:
            doc = self.docs.pop(self.next_emit)
            self.next_emit += 1
            if doc.n_chunks == 0:
                yield doc.tag, None
            else:
                yield doc.tag, DocLogits(
                    bot=doc.bot / doc.weight,
                    english=doc.english / doc.weight,
                    n_chunks=doc.n_chunks,
                    n_tokens=doc.n_tokens,
                )


def _buckets(max_length: int, smallest: int, fine: bool) -> tuple[int, ...]:
    """``batching.bucket_lengths``, plus the 1.5x midpoints (multiples of 8) when ``fine``."""
    coarse = batching.bucket_lengths(max_length, smallest=smallest)
    if not fine:
        return coarse
    mids = {_round_up(b * 3 // 2, 8) for b in coarse[:-1]}
    return tuple(sorted({b for b in set(coarse) | mids if b <= max_length}))


def _row_options(full: int, bucket: int, n_devices: int, min_tokens: int) -> tuple[int, ...]:
    """Row counts a batch of ``bucket`` may have: ``full`` and its halvings down to ``min_tokens``."""
    floor = max(1, -(-min_tokens // bucket))
    options, rows = [], full
    while True:
        options.append(_round_up(rows, n_devices))
        if rows <= floor:
            break
        rows = max(floor, -(-rows // 2))
    return tuple(sorted(set(options), reverse=True))


def _round_up(value: int, multiple: int) -> int:
    return -(-value // multiple) * multiple


def _special_tokens(tokenizer) -> tuple[list[int], list[int]]:
    """The ids the tokenizer puts before and after a single text (``<s>`` and ``</s>`` for XLM-R)."""
    probe = "a"
    with_special = tokenizer(probe, add_special_tokens=True)["input_ids"]
    plain = tokenizer(probe, add_special_tokens=False)["input_ids"]
    for start in range(len(with_special) - len(plain) + 1):
        if with_special[start : start + len(plain)] == plain:
            return with_special[:start], with_special[start + len(plain) :]
    raise ValueError("cannot locate the special tokens this tokenizer adds around a text")


def _tokenize_plain(tokenizer, texts: list[str]) -> list[list[int]]:
    """Token ids without special tokens or truncation (for chunking long texts).

    Through the tokenizer's own ``__call__`` (it resets truncation state left by earlier calls),
    with its "sequence longer than the maximum" warning silenced: chunking is the point here.
    """
    from transformers.utils import logging as hf_logging

    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        return tokenizer(texts, add_special_tokens=False, truncation=False)["input_ids"]
    finally:
        hf_logging.set_verbosity(verbosity)
