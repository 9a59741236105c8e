"""Numerical parity of the NNX model with transformers' XLMRobertaModel + the torch reference heads."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from conftest import spread_heads, tiny_model_config
from flax import nnx

from autext_jax.config import ModelConfig
from autext_jax.convert import to_state_dict
from autext_jax.model import (
    abstract_model,
    count_params,
    create_model,
    position_ids,
    segment_positions,
    stack_layers,
)
from autext_jax.scores import scores_from_logits
from tests.helpers.reference_torch import reference_from_model_config

PROB_TOL = 5e-7  # measured worst 1.8e-7 (4 seeds × 4 configs)
HIDDEN_TOL = 5e-6  # hidden states and logits; measured worst 2.9e-6


def _batch(lengths: list[int], vocab: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Right-padded ``<s> … </s>`` rows of the given lengths with random real tokens."""
    rng = np.random.default_rng(seed)
    width = max(lengths)
    ids = np.full((len(lengths), width), 1, dtype=np.int32)
    mask = np.zeros_like(ids)
    for row, n in enumerate(lengths):
        ids[row, :n] = rng.integers(4, vocab, size=n)
        ids[row, 0], ids[row, n - 1] = 0, 2
        mask[row, :n] = 1
    return ids, mask


def _pair(cfg: ModelConfig, seed: int = 0):
    """A random NNX model and its torch twin loaded with ``strict=True`` from ``to_state_dict``."""
    # Heads with large weights: logits of several units, so probabilities spread over (0, 1)
    # and the probability tolerance is not met merely by sigmoid(≈0) = 0.5.
    model = spread_heads(create_model(cfg, seed=seed), seed=seed)
    model.eval()
    reference = reference_from_model_config(cfg)
    reference.load_state_dict({k: torch.from_numpy(v) for k, v in to_state_dict(model).items()}, strict=True)
    return model, reference


@nnx.jit
def _forward(model, ids, mask):
    """Hidden states and logits in one compiled program (eager dispatch compiles hundreds of ops)."""
    return model.encoder(ids, mask), model(ids, mask)


def _compare(model, reference, ids: np.ndarray, mask: np.ndarray, threshold: float) -> None:
    with torch.no_grad():
        batch = {"input_ids": torch.from_numpy(ids).long(), "attention_mask": torch.from_numpy(mask).long()}
        want = reference.logits(batch)
        want_public = reference(batch)
    hidden, logits = _forward(model, ids, mask)
    hidden = np.asarray(hidden)
    real = mask.astype(bool)
    np.testing.assert_allclose(hidden[real], want["hidden"].numpy()[real], atol=HIDDEN_TOL, rtol=0)
    got = scores_from_logits(np.asarray(logits["bot"]), np.asarray(logits["english"]), threshold)
    for name in ("bot_prob", "english_prob"):
        np.testing.assert_allclose(got[name], want_public[name].numpy(), atol=PROB_TOL, rtol=0)
    np.testing.assert_array_equal(got["is_bot"], want_public["is_bot"].numpy())
    assert np.abs(np.asarray(logits["bot"])).max() > 0.2  # the check above is not vacuous
    # The logits themselves, so a saturated sigmoid cannot hide a head mismatch.
    np.testing.assert_allclose(np.asarray(logits["bot"]), want["bot"].numpy(), atol=HIDDEN_TOL, rtol=0)
    np.testing.assert_allclose(
        np.asarray(logits["english"]), want["english"].numpy(), atol=HIDDEN_TOL, rtol=0
    )


@pytest.mark.parametrize(("pooling", "activation"), [("cls", "relu"), ("mean", "gelu"), ("pooler", "tanh")])
def test_mixed_length_padded_batch_matches_torch(pooling: str, activation: str) -> None:
    cfg = tiny_model_config(pooling=pooling, head_activation=activation)
    model, reference = _pair(cfg, seed=1)
    ids, mask = _batch([5, 17, 9, 2], cfg.encoder.vocab_size)
    _compare(model, reference, ids, mask, cfg.threshold)


def test_single_text_and_512_token_text_match_torch() -> None:
    cfg = tiny_model_config()
    model, reference = _pair(cfg, seed=2)
    for lengths in ([11], [cfg.encoder.max_tokens]):
        ids, mask = _batch(lengths, cfg.encoder.vocab_size, seed=len(lengths))
        assert ids.shape[1] == lengths[0]
        _compare(model, reference, ids, mask, cfg.threshold)
    assert cfg.encoder.max_tokens == 512


def test_padding_does_not_change_a_row() -> None:
    # Same shapes as the parity tests above, so eager mode reuses their compiled ops.
    cfg = tiny_model_config(pooling="mean")
    model = create_model(cfg, seed=3)
    model.eval()
    ids, mask = _batch([11, 17, 9, 2], cfg.encoder.vocab_size)
    together = _forward(model, ids, mask)[1]["bot"]
    alone = _forward(model, ids[:1, :11], mask[:1, :11])[1]["bot"]
    np.testing.assert_allclose(np.asarray(together)[0], np.asarray(alone)[0], atol=1e-6)


def test_position_ids_follow_roberta_offset() -> None:
    mask = np.array([[1, 1, 1, 0], [1, 1, 0, 0]], dtype=np.int32)
    np.testing.assert_array_equal(np.asarray(position_ids(mask, 1)), [[2, 3, 4, 1], [2, 3, 1, 1]])


def test_full_size_parameter_count_without_allocating() -> None:
    cfg = ModelConfig()
    model = abstract_model(cfg)
    heads = 2 * (768 * 64 + 64 + 64 + 1)
    assert count_params(model) == 278_043_648 + heads
    leaves = jax.tree.leaves(nnx.state(model, nnx.Param))
    assert all(isinstance(leaf, jax.ShapeDtypeStruct) for leaf in leaves)


def test_every_parameter_has_logical_axes_of_its_rank() -> None:
    model = abstract_model(tiny_model_config())
    for path, variable in nnx.to_flat_state(nnx.state(model, nnx.Param)):
        axes = variable.get_metadata().get("logical_axes")
        assert axes is not None and len(axes) == len(variable.get_value().shape), path


def test_fused_attention_matches_explicit_softmax() -> None:
    """``jax.nn.dot_product_attention`` (inference) and the explicit path (training dropout) agree."""
    cfg = tiny_model_config()
    attention = create_model(cfg, seed=4).encoder.layers[0].attention
    attention.eval()
    rng = np.random.default_rng(4)
    q, k, v = (jnp.asarray(rng.normal(size=(2, 9, 4, 8)), jnp.float32) for _ in range(3))
    mask = jnp.asarray(rng.random((2, 1, 9, 9)) > 0.3) | jnp.eye(9, dtype=bool)
    fused = jax.nn.dot_product_attention(q, k, v, mask=mask)
    explicit = attention._attention_with_dropout(q, k, v, mask)
    np.testing.assert_allclose(np.asarray(fused), np.asarray(explicit), atol=1e-6, rtol=0)


@pytest.mark.parametrize("pooling", ["cls", "mean", "pooler"])
def test_packed_scanned_forward_equals_one_text_per_row(pooling: str) -> None:
    """Texts packed in one row, through the scanned layer stack, score as each alone (1e-6)."""
    cfg = tiny_model_config(pooling=pooling)
    model = create_model(cfg, seed=6)
    model.eval()
    lengths = [5, 17, 2, 9]
    ids, mask = _batch(lengths, cfg.encoder.vocab_size, seed=6)
    alone = _forward(model, ids, mask)[1]
    row = np.concatenate([ids[i, :n] for i, n in enumerate(lengths)] + [np.ones(3, np.int32)])[None]
    segments = np.concatenate([np.full(n, i + 1) for i, n in enumerate(lengths)] + [np.zeros(3)])[None]
    starts = np.cumsum([0] + lengths[:-1])[None].astype(np.int32)
    packed = nnx.jit(lambda m, *a: m.packed(*a, stack_layers(m.encoder.layers)))(
        model, jnp.asarray(row, jnp.int32), jnp.asarray(segments, jnp.int32), jnp.asarray(starts)
    )
    looped = nnx.jit(lambda m, *a: m.packed(*a))(
        model, jnp.asarray(row, jnp.int32), jnp.asarray(segments, jnp.int32), jnp.asarray(starts)
    )
    for name in ("bot", "english"):
        np.testing.assert_allclose(np.asarray(packed[name])[0], np.asarray(alone[name]), atol=1e-6, rtol=0)
        np.testing.assert_allclose(np.asarray(looped[name]), np.asarray(packed[name]), atol=1e-6, rtol=0)


def test_segment_positions_restart_per_text() -> None:
    segments = np.array([[1, 1, 1, 2, 2, 3, 0, 0]], dtype=np.int32)
    np.testing.assert_array_equal(np.asarray(segment_positions(segments, 1)), [[2, 3, 4, 2, 3, 2, 1, 1]])
