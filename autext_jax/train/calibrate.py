"""Training's last step for trust in scores: calibration and operating points from the validation split.

The exported model directory gets a ``calibration.json`` (``autext_jax.calibration``) fitted on the
same validation rows, at the same length, that tuned its threshold: the bot and language heads'
Platt maps, thresholds at standard false-positive rates, and the token length below which a text is
flagged ``short``. The logits come from the eval step (a collective: every process takes part);
only the lead process writes.
"""

from __future__ import annotations

import json
import logging
from typing import Any

import numpy as np

from autext_jax import calibration as calib
from autext_jax import paths
from autext_jax.data.dataset import column_values
from autext_jax.data.stream import eval_batches

log = logging.getLogger(__name__)


def fit_on_validation(job, state: dict[str, Any]) -> calib.Calibration | None:
    """The calibration of the final parameters on ``job.val_ds``; ``None`` (with a warning) when it cannot
    be fitted (no validation rows, one class, a head that does not separate them)."""
    val_ds = job.val_ds
    if not len(val_ds):
        log.warning("no validation rows: the export gets no calibration.json")
        return None
    batches = eval_batches(val_ds, global_batch_size=job.cfg.eval.batch_size, **job.batching)
    logits, index = zip(*(job.steps.eval_outputs(state["params"], local) for local in batches), strict=True)
    logits_all, index_all = np.concatenate(logits), np.concatenate(index)
    real = index_all >= 0
    logits_all, rows = logits_all[real], index_all[real]
    labels = {k: np.asarray(column_values(val_ds, k), np.int64)[rows] for k in ("bot", "english")}
    lengths = np.asarray(column_values(val_ds, "length"), np.int64)[rows]
    try:
        fitted = calib.fit(
            logits_all[:, 0],
            labels["bot"],
            english_logits=logits_all[:, 1],
            english_labels=labels["english"],
            n_tokens=lengths,
            fitted_on={"data": "validation split of training", "max_length": job.cfg.data.max_length},
        )
    except calib.CalibrationError as err:
        log.warning("no calibration.json for the export: %s", err)
        return None
    probs = fitted.bot_prob(logits_all[:, 0])
    known = labels["bot"] >= 0
    before = calib.expected_calibration_error(1 / (1 + np.exp(-logits_all[known, 0])), labels["bot"][known])
    after = calib.expected_calibration_error(probs[known], labels["bot"][known])
    log.info("calibration on %d validation rows: ECE %.4f -> %.4f", int(known.sum()), before, after)
    return fitted


def save(fitted: calib.Calibration | None, export_dir: str) -> None:
    """Write ``calibration.json`` into the export (a local folder or a URL)."""
    if fitted is None:
        return
    text = json.dumps(fitted.to_json(), indent=2, allow_nan=False) + "\n"
    paths.write_text(paths.join(export_dir, calib.FILE_NAME), text)
    shown = ", ".join(f"{k}: {v.threshold:.4g}" for k, v in fitted.operating_points.items())
    log.info("calibration.json written (operating points %s)", shown)
