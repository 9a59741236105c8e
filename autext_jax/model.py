"""Flax NNX model: the XLM-RoBERTa encoder and the two task heads. The model returns logits.

Every parameter carries ``logical_axes`` metadata (``vocab``, ``embed``, ``heads``, ``mlp``,
``norm``, ``head_mlp``, ...); ``sharding.py`` maps those names to mesh axes with one rules table.
Linear kernels are stored ``(in, out)`` as in Flax; ``convert.py`` owns the transpose from PyTorch.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
from flax import nnx

from autext_jax.config import EncoderConfig, ModelConfig

Array = jax.Array

_INIT_STD = 0.02  # XLM-R's initializer_range


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

    def __call__(self, input_ids: Array, attention_mask: Array) -> Array:
        positions = position_ids(attention_mask, self.cfg.pad_token_id)
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

    def __call__(self, x: Array, attention_bias: Array) -> Array:
        batch, length, _ = x.shape

        def split(t: Array) -> Array:
            return t.reshape(batch, length, self.num_heads, self.head_dim)

        q, k, v = split(self.query(x)), split(self.key(x)), split(self.value(x))
        scores = jnp.einsum("bqhd,bkhd->bhqk", q, k) / jnp.sqrt(self.head_dim).astype(q.dtype)
        # Softmax in fp32 even for bf16 compute: padding biases are large negatives.
        weights = jax.nn.softmax(scores.astype(jnp.float32) + attention_bias, axis=-1).astype(v.dtype)
        weights = self.dropout(weights)
        context = jnp.einsum("bhqk,bkhd->bqhd", weights, v).reshape(batch, length, -1)
        return self.output(context)


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

    def __call__(self, x: Array, attention_bias: Array) -> Array:
        x = self.attention_norm(x + self.dropout(self.attention(x, attention_bias)))
        h = self.output(self.act(self.intermediate(x)))
        return self.output_norm(x + self.dropout(h))


class Pooler(nnx.Module):
    """BERT pooler: tanh(Linear(hidden of the first token))."""

    def __init__(self, hidden_size: int, *, dtype=None, rngs: nnx.Rngs):
        self.dense = _dense(hidden_size, hidden_size, ("embed", "embed_out"), dtype, rngs)

    def __call__(self, hidden: Array) -> Array:
        return jnp.tanh(self.dense(hidden[:, 0]))


class Encoder(nnx.Module):
    """XLM-RoBERTa: embeddings, ``num_layers`` blocks, optional pooler."""

    def __init__(self, cfg: EncoderConfig, *, dtype=None, rngs: nnx.Rngs):
        self.cfg = cfg
        self.embeddings = Embeddings(cfg, dtype=dtype, rngs=rngs)
        self.layers = nnx.List([Layer(cfg, dtype=dtype, rngs=rngs) for _ in range(cfg.num_layers)])
        self.pooler = Pooler(cfg.hidden_size, dtype=dtype, rngs=rngs) if cfg.use_pooler else None

    def __call__(self, input_ids: Array, attention_mask: Array) -> Array:
        """Final hidden states ``(batch, length, hidden)``."""
        x = self.embeddings(input_ids, attention_mask)
        # Additive bias, broadcast over heads and queries: 0 for real keys, dtype-min for padding (as HF).
        bias = jnp.where(attention_mask[:, None, None, :] > 0, 0.0, jnp.finfo(jnp.float32).min)
        for layer in self.layers:
            x = layer(x, bias)
        return x


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
        if self.cfg.pooling == "cls":
            return hidden[:, 0]
        if self.cfg.pooling == "pooler":
            return self.encoder.pooler(hidden)
        mask = attention_mask[..., None].astype(hidden.dtype)
        return (hidden * mask).sum(axis=1) / jnp.maximum(mask.sum(axis=1), 1)

    def __call__(self, input_ids: Array, attention_mask: Array) -> dict[str, Array]:
        hidden = self.encoder(input_ids, attention_mask)
        pooled = self.pool(hidden, attention_mask)
        return {"bot": self.bot_head(pooled), "english": self.lang_head(pooled)}


def create_model(cfg: ModelConfig, *, seed: int = 0, dtype=None) -> MultiTaskModel:
    """A randomly initialised model (for training from scratch and tests). ``dtype`` is the compute dtype."""
    return MultiTaskModel(cfg, dtype=dtype, rngs=nnx.Rngs(params=seed, dropout=seed + 1))


def abstract_model(cfg: ModelConfig, *, dtype=None) -> MultiTaskModel:
    """The model's structure with ``ShapeDtypeStruct`` leaves: no memory is allocated."""
    return nnx.eval_shape(lambda: create_model(cfg, dtype=dtype))


def count_params(model: nnx.Module) -> int:
    return sum(int(x.size) for x in jax.tree.leaves(nnx.state(model, nnx.Param)))
