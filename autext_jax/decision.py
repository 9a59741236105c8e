"""From raw logits to what users see: reported probabilities and the ``is_bot`` decision (NumPy only).

A ``Decision`` holds the model's threshold, a threshold the user gave (on the reported scale), the
model's calibration (``calibration.py``) and the length below which a text is ``short``. Every
decision is made on the raw logit or the uncalibrated probability when the model's own threshold
or an operating point decides, so calibrating never changes a decision; a threshold given by the
user is compared with the probability the user is shown.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from autext_jax import calibration as calib
from autext_jax.config import check_threshold
from autext_jax.errors import UsageError
from autext_jax.scores import is_bot, sigmoid


@dataclass(frozen=True)
class Decision:
    """How logits become ``bot_prob``/``english_prob``/``is_bot``/``short`` (see the module docstring).

    ``raw_threshold``: the model's threshold on the uncalibrated ``sigmoid(logit)``;
    ``given_threshold``: one the user chose, on the reported (calibrated) scale, or ``None``.
    """

    raw_threshold: float
    given_threshold: float | None = None
    calibration: calib.Calibration | None = None

    def __post_init__(self) -> None:  # raw_threshold: checked with the model's config (or chosen on data)
        if self.given_threshold is not None:
            check_threshold(self.given_threshold)

    @property
    def threshold(self) -> float:
        """The threshold in force, on the reported ``bot_prob`` scale."""
        if self.given_threshold is not None:
            return float(self.given_threshold)
        if self.calibration is None:
            return float(self.raw_threshold)
        return self.calibration.threshold(self.raw_threshold)

    @property
    def operating_points(self) -> dict[str, calib.OperatingPoint]:
        return dict(self.calibration.operating_points) if self.calibration is not None else {}

    @property
    def min_tokens(self) -> int:
        """Texts with fewer tokens than this are ``short``: below the lengths the model was validated on."""
        return self.calibration.min_tokens if self.calibration is not None else calib.DEFAULT_MIN_TOKENS

    def operating_point(self, name: str) -> calib.OperatingPoint:
        """The stored operating point ``name``; a ``UsageError`` listing the ones there are otherwise."""
        points = self.operating_points
        if name not in points:
            have = ", ".join(points) or "none (fit them: python -m autext_jax.evaluate --calibrate OUT_DIR)"
            raise UsageError(f"operating point {name!r} is not stored with this model; it has: {have}")
        return points[name]

    def bot_prob(self, bot_logits) -> np.ndarray:
        """Reported ``bot_prob`` (calibrated when the model has a calibration), float32."""
        return sigmoid(bot_logits) if self.calibration is None else self.calibration.bot_prob(bot_logits)

    def english_prob(self, english_logits) -> np.ndarray:
        """Reported ``english_prob`` (calibrated when the model has a calibration), float32."""
        if self.calibration is None:
            return sigmoid(english_logits)
        return self.calibration.english_prob(english_logits)

    def is_bot(self, bot_logits, operating_point: str | None = None) -> np.ndarray:
        """``is_bot`` from raw logits: at an operating point, else at the threshold in force."""
        raw = np.asarray(bot_logits, np.float32)
        if operating_point is not None:
            return raw >= np.float32(self.operating_point(operating_point).raw_logit)
        if self.given_threshold is None:
            return is_bot(sigmoid(raw), self.raw_threshold)
        return is_bot(self.bot_prob(raw), self.given_threshold)

    def is_short(self, n_tokens) -> np.ndarray:
        return np.asarray(n_tokens) < self.min_tokens
