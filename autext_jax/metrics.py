"""Detection metrics on labels and scores: macro-F1, confusion matrix, threshold sweeps, ROC, bootstrap CIs.

The AuTexTification metric is macro-F1: the unweighted mean of the F1 of ``human`` (0) and
``generated`` (1). A prediction is ``prob >= threshold`` everywhere (``scores.is_bot``). A class
absent from both labels and predictions scores F1 0 (sklearn's ``labels=[0, 1], zero_division=0``),
so a degenerate sample is never rewarded. Pure NumPy: used by ``evaluate`` (reports) and training's
validation alike.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from autext_jax.errors import InputDataError
from autext_jax.scores import is_bot

CLASS_NAMES = ("human", "generated")


class NonFiniteScores(InputDataError):
    """Scores with NaN/inf: every metric on them would be a meaningless number (exit 1)."""


class OneClassError(InputDataError):
    """A threshold cannot be tuned on rows of one class: any threshold separates them "perfectly"."""


def _as_arrays(labels, values) -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(labels).astype(np.int64).ravel()
    v = np.asarray(values).ravel()
    if np.issubdtype(v.dtype, np.floating) and not np.isfinite(v).all():
        bad = int((~np.isfinite(v)).sum())
        raise NonFiniteScores(
            f"{bad} of {v.size} scores are not finite (NaN or inf); the model or the predictions file is "
            "broken, so no metric is computed"
        )
    if y.shape != v.shape:
        raise ValueError(f"labels ({y.shape[0]}) and predictions/scores ({v.shape[0]}) differ in length")
    if y.size and not np.isin(y, (0, 1)).all():
        raise ValueError(f"labels must be 0 (human) or 1 (generated); found {sorted(set(y.tolist()))}")
    return y, v


def predict(probs, threshold: float) -> np.ndarray:
    """Predictions at ``threshold`` by the one decision rule, ``scores.is_bot``."""
    return is_bot(probs, threshold)


# ---- point metrics ---------------------------------------------------------------------------


def confusion_matrix(labels, predictions) -> np.ndarray:
    """``[[tn, fp], [fn, tp]]``: rows are the true class (human, generated), columns the predicted one."""
    y, p = _as_arrays(labels, predictions)
    p = p.astype(np.int64)
    return np.bincount(2 * y + p, minlength=4).reshape(2, 2)


def _f1_from_counts(tp, fp, fn) -> np.ndarray:
    tp, fp, fn = (np.asarray(x, dtype=np.float64) for x in (tp, fp, fn))
    denominator = 2 * tp + fp + fn
    return np.divide(2 * tp, denominator, out=np.zeros_like(denominator), where=denominator > 0)


def _macro_from_counts(tp, fp, fn, tn) -> np.ndarray:
    return 0.5 * (_f1_from_counts(tp, fp, fn) + _f1_from_counts(tn, fn, fp))


def per_class_f1(labels, predictions) -> tuple[float, float]:
    """``(F1 of human, F1 of generated)``."""
    (tn, fp), (fn, tp) = confusion_matrix(labels, predictions)
    return float(_f1_from_counts(tn, fn, fp)), float(_f1_from_counts(tp, fp, fn))


def macro_f1(labels, predictions) -> float:
    """The shared task's metric: unweighted mean of the human and generated F1, in [0, 1]."""
    return float(np.mean(per_class_f1(labels, predictions)))


# ---- threshold sweeps ------------------------------------------------------------------------


@dataclass(frozen=True)
class Sweep:
    """Counts at every distinct score, highest first: predicting ``score >= thresholds[i]`` gives
    ``tp[i]`` true and ``fp[i]`` false positives out of ``positives`` generated and ``negatives`` human."""

    thresholds: np.ndarray
    tp: np.ndarray
    fp: np.ndarray
    positives: int
    negatives: int

    @property
    def macro_f1(self) -> np.ndarray:
        fn, tn = self.positives - self.tp, self.negatives - self.fp
        return _macro_from_counts(self.tp, self.fp, fn, tn)


def sweep(labels, probs) -> Sweep:
    """All operating points in O(n log n) (one sort and a cumulative sum)."""
    y, s = _as_arrays(labels, probs)
    if y.size == 0:
        raise ValueError("no labelled rows to evaluate")
    s = s.astype(np.float32)
    order = np.argsort(-s, kind="stable")
    s, y = s[order], y[order]
    last_of_value = np.r_[np.flatnonzero(np.diff(s)), y.size - 1]
    tp = np.cumsum(y)[last_of_value]
    fp = last_of_value + 1 - tp
    return Sweep(s[last_of_value], tp, fp, int(y.sum()), int(y.size - y.sum()))


def roc_curve(labels, probs) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(fpr, tpr, thresholds)`` starting at ``(0, 0, inf)``, as sklearn's ``drop_intermediate=False``."""
    sw = sweep(labels, probs)
    if not sw.positives or not sw.negatives:
        raise ValueError("a ROC curve needs both human and generated rows")
    fpr = np.r_[0.0, sw.fp / sw.negatives]
    tpr = np.r_[0.0, sw.tp / sw.positives]
    return fpr, tpr, np.r_[np.inf, sw.thresholds.astype(np.float64)]


def roc_auc(labels, probs) -> float:
    fpr, tpr, _ = roc_curve(labels, probs)
    return float(np.trapezoid(tpr, fpr))


def _above(value: np.float32) -> float:
    return float(np.nextafter(np.float32(value), np.float32(np.inf)))


def best_threshold(labels, probs) -> tuple[float, float]:
    """``(threshold, macro_f1)`` maximising macro-F1 on these rows.

    The threshold sits halfway (in float32) between the chosen cut score and the next lower score,
    which predicts these rows identically and generalises better than the cut score itself. Ties go
    to the highest threshold (fewest false positives).
    """
    sw = sweep(labels, probs)
    if not sw.positives or not sw.negatives:
        raise OneClassError(
            f"cannot tune a threshold on {sw.negatives} human and {sw.positives} generated rows: both "
            "classes are needed (give a threshold, or validation data with both labels)"
        )
    scores = sw.macro_f1
    best = int(np.argmax(scores))
    cut = sw.thresholds[best]
    threshold = float(cut)
    nothing_flagged = _macro_from_counts(0, 0, sw.positives, sw.negatives)
    if nothing_flagged > scores[best] and _above(sw.thresholds[0]) <= 1.0:
        return _above(sw.thresholds[0]), float(nothing_flagged)
    if best + 1 < len(sw.thresholds):
        lower = sw.thresholds[best + 1]
        middle = np.float32((np.float64(cut) + np.float64(lower)) / 2)
        if lower < middle <= cut:
            threshold = float(middle)
    return threshold, float(scores[best])


def threshold_for_fpr(labels, probs, target_fpr: float) -> float:
    """The threshold with the largest recall whose false-positive rate on human rows is ``<= target_fpr``.

    If even the highest score exceeds the budget, the threshold is just above it (nothing is flagged).
    """
    if not 0.0 <= target_fpr <= 1.0:
        raise ValueError(f"target FPR {target_fpr} is outside [0, 1]")
    sw = sweep(labels, probs)
    if not sw.negatives:
        raise ValueError("no human rows: the false-positive rate is undefined")
    allowed = np.flatnonzero(sw.fp <= target_fpr * sw.negatives + 1e-9)
    if allowed.size == 0:
        return _above(sw.thresholds[0])
    return float(sw.thresholds[allowed[-1]])


def bootstrap_ci(
    labels,
    predictions,
    metric: Callable[[np.ndarray, np.ndarray], float] = macro_f1,
    n: int = 1000,
    seed: int = 0,
    level: float = 0.95,
) -> tuple[float, float]:
    """Percentile bootstrap interval of ``metric`` (rows resampled with replacement, ``n`` times)."""
    y, p = _as_arrays(labels, predictions)
    if y.size == 0:
        raise ValueError("no rows to bootstrap")
    if not 0.0 < level < 1.0:
        raise ValueError(f"level {level} is outside (0, 1)")
    rng = np.random.default_rng(seed)
    values = np.empty(n, dtype=np.float64)
    for i in range(n):
        sample = rng.integers(0, y.size, size=y.size)
        values[i] = metric(y[sample], p[sample])
    tail = (1.0 - level) / 2 * 100
    low, high = np.percentile(values, [tail, 100 - tail])
    return float(low), float(high)



def language_accuracy(english_labels, english_probs, languages=None) -> dict[str, Any]:
    """Accuracy of the language head (``english_prob >= 0.5``) on rows with a known language."""
    y = np.asarray(english_labels).astype(np.int64).ravel()
    correct = (np.asarray(english_probs, dtype=np.float32).ravel() >= 0.5) == (y == 1)
    known = y >= 0
    langs = np.asarray(languages if languages is not None else [""] * y.size, dtype=object)
    accuracy = float(correct[known].mean()) if known.any() else None
    out: dict[str, Any] = {"n": int(known.sum()), "accuracy": accuracy}
    for name in sorted(set(langs[known].tolist())):
        rows = known & (langs == name)
        out[name or "unknown"] = float(correct[rows].mean())
    return out

