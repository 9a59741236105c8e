"""Calibration and operating points: what ``calibration.json`` in a model directory holds and how it is used.

A head's raw logit ``z`` becomes the calibrated logit ``scale·z + bias`` (temperature scaling:
``scale = 1/T``, ``bias = 0``; Platt scaling: both fitted), fitted by minimising the log-loss on
labelled validation rows. ``scale`` is kept positive, so the map is monotone and every decision can
be made on the raw logit: ``is_bot`` is exactly what it was without calibration, and the model's
threshold is only *reported* through the map (``Calibration.threshold``).

Operating points are thresholds at a stated false-positive rate on the validation split's human
rows (``"fpr=0.01"``: at most 1% of human texts flagged). They are chosen on raw logits (float32
logits resolve scores that saturate to 1.0 as probabilities) and stored both as a raw logit (the
decision) and as a calibrated probability (what users compare ``bot_prob`` with).

``min_tokens`` is the length below which a text is ``short``: shorter than nearly all validation
texts (their 5th percentile), so the model's scores were not validated there.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from autext_jax.errors import InputDataError

FILE_NAME = "calibration.json"
METHODS = ("temperature", "platt")
STANDARD_FPRS = (0.001, 0.01, 0.05)
DEFAULT_MIN_TOKENS = 30  # without a calibration file: the segment length judged long enough (segments.py)
ECE_BINS = 15


class CalibrationError(InputDataError):
    """Calibration cannot be fitted or read (one class only, an uninformative head, a broken file)."""


# ---- one head ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class HeadCalibration:
    """``calibrated_logit = scale * logit + bias`` (``scale > 0``: order, hence decisions, preserved)."""

    method: str = "temperature"
    scale: float = 1.0
    bias: float = 0.0

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise CalibrationError(f"calibration method {self.method!r} is not one of {METHODS}")
        if not (math.isfinite(self.scale) and self.scale > 0 and math.isfinite(self.bias)):
            raise CalibrationError(
                f"calibration scale {self.scale} / bias {self.bias}: need scale > 0, finite"
            )

    @property
    def temperature(self) -> float:
        return 1.0 / self.scale

    def logits(self, raw) -> np.ndarray:
        return (np.float32(self.scale) * np.asarray(raw, np.float32) + np.float32(self.bias)).astype(
            np.float32
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "method": self.method,
            "scale": self.scale,
            "bias": self.bias,
            "temperature": self.temperature,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> HeadCalibration:
        return cls(str(data["method"]), float(data["scale"]), float(data.get("bias", 0.0)))


def _nll_grad_hess(params: np.ndarray, z: np.ndarray, y: np.ndarray):
    """Mean log-loss of ``sigmoid(a·z + b)`` and its gradient/Hessian in ``params = (a[, b])``."""
    a = params[0]
    b = params[1] if params.size > 1 else 0.0
    u = a * z + b
    loss = np.mean(np.logaddexp(0.0, u) - y * u)
    p = 0.5 * (1.0 + np.tanh(0.5 * u))  # stable sigmoid
    r, w = p - y, p * (1.0 - p)
    features = [z] if params.size == 1 else [z, np.ones_like(z)]
    grad = np.array([np.mean(r * f) for f in features])
    hess = np.array([[np.mean(w * f * g) for g in features] for f in features])
    return loss, grad, hess


def fit_head(logits, labels, method: str = "platt", *, max_iter: int = 100) -> HeadCalibration:
    """Maximum-likelihood temperature (``scale`` only) or Platt (``scale`` and ``bias``) on labelled rows.

    Newton's method with backtracking on a convex problem: converges in a handful of steps. A head
    whose best scale is not positive carries no usable signal; that is an error, not a silent flip.
    """
    if method not in METHODS:
        raise CalibrationError(f"calibration method {method!r} is not one of {METHODS}")
    z = np.asarray(logits, np.float64).ravel()
    y = np.asarray(labels, np.float64).ravel()
    if z.shape != y.shape:
        raise ValueError(f"{z.size} logits but {y.size} labels")
    if not np.isfinite(z).all():
        raise CalibrationError("cannot calibrate on non-finite logits (a broken model)")
    if z.size == 0 or y.min() == y.max():
        raise CalibrationError(f"calibration needs both classes among its {z.size} labelled rows")
    params = np.array([1.0] if method == "temperature" else [1.0, 0.0])
    loss, grad, hess = _nll_grad_hess(params, z, y)
    for _ in range(max_iter):
        step = np.linalg.solve(hess + 1e-12 * np.eye(params.size), grad)
        t = 1.0
        while t > 1e-8:
            candidate = params - t * step
            new_loss, new_grad, new_hess = _nll_grad_hess(candidate, z, y)
            if new_loss <= loss:
                break
            t /= 2
        else:
            break
        converged = abs(loss - new_loss) < 1e-12
        params, loss, grad, hess = candidate, new_loss, new_grad, new_hess
        if converged or np.max(np.abs(grad)) < 1e-10:
            break
    if not params[0] > 0:
        raise CalibrationError(
            f"the fitted scale {params[0]:.4g} is not positive: this head does not separate the labelled "
            "rows, so it cannot be calibrated"
        )
    return HeadCalibration(method, float(params[0]), float(params[1]) if params.size > 1 else 0.0)


# ---- the file ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class OperatingPoint:
    """A threshold chosen for a false-positive rate: the raw logit decides, ``threshold`` is shown."""

    target_fpr: float
    raw_logit: float
    threshold: float  # on the reported (calibrated) bot_prob scale
    fpr: float  # measured on the validation rows it was chosen on
    recall: float

    def to_json(self) -> dict[str, Any]:
        return {
            "target_fpr": self.target_fpr,
            "raw_logit": self.raw_logit,
            "threshold": self.threshold,
            "fpr": self.fpr,
            "recall": self.recall,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> OperatingPoint:
        return cls(*(float(data[k]) for k in ("target_fpr", "raw_logit", "threshold", "fpr", "recall")))


def operating_point_name(target_fpr: float) -> str:
    return f"fpr={target_fpr:g}"


@dataclass(frozen=True)
class Calibration:
    """Everything in ``calibration.json``: per-head maps, operating points, the short-text length."""

    bot: HeadCalibration | None = None
    english: HeadCalibration | None = None
    operating_points: dict[str, OperatingPoint] = field(default_factory=dict)
    min_tokens: int = DEFAULT_MIN_TOKENS
    fitted_on: dict[str, Any] = field(default_factory=dict)

    def bot_prob(self, raw_logits) -> np.ndarray:
        from autext_jax.scores import sigmoid

        return sigmoid(raw_logits if self.bot is None else self.bot.logits(raw_logits))

    def english_prob(self, raw_logits) -> np.ndarray:
        from autext_jax.scores import sigmoid

        return sigmoid(raw_logits if self.english is None else self.english.logits(raw_logits))

    def threshold(self, raw_threshold: float) -> float:
        """The model's probability threshold on the calibrated scale (the same decisions)."""
        if self.bot is None or raw_threshold in (0.0, 1.0):
            return float(raw_threshold)
        raw_logit = math.log(raw_threshold) - math.log1p(-raw_threshold)
        return float(self.bot_prob(np.float32([raw_logit]))[0])

    def to_json(self) -> dict[str, Any]:
        return {
            "bot": None if self.bot is None else self.bot.to_json(),
            "english": None if self.english is None else self.english.to_json(),
            "operating_points": {k: v.to_json() for k, v in self.operating_points.items()},
            "min_tokens": self.min_tokens,
            "fitted_on": self.fitted_on,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Calibration:
        heads = {
            k: None if data.get(k) is None else HeadCalibration.from_json(data[k]) for k in ("bot", "english")
        }
        points = {k: OperatingPoint.from_json(v) for k, v in (data.get("operating_points") or {}).items()}
        return cls(
            heads["bot"],
            heads["english"],
            points,
            int(data.get("min_tokens", DEFAULT_MIN_TOKENS)),
            dict(data.get("fitted_on") or {}),
        )

    def save(self, model_dir: str | Path) -> Path:
        path = Path(model_dir) / FILE_NAME
        path.write_text(json.dumps(self.to_json(), indent=2, allow_nan=False) + "\n", encoding="utf-8")
        return path


def load(model_dir: str | Path | None) -> Calibration | None:
    """The model directory's ``calibration.json``, or ``None`` when it has none."""
    if model_dir is None:
        return None
    path = Path(model_dir) / FILE_NAME
    if not path.is_file():
        return None
    try:
        return Calibration.from_json(json.loads(path.read_text(encoding="utf-8")))
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError, ValueError, AttributeError) as err:
        raise CalibrationError(
            f"{path} is not a valid calibration file ({err}); remove it or refit it"
        ) from None


# ---- fitting everything from validation rows ----------------------------------------------------


def fit(
    bot_logits,
    bot_labels,
    *,
    english_logits=None,
    english_labels=None,
    n_tokens=None,
    method: str = "platt",
    fprs: tuple[float, ...] = STANDARD_FPRS,
    fitted_on: dict[str, Any] | None = None,
) -> Calibration:
    """Calibration maps, operating points and ``min_tokens`` from validation rows (label -1: unknown)."""
    z, y = _labelled(bot_logits, bot_labels)
    bot = fit_head(z, y, method)
    english = None
    info: dict[str, Any] = {}
    if english_logits is not None and english_labels is not None:
        ze, ye = _labelled(english_logits, english_labels)
        try:  # the language head is a side task: an unusable one stays raw, and the file says why
            english = fit_head(ze, ye, method)
        except CalibrationError as err:
            info["english_not_calibrated"] = str(err)
    partial = Calibration(bot, english)
    points = {operating_point_name(f): operating_point(z, y, f, partial) for f in fprs}
    min_tokens = DEFAULT_MIN_TOKENS
    if n_tokens is not None and len(n_tokens):
        min_tokens = int(np.percentile(np.asarray(n_tokens), 5))
    info.update({"rows": int(z.size), "human": int((y == 0).sum()), "generated": int((y == 1).sum())})
    info.update(fitted_on or {})
    return Calibration(bot, english, points, min_tokens, info)


def _labelled(logits, labels) -> tuple[np.ndarray, np.ndarray]:
    z = np.asarray(logits, np.float32).ravel()
    y = np.asarray(labels).astype(np.int64).ravel()
    keep = y >= 0
    return z[keep], y[keep]


def operating_point(raw_logits, labels, target_fpr: float, calibration: Calibration) -> OperatingPoint:
    """The raw-logit threshold with the largest recall whose FPR on these human rows is ``<= target_fpr``."""
    from autext_jax.metrics import threshold_for_fpr

    z, y = _labelled(raw_logits, labels)
    cut = np.float32(threshold_for_fpr(y, z, target_fpr))
    flagged = z >= cut
    fpr = float(flagged[y == 0].mean()) if (y == 0).any() else 0.0
    recall = float(flagged[y == 1].mean()) if (y == 1).any() else 0.0
    shown = float(calibration.bot_prob(np.float32([cut]))[0])
    return OperatingPoint(float(target_fpr), float(cut), shown, fpr, recall)


# ---- measuring calibration ----------------------------------------------------------------------


def reliability(probs, labels, bins: int = ECE_BINS) -> dict[str, np.ndarray]:
    """Per equal-width bin of predicted probability: rows, mean prediction, share of positives."""
    p = np.asarray(probs, np.float64).ravel()
    y = np.asarray(labels, np.float64).ravel()
    which = np.minimum((p * bins).astype(np.int64), bins - 1)
    count = np.bincount(which, minlength=bins)
    mean_p = np.bincount(which, weights=p, minlength=bins) / np.maximum(count, 1)
    positive = np.bincount(which, weights=y, minlength=bins) / np.maximum(count, 1)
    return {"count": count, "confidence": mean_p, "accuracy": positive}


def expected_calibration_error(probs, labels, bins: int = ECE_BINS) -> float:
    """ECE of the positive-class probability: ``Σ_b n_b/N · |positives_b − mean prediction_b|``."""
    r = reliability(probs, labels, bins)
    total = r["count"].sum()
    if not total:
        raise ValueError("no rows to measure calibration on")
    return float(np.sum(r["count"] * np.abs(r["accuracy"] - r["confidence"])) / total)


def reliability_diagram(
    path: str | Path, curves: dict[str, tuple[np.ndarray, np.ndarray]], title: str
) -> Path:
    """A PNG with one reliability curve (and its ECE) per ``name -> (probs, labels)``, plus the diagonal."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 5))
    ax.plot([0, 1], [0, 1], color="grey", linestyle=":", label="perfectly calibrated")
    for name, (probs, labels) in curves.items():
        r = reliability(probs, labels)
        used = r["count"] > 0
        ece = expected_calibration_error(probs, labels)
        ax.plot(r["confidence"][used], r["accuracy"][used], marker="o", label=f"{name} (ECE {ece:.3f})")
    ax.set(
        xlabel="predicted bot probability", ylabel="share generated", title=title, xlim=(0, 1), ylim=(0, 1)
    )
    ax.legend(loc="upper left")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return Path(path)
