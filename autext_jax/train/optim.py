"""The optimizer: AdamW with linear warmup/decay, clipping, selective decay, layer-wise LR, accumulation.

Parameters are a flat ``{name: array}`` dict with ``/``-joined NNX paths
(``encoder/layers/3/attention/query/kernel``); the weight-decay mask and the layer-wise factors
are computed from those names once, outside ``jit``.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable
from dataclasses import dataclass

import jax
import optax

from autext_jax.errors import AutextError


class OptimizerConfigError(AutextError, ValueError):
    """An optimizer setting outside its valid range."""


@dataclass(frozen=True)
class OptimizerConfig:
    """AdamW hyperparameters. Step counts are optimizer updates (one per ``grad_accum_steps`` batches)."""

    learning_rate: float = 5e-5
    warmup_fraction: float = 0.06
    warmup_steps: int | None = None  # overrides warmup_fraction when set
    end_learning_rate: float = 0.0
    weight_decay: float = 0.01
    b1: float = 0.9
    b2: float = 0.999
    eps: float = 1e-8
    max_grad_norm: float | None = 1.0  # None or 0: no clipping
    layer_decay: float = 1.0  # < 1: layer-wise LR decay (top layer ×1, each lower layer ×layer_decay)
    grad_accum_steps: int = 1

    def __post_init__(self) -> None:
        if self.learning_rate <= 0:
            raise OptimizerConfigError(f"optimizer.learning_rate must be > 0, got {self.learning_rate}")
        if not 0.0 <= self.warmup_fraction <= 1.0:
            raise OptimizerConfigError(
                f"optimizer.warmup_fraction must be in [0, 1], got {self.warmup_fraction}"
            )
        if self.warmup_steps is not None and self.warmup_steps < 0:
            raise OptimizerConfigError(f"optimizer.warmup_steps must be >= 0, got {self.warmup_steps}")
        if not 0.0 < self.layer_decay <= 1.0:
            raise OptimizerConfigError(f"optimizer.layer_decay must be in (0, 1], got {self.layer_decay}")
        if self.grad_accum_steps < 1:
            raise OptimizerConfigError(
                f"optimizer.grad_accum_steps must be >= 1, got {self.grad_accum_steps}"
            )
        if self.weight_decay < 0:
            raise OptimizerConfigError(f"optimizer.weight_decay must be >= 0, got {self.weight_decay}")

    def updates_for(self, batches: int) -> int:
        """Optimizer updates made while consuming ``batches`` batches."""
        return max(1, math.ceil(batches / self.grad_accum_steps))


def lr_schedule(cfg: OptimizerConfig, total_updates: int) -> optax.Schedule:
    """Linear warmup from 0 to ``learning_rate``, then linear decay to ``end_learning_rate``."""
    if cfg.warmup_steps is not None:
        warmup = min(cfg.warmup_steps, total_updates)
    else:
        warmup = round(cfg.warmup_fraction * total_updates)
    decay = optax.linear_schedule(cfg.learning_rate, cfg.end_learning_rate, max(total_updates - warmup, 1))
    if warmup == 0:
        return decay
    ramp = optax.linear_schedule(0.0, cfg.learning_rate, warmup)
    return optax.join_schedules([ramp, decay], boundaries=[warmup])


def decays(name: str) -> bool:
    """Weight decay applies to matrices and embeddings, never to biases or LayerNorm scales."""
    leaf = name.rsplit("/", 1)[-1]
    return leaf not in ("bias", "scale")


_LAYER = re.compile(r"(?:^|/)layers/(\d+)/")


def layer_depth(name: str, num_layers: int) -> int:
    """0 for embeddings, ``i + 1`` for encoder block ``i``, ``num_layers + 1`` for pooler and heads."""
    if "/embeddings/" in f"/{name}":
        return 0
    match = _LAYER.search(name)
    if match:
        return int(match.group(1)) + 1
    return num_layers + 1


def layer_lr_factors(names: Iterable[str], num_layers: int, layer_decay: float) -> dict[str, float]:
    """LR multiplier per parameter: ``layer_decay ** (distance from the top)``."""
    top = num_layers + 1
    return {n: float(layer_decay ** (top - layer_depth(n, num_layers))) for n in names}


def _scale_each(factors: dict[str, float]) -> optax.GradientTransformation:
    """Multiply each named update by its fixed factor (layer-wise LR)."""

    def update(updates, state, params=None):
        del params
        return {k: v * factors[k] for k, v in updates.items()}, state

    return optax.GradientTransformation(lambda params: optax.EmptyState(), update)


def build_optimizer(
    cfg: OptimizerConfig, param_names: Iterable[str], num_layers: int, total_batches: int
) -> optax.GradientTransformation:
    """The full update rule for a flat parameter dict; wrapped in ``optax.MultiSteps`` when accumulating."""
    names = sorted(param_names)
    schedule = lr_schedule(cfg, cfg.updates_for(total_batches))
    parts = []
    if cfg.max_grad_norm:
        parts.append(optax.clip_by_global_norm(cfg.max_grad_norm))
    parts.append(optax.scale_by_adam(b1=cfg.b1, b2=cfg.b2, eps=cfg.eps))
    if cfg.weight_decay:
        parts.append(optax.add_decayed_weights(cfg.weight_decay, mask={n: decays(n) for n in names}))
    parts.append(optax.scale_by_learning_rate(schedule))
    if cfg.layer_decay < 1.0:
        parts.append(_scale_each(layer_lr_factors(names, num_layers, cfg.layer_decay)))
    tx = optax.chain(*parts)
    if cfg.grad_accum_steps > 1:
        tx = optax.MultiSteps(tx, every_k_schedule=cfg.grad_accum_steps).gradient_transformation()
    return tx


def current_lr(cfg: OptimizerConfig, total_batches: int, batches_done: jax.Array | int) -> jax.Array:
    """The base learning rate in effect after ``batches_done`` batches (for logging)."""
    schedule = lr_schedule(cfg, cfg.updates_for(total_batches))
    return schedule(batches_done // cfg.grad_accum_steps)
