"""The inference engine: encode (``data/encoding.py``) → pack → jitted forward → input order, streaming.

Why it is fast: the input is read in blocks of at most ``window`` texts; each block's token
windows are packed several to a row (``batching.ShapePolicy``), each text attending only to itself
with its own positions and pooling (``MultiTaskModel.packed``), so almost no compute goes to
padding. The shapes are a handful known in advance (row lengths × row counts), whatever the input
stream, and the layer stack runs as one ``lax.scan`` (``model.stack_layers``), so each shape
compiles one transformer block, not ``num_layers``. ``pack=False`` gives plain length buckets,
one text per row (the same numbers; for comparison).

Why memory stays flat: at most ``window`` inputs are in flight (read but not yet emitted), and a
long text is only tokenized as far as it can be scored (``data/encoding.py``).

Long texts: ``long="truncate"`` keeps the first ``max_length`` tokens (as the original model card);
``long="chunk"`` scores overlapping windows of ``max_length`` tokens and averages the windows'
logits weighted by their token counts; the probability is the sigmoid of that mean.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import jax
import numpy as np
from flax import nnx

from autext_jax.compile_cache import counting_hits
from autext_jax.data import batching
from autext_jax.data.encoding import LONG_MODES, EncodedText, TextEncoder
from autext_jax.errors import UsageError
from autext_jax.model import stack_layers

log = logging.getLogger(__name__)



class EngineOptionError(UsageError, ValueError):
    """A scoring option out of range for the model (max length, stride, batch size): exit code 2."""


@dataclass(frozen=True)
class EngineOptions:
    """How the engine cuts, packs and batches texts (one object from the CLI/API down to here).

    ``batch_size``: rows of ``max_length`` tokens per batch (the token budget of every batch);
    ``None`` picks 2048 tokens on CPU (keeps its cores busy, little tail waste) and 32 rows on
    accelerators. ``pack``: several texts per row of ``pack_length`` tokens (longer ones in rows of
    ``max_length``); off: one text per row in length buckets. ``window``: inputs in flight.
    ``normalize``: undo cheap evasions before tokenizing (``normalize.py``); off scores the raw text,
    as the published model does.
    """

    max_length: int = 512
    batch_size: int | None = None
    long: str = "truncate"
    stride: int = 128
    window: int = 2048
    pack: bool = True
    pack_length: int = 256
    max_rows: int = 1024
    min_tokens: int = 256
    tokenize_chunk: int = 256
    normalize: bool = True

    def check(self, max_tokens: int) -> None:
        """Raise ``EngineOptionError`` naming the first option out of range for a model of ``max_tokens``."""
        if self.long not in LONG_MODES:
            raise EngineOptionError(f"long must be one of {LONG_MODES}, got {self.long!r}")
        if not 2 < self.max_length <= max_tokens:
            raise EngineOptionError(
                f"max_length must be in 3..{max_tokens} (the position table), got {self.max_length}"
            )
        if self.long == "chunk" and not 0 <= self.stride < self.max_length - 2:
            raise EngineOptionError(
                f"stride must be in 0..{self.max_length - 3} (max_length {self.max_length}), "
                f"got {self.stride}"
            )
        for name in ("window", "pack_length", "max_rows", "tokenize_chunk"):
            if getattr(self, name) < 1:
                raise EngineOptionError(f"{name} must be positive, got {getattr(self, name)}")
        if self.batch_size is not None and self.batch_size < 1:
            raise EngineOptionError(f"batch_size must be positive, got {self.batch_size}")


# ---- results ----------------------------------------------------------------------------------


@dataclass
class DocLogits:
    """One input's logits: the token-weighted mean over its windows (one window unless chunked).

    ``n_tokens``: the tokens the scores rest on (special tokens included; summed over windows when
    chunked). ``truncated``: the text had more tokens than ``max_length`` and only its start was scored.
    ``facts``: what encoding learnt about the text (``EncodedText.facts``), for its record.
    """

    bot: float
    english: float
    n_chunks: int
    n_tokens: int
    truncated: bool = False
    facts: Mapping[str, Any] = field(default_factory=dict)


class StopRequested(Exception):  # noqa: N818 - a request, not a failure
    """``run``'s ``stop`` callback said to stop: the block in progress is dropped, nothing half-written."""


@dataclass
class _Doc:
    tag: Any
    windows: list[np.ndarray]
    truncated: bool = False
    facts: Mapping[str, Any] = field(default_factory=dict)
    bot: float = 0.0
    english: float = 0.0
    n_tokens: int = 0

    def add(self, n_tokens: int, bot: float, english: float) -> None:
        self.bot += n_tokens * bot
        self.english += n_tokens * english
        self.n_tokens += n_tokens

    def result(self) -> DocLogits | None:
        if not self.windows:
            return None
        return DocLogits(
            self.bot / self.n_tokens, self.english / self.n_tokens, len(self.windows), self.n_tokens,
            self.truncated, self.facts,
        )


@dataclass
class EngineStats:
    """What the engine did: inputs, windows, batches, real vs computed tokens, compilations."""

    texts: int = 0
    windows: int = 0
    batches: int = 0
    real_tokens: int = 0
    padded_tokens: int = 0
    attention_real: int = 0  # sum of n² over windows: the attention work the texts need
    attention_computed: int = 0  # sum of length² over rows: what a packed row computes
    compilations: int = 0
    cache_hits: int = 0
    shapes: Counter[tuple[int, int]] = field(default_factory=Counter)  # (rows, length) -> batches

    @property
    def padding_fraction(self) -> float:
        return 1.0 - self.real_tokens / self.padded_tokens if self.padded_tokens else 0.0

    @property
    def attention_overhead(self) -> float:
        """Computed ÷ needed attention score entries (1.0: none wasted)."""
        return self.attention_computed / self.attention_real if self.attention_real else 1.0


# ---- the engine -------------------------------------------------------------------------------


class InferenceEngine:
    """Scores streams of texts with an NNX ``MultiTaskModel`` and its Hugging Face tokenizer.

    With several devices the batch dimension is sharded over a 1-D mesh and row counts are
    rounded to the device count.
    """

    def __init__(
        self,
        model: nnx.Module,
        tokenizer,
        options: EngineOptions | None = None,
        *,
        devices: Sequence[jax.Device] | None = None,
    ):
        options = options or EngineOptions()
        options.check(model.cfg.encoder.max_tokens)
        self.options = options
        self.devices = list(devices) if devices is not None else jax.devices()
        batch_size = options.batch_size
        if batch_size is None:
            on_cpu = self.devices[0].platform == "cpu"
            batch_size = max(1, 2048 // options.max_length) if on_cpu else 32
        self.policy = batching.ShapePolicy.build(
            options.max_length,
            batch_size * options.max_length,
            pack_length=options.pack_length if options.pack else None,
            max_rows=options.max_rows,
            row_multiple=len(self.devices),
            min_tokens=options.min_tokens,
        )
        self.tokenizer = tokenizer
        self.encoder = TextEncoder(
            tokenizer, options.max_length, options.long, options.stride, normalize=options.normalize
        )
        pad_id = tokenizer.pad_token_id
        self.pad_id = model.cfg.encoder.pad_token_id if pad_id is None else pad_id
        self.stats = EngineStats()
        self._place(model)

    def _place(self, model: nnx.Module) -> None:
        """Device placement, the stacked layers, and this engine's own jitted forward."""
        evaluating = nnx.clone(model)  # shares the arrays; only the copy's dropout is switched off
        evaluating.eval()
        graphdef, state = nnx.split(evaluating)
        stacked = stack_layers(evaluating.encoder.layers)
        if len(self.devices) > 1:
            mesh = jax.sharding.Mesh(np.array(self.devices), ("batch",))
            self._data_sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("batch"))
            replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
        else:
            self._data_sharding = replicated = self.devices[0]
        self._state, self._stacked = jax.device_put((state, stacked), replicated)
        stats = self.stats

        def packed(state, stacked, input_ids, segments, starts):
            stats.compilations += 1  # Python side effect: runs only while tracing a new shape
            return nnx.merge(graphdef, state).packed(input_ids, segments, starts, stacked)

        self._packed = jax.jit(packed)

    # -- public -----------------------------------------------------------------------------

    @property
    def max_length(self) -> int:
        return self.options.max_length

    def logits(self, texts: Iterable[str]) -> dict[str, np.ndarray]:
        """``{"bot", "english"}`` float32 logits, ``"n_chunks"`` int32, one entry per text in input order."""
        docs = [doc for _, doc in self.run((i, t) for i, t in enumerate(texts))]
        return {
            "bot": np.array([d.bot for d in docs], dtype=np.float32),
            "english": np.array([d.english for d in docs], dtype=np.float32),
            "n_chunks": np.array([d.n_chunks for d in docs], dtype=np.int32),
        }

    def run(
        self, items: Iterable[tuple[Any, str | None]], stop: Callable[[], bool] | None = None
    ) -> Iterator[tuple[Any, DocLogits | None]]:
        """Stream ``(tag, text)`` pairs to ``(tag, DocLogits)`` pairs in input order.

        A ``None`` text passes through as ``(tag, None)`` (the CLI uses it for skipped bad lines).
        If reading ``items`` raises, every result before the failure is yielded first, then the
        exception propagates, so a caller writing records has written all of them.

        Reading and tokenizing run in a background thread, one block ahead of the device, so the
        accelerator is not kept waiting on the host (so up to two windows of inputs are in flight).
        ``stop`` is asked between batches (and while
        waiting for input); when it returns true, ``StopRequested`` is raised and the block in
        progress is dropped.
        """
        blocks: queue.Queue = queue.Queue(maxsize=1)
        taken = threading.Semaphore(0)  # the reader starts a block only once the previous one is taken
        done = threading.Event()
        reader = threading.Thread(
            target=self._read_blocks, args=(iter(items), blocks, taken, done), daemon=True
        )
        reader.start()
        try:
            while True:
                block, error = self._next_block(blocks, stop)
                taken.release()
                if block:
                    yield from self._score_block(block, stop)
                if error is not None:
                    raise error
                if block is None:
                    return
        finally:
            done.set()

    def _next_block(self, blocks: queue.Queue, stop: Callable[[], bool] | None):
        while True:
            if stop is not None and stop():
                raise StopRequested
            try:
                return blocks.get(timeout=0.05)
            except queue.Empty:
                continue

    def _read_blocks(
        self, source: Iterator, blocks: queue.Queue, taken: threading.Semaphore, done: threading.Event
    ) -> None:
        """The reader thread: blocks of admitted (tokenized) docs; ``(None, None)`` at the end.

        At most two blocks are in flight: the one being scored and the next one, read meanwhile.
        """

        def put(entry) -> bool:
            blocks.put(entry)  # the queue is empty: the previous block was taken
            while not done.is_set():
                if taken.acquire(timeout=0.05):
                    return True
            return False

        while not done.is_set():
            block: list[_Doc] = []
            chunk: list[tuple[Any, str | None]] = []
            try:
                for item in source:
                    chunk.append(item)
                    if len(chunk) >= self.options.tokenize_chunk:
                        block += self._admit(chunk)
                        chunk = []
                    if len(block) + len(chunk) >= self.options.window:
                        break
                block += self._admit(chunk)
            except BaseException as err:  # noqa: BLE001 - handed to the consumer, raised there
                try:
                    block += self._admit(chunk)
                except Exception:  # noqa: BLE001 - the reading error is the one to report
                    pass
                put((block, err))
                return
            if not block:
                put((None, None))
                return
            if not put((block, None)):
                return

    # -- internals --------------------------------------------------------------------------

    def _admit(self, chunk: list[tuple[Any, str | None]]) -> list[_Doc]:
        encoded: Iterator[EncodedText] = iter(self.encoder.encode([t for _, t in chunk if t is not None]))
        docs = []
        for tag, text in chunk:
            if text is None:
                docs.append(_Doc(tag, []))
            else:
                one = next(encoded)
                docs.append(_Doc(tag, one.windows, one.truncated, one.facts))
        return docs

    def _score_block(
        self, docs: list[_Doc], stop: Callable[[], bool] | None = None
    ) -> Iterator[tuple[Any, DocLogits | None]]:
        owners = [(doc, w) for doc in docs for w in doc.windows]
        self.stats.texts += sum(1 for doc in docs if doc.windows)
        for batch in self.policy.plan([len(w) for _, w in owners]):
            if stop is not None and stop():
                raise StopRequested
            self._run_batch(batch, owners)
        for doc in docs:
            yield doc.tag, doc.result()

    def _run_batch(self, batch: batching.Batch, owners: list[tuple[_Doc, np.ndarray]]) -> None:
        ids = np.full((batch.n_rows, batch.length), self.pad_id, dtype=np.int32)
        segments = np.zeros((batch.n_rows, batch.length), dtype=np.int32)
        starts = np.zeros((batch.n_rows, batch.texts), dtype=np.int32)
        for r, row in enumerate(batch.rows):
            at = 0
            for k, item in enumerate(row):
                window = owners[item][1]
                ids[r, at : at + len(window)] = window
                segments[r, at : at + len(window)] = k + 1
                starts[r, k] = at
                at += len(window)
        with counting_hits() as cache:
            out = self._packed(
                self._state,
                self._stacked,
                *(jax.device_put(a, self._data_sharding) for a in (ids, segments, starts)),
            )
            bot, english = np.asarray(out["bot"]), np.asarray(out["english"])
        stats = self.stats
        stats.cache_hits += cache.hits
        stats.shapes[(batch.n_rows, batch.length)] += 1
        stats.batches += 1
        stats.padded_tokens += batch.n_rows * batch.length
        stats.attention_computed += batch.n_rows * batch.length**2
        for r, row in enumerate(batch.rows):
            for k, item in enumerate(row):
                n = len(owners[item][1])
                owners[item][0].add(n, float(bot[r, k]), float(english[r, k]))
                stats.windows += 1
                stats.real_tokens += n
                stats.attention_real += n * n
