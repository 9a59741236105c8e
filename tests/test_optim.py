"""The optimizer's schedule, decay mask, layer-wise LR and gradient accumulation, on toy parameters."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import optax
import pytest

from autext_jax.train.optim import (
    OptimizerConfig,
    OptimizerConfigError,
    build_optimizer,
    current_lr,
    decays,
    layer_depth,
    layer_lr_factors,
    lr_schedule,
)

TOY = {
    "encoder/embeddings/word/embedding": np.ones((4, 2), np.float32),
    "encoder/layers/0/attention/query/kernel": np.ones((2, 2), np.float32),
    "encoder/layers/0/attention/query/bias": np.ones((2,), np.float32),
    "encoder/layers/1/output_norm/scale": np.ones((2,), np.float32),
    "bot_head/hidden/kernel": np.ones((2, 3), np.float32),
}


def test_schedule_warms_up_linearly_then_decays_to_the_end_value():
    cfg = OptimizerConfig(learning_rate=1e-3, warmup_fraction=0.1, end_learning_rate=0.0)
    schedule = lr_schedule(cfg, 100)
    assert float(schedule(0)) == 0.0
    assert float(schedule(5)) == pytest.approx(5e-4)
    assert float(schedule(10)) == pytest.approx(1e-3)
    assert float(schedule(55)) == pytest.approx(5e-4)
    assert float(schedule(100)) == pytest.approx(0.0, abs=1e-12)
    no_warmup = lr_schedule(OptimizerConfig(learning_rate=2e-5, warmup_steps=0), 10)
    assert float(no_warmup(0)) == pytest.approx(2e-5)
    # With accumulation the schedule counts optimizer updates, not batches.
    accum = OptimizerConfig(learning_rate=1e-3, warmup_steps=2, grad_accum_steps=4)
    assert float(current_lr(accum, 40, 4)) == pytest.approx(5e-4)
    assert accum.updates_for(40) == 10 and accum.updates_for(41) == 11


def test_decay_mask_skips_biases_and_layernorm(tiny_config):
    from autext_jax.model import abstract_model
    from autext_jax.train.steps import describe_model

    layout, _ = describe_model(abstract_model(tiny_config))
    for name, axes in layout.logical_axes.items():
        if axes == ("norm",) or name.endswith("/bias"):
            assert not decays(name), name
        else:
            assert decays(name), name
    assert decays("encoder/embeddings/word/embedding")


def test_layer_depths_and_factors():
    assert layer_depth("encoder/embeddings/word/embedding", 12) == 0
    assert layer_depth("encoder/layers/0/attention/query/kernel", 12) == 1
    assert layer_depth("encoder/layers/11/output/kernel", 12) == 12
    assert layer_depth("encoder/pooler/dense/kernel", 12) == 13
    assert layer_depth("lang_head/out/bias", 12) == 13
    factors = layer_lr_factors(TOY, num_layers=2, layer_decay=0.5)
    assert factors["bot_head/hidden/kernel"] == 1.0
    assert factors["encoder/layers/1/output_norm/scale"] == 0.5
    assert factors["encoder/layers/0/attention/query/kernel"] == 0.25
    assert factors["encoder/embeddings/word/embedding"] == 0.125


def _one_update(cfg: OptimizerConfig, grads: dict, total: int = 10):
    tx = build_optimizer(cfg, TOY, num_layers=2, total_batches=total)
    params = {k: jnp.asarray(v) for k, v in TOY.items()}
    updates, _ = tx.update(grads, tx.init(params), params)
    return {k: np.asarray(v) for k, v in updates.items()}


def test_weight_decay_applies_only_to_matrices_and_embeddings():
    zeros = {k: jnp.zeros_like(v) for k, v in TOY.items()}
    cfg = OptimizerConfig(learning_rate=0.1, warmup_steps=0, weight_decay=0.5, max_grad_norm=None)
    updates = _one_update(cfg, zeros)
    np.testing.assert_allclose(updates["encoder/layers/0/attention/query/kernel"], -0.05, rtol=1e-6)
    np.testing.assert_allclose(updates["encoder/embeddings/word/embedding"], -0.05, rtol=1e-6)
    np.testing.assert_array_equal(updates["encoder/layers/0/attention/query/bias"], 0.0)
    np.testing.assert_array_equal(updates["encoder/layers/1/output_norm/scale"], 0.0)


def test_layer_wise_decay_scales_updates_and_clipping_bounds_the_norm():
    grads = {k: jnp.full(v.shape, 3.0) for k, v in TOY.items()}
    base = OptimizerConfig(learning_rate=0.1, warmup_steps=0, weight_decay=0.0, max_grad_norm=None)
    plain = _one_update(base, grads)
    # Adam's first step is lr·sign(g): every entry moves by the base LR.
    np.testing.assert_allclose(plain["bot_head/hidden/kernel"], -0.1, rtol=1e-5)
    decayed = _one_update(OptimizerConfig(**{**base.__dict__, "layer_decay": 0.5}), grads)
    factors = layer_lr_factors(TOY, 2, 0.5)
    for name in TOY:
        np.testing.assert_allclose(decayed[name], plain[name] * factors[name], rtol=1e-5)
    clip = optax.clip_by_global_norm(1.0)
    clipped, _ = clip.update(grads, clip.init(grads))
    assert float(optax.tree.norm(clipped)) == pytest.approx(1.0, rel=1e-5)


def test_accumulation_averages_micro_batches():
    rng = np.random.default_rng(0)
    g1 = {k: jnp.asarray(rng.normal(size=v.shape), jnp.float32) for k, v in TOY.items()}
    g2 = {k: jnp.asarray(rng.normal(size=v.shape), jnp.float32) for k, v in TOY.items()}
    cfg = OptimizerConfig(learning_rate=0.01, warmup_steps=0, grad_accum_steps=2, max_grad_norm=1.0)
    tx = build_optimizer(cfg, TOY, num_layers=2, total_batches=20)
    params = {k: jnp.asarray(v) for k, v in TOY.items()}
    state = tx.init(params)
    first, state = tx.update(g1, state, params)
    assert all(float(jnp.abs(u).max()) == 0.0 for u in first.values())  # nothing applied mid-accumulation
    second, _ = tx.update(g2, state, params)
    single = OptimizerConfig(**{**cfg.__dict__, "grad_accum_steps": 1})
    mean = {k: (g1[k] + g2[k]) / 2 for k in TOY}
    tx1 = build_optimizer(single, TOY, num_layers=2, total_batches=10)
    expected, _ = tx1.update(mean, tx1.init(params), params)
    for k in TOY:
        np.testing.assert_allclose(np.asarray(second[k]), np.asarray(expected[k]), rtol=1e-5, atol=1e-8)


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"learning_rate": 0.0}, "learning_rate"),
        ({"warmup_fraction": 1.5}, "warmup_fraction"),
        ({"layer_decay": 0.0}, "layer_decay"),
        ({"grad_accum_steps": 0}, "grad_accum_steps"),
        ({"weight_decay": -1.0}, "weight_decay"),
        ({"warmup_steps": -2}, "warmup_steps"),
    ],
)
def test_bad_optimizer_settings_are_rejected(changes, message):
    with pytest.raises(OptimizerConfigError, match=message):
        OptimizerConfig(**changes)


@pytest.mark.parametrize("accum", [1, 3])
def test_optimizer_state_takes_the_parameter_shardings(tiny_config, accum):
    """Moments (and accumulated gradients) mirror a parameter and share its sharding; counts replicate."""
    import jax

    from autext_jax.model import abstract_model
    from autext_jax.train import sharding as shd
    from autext_jax.train.steps import TrainSteps, describe_model

    layout, _ = describe_model(abstract_model(tiny_config))
    cfg = OptimizerConfig(layer_decay=0.8, grad_accum_steps=accum)
    tx = build_optimizer(cfg, layout.names, tiny_config.encoder.num_layers, 10)
    mesh = shd.make_mesh(shd.MeshConfig(), jax.devices()[:1])
    steps = TrainSteps(layout, tx, mesh)
    flat = jax.tree_util.tree_flatten_with_path(steps.state_shardings["opt_state"])[0]
    mirrored = [(path, s) for path, s in flat if getattr(path[-1], "key", None) in steps.param_shardings]
    # mu and nu of Adam, plus MultiSteps' accumulated gradients when accumulating.
    assert len(mirrored) == len(layout.names) * (2 if accum == 1 else 3)
    for path, sharding in mirrored:
        assert sharding is steps.param_shardings[path[-1].key], path
    others = [s for path, s in flat if getattr(path[-1], "key", None) not in steps.param_shardings]
    assert others and all(s is steps.replicated for s in others)
