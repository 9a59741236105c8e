"""Flax NNX model: the XLM-RoBERTa encoder and the two task heads. The model returns logits.

Every parameter carries ``logical_axes`` metadata (``vocab``, ``embed``, ``heads``, ``mlp``,
``norm``, ``head_mlp``, ...); ``sharding.py`` maps those names to mesh axes with one rules table.
Linear kernels are stored ``(in, out)`` as in Flax; ``convert.py`` owns the transpose from PyTorch.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from autext_jax.config import EncoderConfig, ModelConfig, check_dtype

Array = jax.Array
_log = logging.getLogger(__name__)

_INIT_STD = 0.02  # XLM-R's initializer_range


def compute_dtype(name: str) -> jnp.dtype:
    """The JAX dtype a compute dtype name means (``config.COMPUTE_DTYPES``; parameters stay float32)."""
    return jnp.dtype(check_dtype(name))


def _normal(axes: tuple[str | None, ...]) -> Callable:
    return nnx.with_metadata(nnx.initializers.normal(_INIT_STD), logical_axes=axes)


def _zeros(axes: tuple[str | None, ...]) -> Callable:
    return nnx.with_metadata(nnx.initializers.zeros_init(), logical_axes=axes)


def _dense(n_in: int, n_out: int, axes: tuple[str, str], dtype, rngs: nnx.Rngs) -> nnx.Linear:
    return nnx.Linear(
        n_in,
        n_out,
        dtype=dtype,
        kernel_init=_normal(axes),
        bias_init=_zeros((axes[1],)),
        rngs=rngs,
    )


def _layer_norm(size: int, eps: float, dtype, rngs: nnx.Rngs) -> nnx.LayerNorm:
    return nnx.LayerNorm(
        size,
        epsilon=eps,
        dtype=dtype,
        use_fast_variance=False,
        scale_metadata={"logical_axes": ("norm",)},
        bias_metadata={"logical_axes": ("norm",)},
        rngs=rngs,
    )


def _activation(name: str) -> Callable[[Array], Array]:
    return {
        "gelu": lambda x: jax.nn.gelu(x, approximate=False),
        "gelu_new": lambda x: jax.nn.gelu(x, approximate=True),
        "gelu_pytorch_tanh": lambda x: jax.nn.gelu(x, approximate=True),
        "relu": jax.nn.relu,
        "tanh": jnp.tanh,
    }[name]


def position_ids(attention_mask: Array, pad_token_id: int) -> Array:
    """RoBERTa positions: real tokens count from ``pad_token_id + 1``; padding sits at ``pad_token_id``.

    Computed from the mask (not from the ids) so a chunked window or a left-padded batch still
    numbers its real tokens from the start.
    """
    mask = attention_mask.astype(jnp.int32)
    return jnp.cumsum(mask, axis=1) * mask + pad_token_id


def segment_positions(segments: Array, pad_token_id: int) -> Array:
    """Positions of a packed row: every text (a run of equal segment ids > 0) counts from the start.

    ``segments[b, t]`` is 0 for padding and ``1, 2, ...`` for the texts packed into row ``b``.
    """
    index = jnp.arange(segments.shape[1], dtype=jnp.int32)[None, :]
    previous = jnp.pad(segments[:, :-1], ((0, 0), (1, 0)), constant_values=-1)
    start = jax.lax.cummax(jnp.where(segments != previous, index, 0), axis=1)
    real = (segments > 0).astype(jnp.int32)
    return (index - start + 1) * real + pad_token_id


def attention_mask_of(attention_mask: Array | None, segments: Array | None) -> Array:
    """Boolean mask broadcastable to ``(batch, heads, query, key)``: which keys each query sees.

    Unpacked rows: every real key (as HF). Packed rows: only the keys of the query's own text.
    """
    if segments is None:
        return (attention_mask > 0)[:, None, None, :]
    same = segments[:, :, None] == segments[:, None, :]
    return (same & (segments[:, None, :] > 0))[:, None]


class Embeddings(nnx.Module):
    def __init__(self, cfg: EncoderConfig, *, dtype=None, rngs: nnx.Rngs):
        self.cfg = cfg
        emb = dict(dtype=dtype, rngs=rngs)
        self.word = nnx.Embed(
            cfg.vocab_size, cfg.hidden_size, embedding_init=_normal(("vocab", "embed")), **emb
        )
        self.position = nnx.Embed(
            cfg.max_position_embeddings,
            cfg.hidden_size,
            embedding_init=_normal((None, "embed")),
            **emb,
        )
        self.token_type = nnx.Embed(
            cfg.type_vocab_size, cfg.hidden_size, embedding_init=_normal((None, "embed")), **emb
        )
        self.norm = _layer_norm(cfg.hidden_size, cfg.layer_norm_eps, dtype, rngs)
        self.dropout = nnx.Dropout(cfg.hidden_dropout, rngs=rngs)

    def __call__(self, input_ids: Array, attention_mask: Array | None, segments: Array | None = None):
        """``segments`` given: packed rows (``attention_mask`` unused), positions restart per text."""
        pad = self.cfg.pad_token_id
        if segments is None:
            positions = position_ids(attention_mask, pad)
        else:
            positions = segment_positions(segments, pad)
        # Token type 0 everywhere: XLM-R has a single token-type row.
        x = self.word(input_ids) + self.position(positions) + self.token_type.embedding[...][0]
        return self.dropout(self.norm(x))


class SelfAttention(nnx.Module):
    """Multi-head self-attention plus its output projection (HF ``attention.self`` + ``.output.dense``)."""

    def __init__(self, cfg: EncoderConfig, *, dtype=None, rngs: nnx.Rngs):
        self.num_heads = cfg.num_heads
        self.head_dim = cfg.head_dim
        h = cfg.hidden_size
        self.query = _dense(h, h, ("embed", "heads"), dtype, rngs)
        self.key = _dense(h, h, ("embed", "heads"), dtype, rngs)
        self.value = _dense(h, h, ("embed", "heads"), dtype, rngs)
        self.output = _dense(h, h, ("heads", "embed"), dtype, rngs)
        self.dropout = nnx.Dropout(cfg.attention_dropout, rngs=rngs)

    def __call__(self, x: Array, mask: Array) -> Array:
        """``mask``: boolean, broadcastable to ``(batch, heads, query, key)`` (``attention_mask_of``)."""
        batch, length, _ = x.shape

        def split(t: Array) -> Array:
            return t.reshape(batch, length, self.num_heads, self.head_dim)

        q, k, v = split(self.query(x)), split(self.key(x)), split(self.value(x))
        if self.dropout.rate > 0 and not self.dropout.deterministic:
            context = self._attention_with_dropout(q, k, v, mask)
        else:
            context = fused_attention(q, k, v, mask)
        return self.output(context.reshape(batch, length, -1))

    def _attention_with_dropout(self, q: Array, k: Array, v: Array, mask: Array) -> Array:
        """Training: dropout on the attention weights (as HF), which the fused kernel cannot do."""
        scores = jnp.einsum("bqhd,bkhd->bhqk", q, k, preferred_element_type=jnp.float32)
        scores = jnp.where(mask, scores / jnp.sqrt(self.head_dim), jnp.finfo(jnp.float32).min)
        weights = self.dropout(jax.nn.softmax(scores, axis=-1).astype(v.dtype))
        return jnp.einsum("bhqk,bkhd->bqhd", weights, v)


def fused_attention(q: Array, k: Array, v: Array, mask: Array) -> Array:
    """``jax.nn.dot_product_attention``: cuDNN flash attention on GPU for bf16/fp16, XLA otherwise
    (also where cuDNN refuses the shape); logits and softmax in fp32 either way."""
    if jax.default_backend() == "gpu" and q.dtype in (jnp.bfloat16, jnp.float16):
        try:
            return jax.nn.dot_product_attention(q, k, v, mask=mask, implementation="cudnn")
        except (ValueError, NotImplementedError, RuntimeError, TypeError) as err:
            _log.debug("cuDNN attention unavailable (%s); using XLA's", err)
    return jax.nn.dot_product_attention(q, k, v, mask=mask)


class Layer(nnx.Module):
    """One post-LayerNorm transformer block."""

    def __init__(self, cfg: EncoderConfig, *, dtype=None, rngs: nnx.Rngs):
        self.attention = SelfAttention(cfg, dtype=dtype, rngs=rngs)
        self.attention_norm = _layer_norm(cfg.hidden_size, cfg.layer_norm_eps, dtype, rngs)
        self.intermediate = _dense(cfg.hidden_size, cfg.intermediate_size, ("embed", "mlp"), dtype, rngs)
        self.output = _dense(cfg.intermediate_size, cfg.hidden_size, ("mlp", "embed"), dtype, rngs)
        self.output_norm = _layer_norm(cfg.hidden_size, cfg.layer_norm_eps, dtype, rngs)
        self.dropout = nnx.Dropout(cfg.hidden_dropout, rngs=rngs)
        self.act = _activation(cfg.hidden_act)

    def __call__(self, x: Array, mask: Array) -> Array:
        x = self.attention_norm(x + self.dropout(self.attention(x, mask)))
        h = self.output(self.act(self.intermediate(x)))
        return self.output_norm(x + self.dropout(h))


class Pooler(nnx.Module):
    """BERT pooler: tanh(Linear(hidden of the first token)); takes the first tokens' hidden states."""

    def __init__(self, hidden_size: int, *, dtype=None, rngs: nnx.Rngs):
        self.dense = _dense(hidden_size, hidden_size, ("embed", "embed_out"), dtype, rngs)

    def __call__(self, first: Array) -> Array:
        return jnp.tanh(self.dense(first))


class Encoder(nnx.Module):
    """XLM-RoBERTa: embeddings, ``num_layers`` blocks, optional pooler."""

    def __init__(self, cfg: EncoderConfig, *, dtype=None, rngs: nnx.Rngs):
        self.cfg = cfg
        self.embeddings = Embeddings(cfg, dtype=dtype, rngs=rngs)
        self.layers = nnx.List([Layer(cfg, dtype=dtype, rngs=rngs) for _ in range(cfg.num_layers)])
        self.pooler = Pooler(cfg.hidden_size, dtype=dtype, rngs=rngs) if cfg.use_pooler else None

    def __call__(
        self,
        input_ids: Array,
        attention_mask: Array | None,
        segments: Array | None = None,
        stacked_layers: nnx.State | None = None,
    ) -> Array:
        """Final hidden states ``(batch, length, hidden)``.

        ``segments`` (instead of ``attention_mask``): packed rows, see ``segment_positions``.
        ``stacked_layers`` (from ``stack_layers``): run the blocks as one ``lax.scan`` over that
        stack, so XLA compiles one block instead of ``num_layers`` (inference's compile time); the
        per-layer modules (the checkpoint layout, training) stay as they are.
        """
        x = self.embeddings(input_ids, attention_mask, segments)
        mask = attention_mask_of(attention_mask, segments)
        if stacked_layers is not None:
            return scan_layers(self.layers[0], stacked_layers, x, mask)
        for layer in self.layers:
            x = layer(x, mask)
        return x


def stack_layers(layers: Sequence[Layer]) -> nnx.State:
    """The blocks' parameters stacked along a new leading axis (one array per parameter kind)."""
    states = [nnx.state(layer, nnx.Param) for layer in layers]
    return jax.tree.map(lambda *xs: jnp.stack(xs), *states)


def scan_layers(template: Layer, stacked: nnx.State, x: Array, mask: Array) -> Array:
    """Apply the stacked blocks in order with ``template``'s structure (and its non-parameter state)."""
    graphdef, _, rest = nnx.split(template, nnx.Param, ...)

    def block(h: Array, params: nnx.State) -> tuple[Array, None]:
        return nnx.merge(graphdef, params, rest)(h, mask), None

    return jax.lax.scan(block, x, stacked)[0]


class TaskHead(nnx.Module):
    """dropout → Linear(H→hidden_nodes) → activation → dropout → Linear(hidden_nodes→1)."""

    def __init__(self, cfg: ModelConfig, *, dtype=None, rngs: nnx.Rngs):
        self.dropout = nnx.Dropout(cfg.head_dropout, rngs=rngs)
        self.hidden = _dense(cfg.encoder.hidden_size, cfg.hidden_nodes, ("embed", "head_mlp"), dtype, rngs)
        self.out = _dense(cfg.hidden_nodes, 1, ("head_mlp", None), dtype, rngs)
        self.act = _activation(cfg.head_activation)

    def __call__(self, pooled: Array) -> Array:
        h = self.act(self.hidden(self.dropout(pooled)))
        return self.out(self.dropout(h))[..., 0].astype(jnp.float32)


class MultiTaskModel(nnx.Module):
    """Encoder + bot head + language head; ``__call__`` returns fp32 logits ``{"bot", "english"}``."""

    def __init__(self, cfg: ModelConfig, *, dtype=None, rngs: nnx.Rngs):
        self.cfg = cfg
        self.encoder = Encoder(cfg.encoder, dtype=dtype, rngs=rngs)
        self.bot_head = TaskHead(cfg, dtype=dtype, rngs=rngs)
        self.lang_head = TaskHead(cfg, dtype=dtype, rngs=rngs)

    def pool(self, hidden: Array, attention_mask: Array) -> Array:
        """``(batch, hidden)``: one vector per row (CLS, pooler or masked mean)."""
        return self._pool(hidden, hidden[:, :1], attention_mask[:, None, :])[:, 0]

    def _pool(self, hidden: Array, first: Array, members: Array) -> Array:
        """``members (batch, texts, length)`` marks each text's tokens; ``first (batch, texts, hidden)``."""
        if self.cfg.pooling == "cls":
            return first
        if self.cfg.pooling == "pooler":
            return self.encoder.pooler(first)
        weights = members.astype(hidden.dtype)
        total = jnp.einsum("bkl,blh->bkh", weights, hidden)
        return total / jnp.maximum(weights.sum(axis=-1, keepdims=True), 1)

    def __call__(self, input_ids: Array, attention_mask: Array) -> dict[str, Array]:
        hidden = self.encoder(input_ids, attention_mask)
        pooled = self.pool(hidden, attention_mask)
        return {"bot": self.bot_head(pooled), "english": self.lang_head(pooled)}

    def packed(
        self, input_ids: Array, segments: Array, starts: Array, stacked_layers: nnx.State | None = None
    ) -> dict[str, Array]:
        """fp32 logits ``(batch, texts)`` of packed rows (several texts per row, inference).

        ``segments (batch, length)``: 0 padding, ``k + 1`` for the row's text ``k``; ``starts
        (batch, texts)``: the index of text ``k``'s first token (``<s>``). Each text attends only to
        itself, counts positions from its own start and is pooled alone: its logits equal those of
        the text scored in a row of its own. Slots beyond a row's last text give unused values.
        """
        hidden = self.encoder(input_ids, None, segments, stacked_layers)
        first = jnp.take_along_axis(hidden, starts[..., None], axis=1)
        slots = jnp.arange(1, starts.shape[1] + 1, dtype=segments.dtype)
        pooled = self._pool(hidden, first, segments[:, None, :] == slots[None, :, None])
        return {"bot": self.bot_head(pooled), "english": self.lang_head(pooled)}


def create_model(cfg: ModelConfig, *, seed: int = 0, dtype=None) -> MultiTaskModel:
    """A randomly initialised model (for training from scratch and tests). ``dtype`` is the compute dtype."""
    return MultiTaskModel(cfg, dtype=dtype, rngs=nnx.Rngs(params=seed, dropout=seed + 1))


def abstract_model(cfg: ModelConfig, *, dtype=None) -> MultiTaskModel:
    """The model's structure with ``ShapeDtypeStruct`` leaves: no memory is allocated."""
    return nnx.eval_shape(lambda: create_model(cfg, dtype=dtype))


def count_params(model: nnx.Module) -> int:
    return sum(int(x.size) for x in jax.tree.leaves(nnx.state(model, nnx.Param)))
