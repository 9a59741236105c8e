"""Fit the embedded model's ``calibration.json`` on half of its validation split; check it on the other half.

    python -m tools.calibrate_default_model [--data ../shared/data/autextification/subtask_1]
        [--model DIR] [--out DIR] [--report runs/calibrate-default]

The validation split is the one that trained ``autext-jax-mini`` left out (``configs/mini.py``: the
id hash with fraction 0.1 and salt ``autext``). A second salted id hash cuts it in two halves:

- **fit**: the Platt maps, the operating points (thresholds at 0.1/1/5% false positives on its human
  rows) and ``min_tokens`` are fitted here;
- **hold-out**: never seen by the fit; the promises are checked here: the false-positive rate and
  recall at each operating point (with a 95% Wilson interval on the FPR), and the ECE of the raw and
  of the calibrated ``bot_prob``.

``calibration.json`` goes to ``--out`` (default: the embedded model's folder, the weights are not
touched); ``report.json`` and ``report.md`` (the hold-out table) go to ``--report``.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Any

import numpy as np

from autext_jax import calibration as calib
from autext_jax.errors import AutextError

DEFAULT_DATA = Path("../shared/data/autextification/subtask_1")
VAL_FRACTION, SALT = 0.1, "autext"  # configs/mini.py's data split
HOLDOUT_FRACTION, HOLDOUT_SALT = 0.5, "autext-calibration-holdout"


def split_validation(data: list[str], languages: tuple[str, ...] = ("en", "es")):
    """``(fit, holdout)``: the model's validation rows, halved by a second salted hash of the id."""
    from autext_jax.data.dataset import load_examples, split_by_id

    _, validation = split_by_id(load_examples(data, languages=languages), VAL_FRACTION, SALT)
    return split_by_id(validation, HOLDOUT_FRACTION, HOLDOUT_SALT)


def score_rows(detector, ds) -> dict[str, np.ndarray]:
    """Raw logits, token counts and labels of every row (``detector`` loaded with ``calibrated=False``)."""
    from autext_jax.data.dataset import column_values

    texts = column_values(ds, "text")
    docs = [doc for _, doc in detector.run(enumerate(texts))]
    return {
        "bot": np.float32([d.bot for d in docs]),
        "english": np.float32([d.english for d in docs]),
        "n_tokens": np.int64([d.n_tokens for d in docs]),
        "bot_label": np.asarray(column_values(ds, "bot"), np.int64),
        "english_label": np.asarray(column_values(ds, "english"), np.int64),
        "language": np.asarray(column_values(ds, "language"), dtype=object),
    }


def wilson_interval(hits: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """95% Wilson score interval of a proportion (sound at 0 hits, unlike the normal approximation)."""
    if n == 0:
        return (0.0, 1.0)
    p = hits / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return (max(0.0, centre - half), min(1.0, centre + half))


def measure(fitted: calib.Calibration, rows: dict[str, np.ndarray]) -> dict[str, Any]:
    """FPR and recall at each operating point and the ECE, on ``rows`` (overall and per language)."""
    groups = {"all": np.ones(rows["bot"].size, bool)}
    groups.update({str(lang): rows["language"] == lang for lang in sorted(set(rows["language"]))})
    out: dict[str, Any] = {}
    for group, keep in groups.items():
        z, y = rows["bot"][keep], rows["bot_label"][keep]
        labelled = y >= 0
        z, y = z[labelled], y[labelled]
        human, generated = int((y == 0).sum()), int((y == 1).sum())
        points = {}
        for name, point in fitted.operating_points.items():
            flagged = z >= np.float32(point.raw_logit)
            false_pos = int(flagged[y == 0].sum())
            points[name] = {
                "target_fpr": point.target_fpr,
                "fpr": false_pos / max(human, 1),
                "fpr_ci95": wilson_interval(false_pos, human),
                "false_positives": false_pos,
                "recall": float(flagged[y == 1].mean()) if generated else None,
            }
        out[group] = {
            "rows": int(z.size),
            "human": human,
            "generated": generated,
            "ece_raw": calib.expected_calibration_error(calib.Calibration().bot_prob(z), y),
            "ece_calibrated": calib.expected_calibration_error(fitted.bot_prob(z), y),
            "operating_points": points,
        }
    return out


def markdown_table(fit: dict[str, Any], holdout: dict[str, Any]) -> str:
    """The check as README tables: per language group and operating point, fit half beside hold-out."""
    lines = [
        "| rows | operating point | FPR on the fit half | FPR on the hold-out [95% CI] | recall (hold-out) |",
        "|---|---|---|---|---|",
    ]
    for group, result in holdout.items():
        for name, p in result["operating_points"].items():
            low, high = p["fpr_ci95"]
            recall = "n/a" if p["recall"] is None else f"{p['recall']:.3f}"
            lines.append(
                f"| {group} ({result['human']} human) | `{name}` | "
                f"{fit[group]['operating_points'][name]['fpr']:.4f} | "
                f"{p['fpr']:.4f} [{low:.4f}, {high:.4f}] | {recall} |"
            )
    lines += ["", "| rows | ECE raw (hold-out) | ECE calibrated (hold-out) | ECE calibrated (fit half) |"]
    lines += ["|---|---|---|---|"]
    lines += [
        f"| {g} | {r['ece_raw']:.4f} | {r['ece_calibrated']:.4f} | {fit[g]['ece_calibrated']:.4f} |"
        for g, r in holdout.items()
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    import autext_jax
    from autext_jax.hub import resolve_model_dir

    parser = argparse.ArgumentParser(prog="python -m tools.calibrate_default_model", description=__doc__)
    parser.add_argument("--data", nargs="+", default=[str(DEFAULT_DATA)], help="AuTexTification subtask_1")
    parser.add_argument("--model", default=None, help="model directory (default: the embedded model)")
    parser.add_argument("--out", default=None, help="where calibration.json goes (default: the model's dir)")
    parser.add_argument("--report", default="runs/calibrate-default", help="report.json and report.md")
    parser.add_argument("--method", choices=calib.METHODS, default="platt")
    args = parser.parse_args(argv)
    try:
        model_dir = resolve_model_dir(args.model)
        fit_ds, holdout_ds = split_validation(args.data)
        detector = autext_jax.load(model_dir, calibrated=False)
        fit_rows, holdout_rows = score_rows(detector, fit_ds), score_rows(detector, holdout_ds)
        fitted = calib.fit(
            fit_rows["bot"],
            fit_rows["bot_label"],
            english_logits=fit_rows["english"],
            english_labels=fit_rows["english_label"],
            n_tokens=fit_rows["n_tokens"],
            method=args.method,
            fitted_on={
                "data": "AuTexTification subtask 1 train (en, es)",
                "split": f"validation (id hash {VAL_FRACTION}, salt {SALT!r}), fit half "
                f"(id hash {HOLDOUT_FRACTION}, salt {HOLDOUT_SALT!r}, the other half held out)",
                "model": Path(model_dir).name,
            },
        )
        fit, holdout = measure(fitted, fit_rows), measure(fitted, holdout_rows)
    except AutextError as err:
        print(f"error: {err}", file=sys.stderr)
        return err.exit_code
    out_dir = Path(args.out or model_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = fitted.save(out_dir)
    report_dir = Path(args.report)
    report_dir.mkdir(parents=True, exist_ok=True)
    report = {"calibration": fitted.to_json(), "fit": fit, "holdout": holdout}
    table = markdown_table(fit, holdout)
    (report_dir / "report.json").write_text(json.dumps(report, indent=2, allow_nan=False) + "\n")
    (report_dir / "report.md").write_text(table)
    print(table)
    print(f"wrote {written} (fit on {fitted.fitted_on['rows']} rows); report in {report_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
