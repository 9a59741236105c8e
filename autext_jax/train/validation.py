"""Validation during training: losses, macro-F1 per language, language accuracy and the tuned threshold.

Consumes the gathered ``(logits, index)`` pairs of the eval step and the validation dataset's label
columns; the loss is the same per-example BCE the train step minimises (``scores.bce_with_logits``).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np

from autext_jax.data.dataset import column_values
from autext_jax.metrics import best_threshold, language_accuracy, macro_f1
from autext_jax.scores import bce_with_logits, scores_from_logits


def validation_metrics(
    batches: Iterable[tuple[np.ndarray, np.ndarray]], val_ds, *, lang_loss_weight: float
) -> dict[str, Any]:
    """Validation losses, macro-F1 per language (at 0.5), language-head accuracy and best threshold.

    ``batches`` yields ``(logits, index)`` per evaluation batch: ``(N, 2)`` [bot, english] logits and
    the rows of ``val_ds`` they belong to (``-1`` for padding rows), gathered from every process.
    """
    logits, index = zip(*batches, strict=True)
    logits_all, index_all = np.concatenate(logits), np.concatenate(index)
    real = index_all >= 0
    logits_all, rows = logits_all[real], index_all[real]
    bot = np.asarray(column_values(val_ds, "bot"), np.int64)[rows]
    english = np.asarray(column_values(val_ds, "english"), np.int64)[rows]
    language = np.asarray(column_values(val_ds, "language"), dtype=object)[rows]
    scores = scores_from_logits(logits_all[:, 0], logits_all[:, 1], 0.5)
    out: dict[str, Any] = {"rows": int(len(rows))}
    for task, labels, column in (("bot", bot, 0), ("english", english, 1)):
        known = labels >= 0
        x, y = logits_all[known, column].astype(np.float64), labels[known].astype(np.float64)
        bce = bce_with_logits(x, y)
        out[f"{task}_loss"] = float(bce.mean()) if known.any() else None
    out["loss"] = (out["bot_loss"] or 0.0) + lang_loss_weight * (out["english_loss"] or 0.0)
    has_bot = bot >= 0
    if has_bot.any():
        predictions = scores["is_bot"].astype(np.int64)
        out["macro_f1"] = {"all": macro_f1(bot[has_bot], predictions[has_bot])}
        for name in sorted(set(language[has_bot].tolist())):
            rows_l = has_bot & (language == name)
            out["macro_f1"][name or "unknown"] = macro_f1(bot[rows_l], predictions[rows_l])
        if len(set(bot[has_bot].tolist())) == 2:  # tuning on one class would pick a meaningless threshold
            threshold, best = best_threshold(bot[has_bot], scores["bot_prob"][has_bot])
            out["best_threshold"], out["best_macro_f1"] = threshold, best
    out["language_accuracy"] = language_accuracy(english, scores["english_prob"], language)
    return out
