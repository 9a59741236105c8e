"""Logits → the records users see. The one place where probabilities and ``is_bot`` are computed."""

from __future__ import annotations

import numpy as np


def sigmoid(logits: np.ndarray) -> np.ndarray:
    """Numerically stable float32 sigmoid."""
    x = np.asarray(logits, dtype=np.float32)
    out = np.empty_like(x)
    pos = x >= 0
    out[pos] = 1.0 / (1.0 + np.exp(-x[pos]))
    ex = np.exp(x[~pos])
    out[~pos] = ex / (1.0 + ex)
    return out


def is_bot(bot_prob, threshold: float) -> np.ndarray:
    """The decision rule: ``bot_prob >= threshold`` compared in float32 (as the original)."""
    return np.asarray(bot_prob, dtype=np.float32) >= np.float32(threshold)


def scores_from_logits(bot_logits, english_logits, threshold: float) -> dict[str, np.ndarray]:
    """``{"bot_prob", "english_prob", "is_bot"}``; ``is_bot = bot_prob >= threshold`` as in the original."""
    bot_prob = sigmoid(bot_logits)
    return {
        "bot_prob": bot_prob,
        "english_prob": sigmoid(english_logits),
        "is_bot": is_bot(bot_prob, threshold),
    }


def bce_with_logits(logits, labels):
    """Per-example binary cross-entropy from logits, stable for large ``|logits|``.

    The one definition of the loss: the jitted train step calls it on JAX arrays, training's
    validation on NumPy float64 arrays (the array's own namespace does the maths).
    """
    xp = logits.__array_namespace__()
    return xp.maximum(logits, 0) - logits * labels + xp.log1p(xp.exp(-xp.abs(logits)))
