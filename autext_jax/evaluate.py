"""``python -m autext_jax.evaluate``: score a labelled file with a model and write a report with plots.

    python -m autext_jax.evaluate --model DIR --data PATH [--threshold T | --target-fpr F] [--output-dir DIR]

writes ``report.json`` (macro-F1 with bootstrap CIs, confusion matrix, ROC AUC and FPR, overall and
per language; language-head accuracy; expected calibration error) and ``roc.png``,
``score_histograms.png``, ``macro_f1_vs_threshold.png``, ``reliability.png``. The metrics themselves
live in ``metrics.py``. The detection metrics are on the model's raw probabilities (the decisions a
calibrated copy makes are the same); the ``calibration`` section measures what a ``calibration.json``
does. ``--calibrate OUT_DIR`` fits one on these rows (use ``--split validation``) and writes a copy of
the model directory with it (``calibration.py``).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from autext_jax import calibration as calib
from autext_jax import cli
from autext_jax.decision import Decision
from autext_jax.errors import AutextError, UsageError
from autext_jax.metrics import (
    CLASS_NAMES,
    best_threshold,
    bootstrap_ci,
    confusion_matrix,
    language_accuracy,
    per_class_f1,
    predict,
    roc_auc,
    roc_curve,
    sweep,
    threshold_for_fpr,
)
from autext_jax.records import Layout, RecordBuilder

# ---- report ----------------------------------------------------------------------------------


def _group_report(y, probs, threshold: float, n_bootstrap: int, seed: int) -> dict[str, Any]:
    pred = predict(probs, threshold)
    (tn, fp), (fn, tp) = matrix = confusion_matrix(y, pred)
    f1_human, f1_generated = per_class_f1(y, pred)
    out: dict[str, Any] = {
        "n": int(y.size),
        "n_human": int(tn + fp),
        "n_generated": int(fn + tp),
        "macro_f1": float((f1_human + f1_generated) / 2),
        "macro_f1_ci95": list(bootstrap_ci(y, pred, n=n_bootstrap, seed=seed)) if n_bootstrap else None,
        "f1_human": f1_human,
        "f1_generated": f1_generated,
        "false_positive_rate": float(fp / (tn + fp)) if tn + fp else None,
        "recall": float(tp / (tp + fn)) if tp + fn else None,
        "confusion_matrix": {
            "rows": "true [human, generated]",
            "columns": "predicted [human, generated]",
            "matrix": matrix.tolist(),
        },
        "roc_auc": roc_auc(y, probs) if 0 < tp + fn < y.size else None,
    }
    if 0 < tp + fn < y.size:
        best, best_f1 = best_threshold(y, probs)
        out["best_threshold_here"] = {"threshold": best, "macro_f1": best_f1}
    else:
        out["best_threshold_here"] = None  # one class only: any threshold is "best"
    return out


def evaluate_predictions(
    bot_labels,
    bot_probs,
    *,
    threshold: float | None = None,
    target_fpr: float | None = None,
    languages: Sequence[str] | None = None,
    english_labels=None,
    english_probs=None,
    n_bootstrap: int = 1000,
    seed: int = 0,
) -> dict[str, Any]:
    """The report: macro-F1 (with CI), confusion matrix, ROC AUC, FPR overall and per language.

    Threshold: ``target_fpr`` → chosen on these rows by :func:`threshold_for_fpr`; else ``threshold``
    (e.g. the model's); else the best macro-F1 threshold on these rows. Rows whose bot label is -1
    (missing) are excluded from the bot metrics and counted in ``n_unlabelled``.
    """
    labels = np.asarray(bot_labels).astype(np.int64).ravel()
    probs = np.asarray(bot_probs, dtype=np.float32).ravel()
    langs = np.asarray(languages if languages is not None else [""] * labels.size, dtype=object)
    if not labels.size == probs.size == langs.size:
        raise ValueError(f"{labels.size} labels, {probs.size} scores and {langs.size} languages differ")
    labelled = labels >= 0
    if not labelled.any():
        raise ValueError("no row has a human/generated label; evaluation needs labelled data")
    y, p, lang = labels[labelled], probs[labelled], langs[labelled]
    if target_fpr is not None:
        chosen = threshold_for_fpr(y, p, target_fpr)
        how = f"largest recall with FPR <= {target_fpr} on this data"
    elif threshold is not None:
        chosen, how = float(threshold), "given"
    else:
        chosen, how = best_threshold(y, p)[0], "best macro-F1 on this data"
    report: dict[str, Any] = {
        "threshold": chosen,
        "threshold_source": how,
        "target_fpr": target_fpr,
        "n": int(labels.size),
        "n_unlabelled": int((~labelled).sum()),
        "overall": _group_report(y, p, chosen, n_bootstrap, seed),
        "per_language": {},
    }
    for name in sorted(set(lang.tolist())):
        rows = lang == name
        report["per_language"][name or "unknown"] = _group_report(y[rows], p[rows], chosen, n_bootstrap, seed)
    if english_labels is not None and english_probs is not None:
        report["language_accuracy"] = language_accuracy(english_labels, english_probs, langs)
    return report



# ---- calibration ----------------------------------------------------------------------------


def calibration_report(
    bot_logits, labels, *, current: calib.Calibration | None, fitted: calib.Calibration | None
) -> dict[str, Any]:
    """ECE of the raw probabilities, of the model's own calibration (if any) and of a fresh fit (if any).

    A fit is measured on the rows it was fitted on and, more honestly, cross-fitted (fit on one half,
    measured on the other, both ways), so a flexible map cannot look better than it is.
    """
    from autext_jax.scores import sigmoid

    z, y = np.asarray(bot_logits, np.float32), np.asarray(labels).astype(np.int64)
    out: dict[str, Any] = {"bins": calib.ECE_BINS, "ece_raw": calib.expected_calibration_error(sigmoid(z), y)}
    if current is not None and current.bot is not None:
        out["ece_model_calibration"] = calib.expected_calibration_error(current.bot_prob(z), y)
    if fitted is not None:
        out["ece_fitted_in_sample"] = calib.expected_calibration_error(fitted.bot_prob(z), y)
        out["ece_fitted_cross_fitted"] = _cross_fitted_ece(z, y, fitted.bot.method)
        out["fitted"] = fitted.to_json()
    return out


def _cross_fitted_ece(z: np.ndarray, y: np.ndarray, method: str) -> float | None:
    halves = np.arange(z.size) % 2 == 0
    probs = np.empty(z.size, np.float32)
    for fit_rows in (halves, ~halves):
        try:
            head = calib.fit_head(z[fit_rows], y[fit_rows], method)
        except calib.CalibrationError:
            return None
        probs[~fit_rows] = calib.Calibration(head).bot_prob(z[~fit_rows])
    return calib.expected_calibration_error(probs, y)


def write_calibrated_copy(model_dir: Path, out_dir: Path, fitted: calib.Calibration) -> Path:
    """``out_dir``: a copy of the model directory with ``calibration.json`` (a new or empty folder only)."""
    if out_dir.resolve() == Path(model_dir).resolve():
        raise UsageError(f"--calibrate {out_dir} is the model directory; give a new folder for the copy")
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise UsageError(f"--calibrate {out_dir} exists and is not an empty folder; give a new folder")
    shutil.copytree(model_dir, out_dir, dirs_exist_ok=True, ignore=shutil.ignore_patterns(calib.FILE_NAME))
    return fitted.save(out_dir)


# ---- plots -----------------------------------------------------------------------------------


def write_plots(out_dir: Path, labels, probs, languages, threshold: float) -> list[Path]:
    """``roc.png``, ``score_histograms.png``, ``macro_f1_vs_threshold.png`` (one curve/panel per language)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = np.asarray(labels).astype(np.int64)
    probs = np.asarray(probs, dtype=np.float32)
    langs = np.asarray(languages, dtype=object)
    groups = [(name or "unknown", langs == name) for name in sorted(set(langs.tolist()))]
    if len(groups) > 1:
        groups.append(("all", np.ones(labels.size, dtype=bool)))
    written = []

    fig, ax = plt.subplots(figsize=(5, 5))
    for name, rows in groups:
        if 0 < labels[rows].sum() < rows.sum():
            fpr, tpr, _ = roc_curve(labels[rows], probs[rows])
            ax.plot(fpr, tpr, label=f"{name} (AUC {roc_auc(labels[rows], probs[rows]):.3f})")
    ax.plot([0, 1], [0, 1], color="grey", linestyle=":")
    ax.set(xlabel="false-positive rate (human flagged)", ylabel="true-positive rate", title="ROC")
    ax.legend(loc="lower right")
    written.append(_save(fig, out_dir / "roc.png"))

    fig, axes = plt.subplots(1, len(groups), figsize=(4.5 * len(groups), 3.5), squeeze=False)
    bins = np.linspace(0.0, 1.0, 41)
    for ax, (name, rows) in zip(axes[0], groups, strict=True):
        for value, class_name in enumerate(CLASS_NAMES):
            ax.hist(probs[rows & (labels == value)], bins=bins, alpha=0.6, label=class_name)
        ax.axvline(threshold, color="black", linestyle="--", label=f"threshold {threshold:.4g}")
        ax.set(title=name, xlabel="bot probability", ylabel="texts")
        ax.legend()
    written.append(_save(fig, out_dir / "score_histograms.png"))

    fig, ax = plt.subplots(figsize=(6, 4))
    for name, rows in groups:
        sw = sweep(labels[rows], probs[rows])  # exact: one point per distinct score, however close to 1
        ax.step(sw.thresholds, sw.macro_f1, where="post", label=name)
    ax.axvline(threshold, color="black", linestyle="--", label=f"chosen {threshold:.4g}")
    ax.set(xlabel="threshold", ylabel="macro-F1", title="macro-F1 vs threshold", ylim=(0, 1))
    ax.legend()
    written.append(_save(fig, out_dir / "macro_f1_vs_threshold.png"))
    return written


def _save(fig, path: Path) -> Path:
    import matplotlib.pyplot as plt

    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


# ---- CLI -------------------------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m autext_jax.evaluate",
        description="Score a labelled data set with a detector; write report.json and PNG plots.",
    )
    parser.add_argument("--model", default=None, help="model dir or Hub id (default: embedded model)")
    parser.add_argument("--data", required=True, nargs="+", help="data files/folders (TSV, CSV, JSONL, ...)")
    parser.add_argument("--format", default="auto", help="data format (default: from the file names)")
    parser.add_argument("--languages", nargs="*", default=None, help="keep only these languages (e.g. en es)")
    choice = parser.add_mutually_exclusive_group()
    choice.add_argument(
        "--threshold", type=cli.threshold_arg, default=None, help="decision threshold on bot_prob"
    )
    choice.add_argument(
        "--target-fpr",
        type=float,
        default=None,
        help="pick the threshold giving at most this false-positive rate on human texts",
    )
    parser.add_argument(
        "--split",
        choices=("all", "train", "validation"),
        default="all",
        help="score only one side of the id-hash split that training uses (default: every row)",
    )
    parser.add_argument("--val-fraction", type=float, default=0.1, help="with --split (as data.val_fraction)")
    parser.add_argument("--split-salt", default="autext", help="with --split (as data.split_salt)")
    parser.add_argument("--output-dir", default="eval_report", help="where report.json and the PNGs go")
    parser.add_argument("--max-length", type=int, default=512)
    parser.add_argument(
        "--no-normalize", action="store_true",
        help="score the raw text (no undoing of invisible characters, look-alike letters, case flips)",
    )
    parser.add_argument("--batch-size", type=int, default=None, help="rows per batch (default: automatic)")
    parser.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples for the 95%% CI")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-plots", action="store_true")
    parser.add_argument("--save-predictions", action="store_true", help="also write predictions.jsonl")
    parser.add_argument(
        "--calibrate",
        metavar="OUT_DIR",
        help="fit calibration and operating points on these rows (use --split validation) and write a "
        "copy of the model directory with calibration.json to OUT_DIR",
    )
    parser.add_argument("--calibration-method", choices=calib.METHODS, default="platt")
    cli.add_debug_flag(parser)
    return parser


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Load, score, measure, write. Returns the report."""
    import autext_jax
    from autext_jax.data.dataset import column_values, load_examples, split_by_id
    from autext_jax.scores import scores_from_logits

    if args.target_fpr is not None and not 0.0 <= args.target_fpr <= 1.0:
        raise UsageError(f"--target-fpr {args.target_fpr} is outside [0, 1]")
    ds = load_examples(args.data, args.format, languages=args.languages)
    if args.split != "all":
        train, val = split_by_id(ds, args.val_fraction, args.split_salt)
        ds = val if args.split == "validation" else train
    if args.calibrate and Path(args.calibrate).exists() and any(Path(args.calibrate).iterdir()):
        raise UsageError(f"--calibrate {args.calibrate} exists and is not an empty folder; give a new folder")
    detector = autext_jax.load(
        args.model, max_length=args.max_length, batch_size=args.batch_size, calibrated=False,
        normalize=not args.no_normalize,
    )
    docs = [doc for _, doc, _ in detector.scored(enumerate(column_values(ds, "text")))]
    logits = {
        "bot": np.float32([d.bot for d in docs]),
        "english": np.float32([d.english for d in docs]),
    }
    probs = scores_from_logits(logits["bot"], logits["english"], 0.5)
    use_model_threshold = args.threshold is None and args.target_fpr is None
    threshold = float(detector.raw_threshold) if use_model_threshold else args.threshold
    languages = column_values(ds, "language")
    bot_labels = np.asarray(column_values(ds, "bot"))
    report = evaluate_predictions(
        bot_labels,
        probs["bot_prob"],
        threshold=threshold,
        target_fpr=args.target_fpr,
        languages=languages,
        english_labels=column_values(ds, "english"),
        english_probs=probs["english_prob"],
        n_bootstrap=args.bootstrap,
        seed=args.seed,
    )
    if use_model_threshold:
        report["threshold_source"] = "the model's configured threshold"
    report["model"] = str(detector.model_dir)
    report["data"] = [str(p) for p in args.data]
    report["normalized"] = not args.no_normalize
    if not args.no_normalize:  # rows where normalization undid an evasion (normalize.py)
        report["obfuscated_rows"] = sum(1 for d in docs if d.facts.get("obfuscated"))
    if args.split != "all":
        report["split"] = {"side": args.split, "val_fraction": args.val_fraction, "salt": args.split_salt}

    labelled = bot_labels >= 0
    fitted = None
    if args.calibrate:
        fitted = calib.fit(
            logits["bot"],
            bot_labels,
            english_logits=logits["english"],
            english_labels=np.asarray(column_values(ds, "english")),
            n_tokens=[d.n_tokens for d in docs],
            method=args.calibration_method,
            fitted_on={
                "data": [str(p) for p in args.data],
                "split": args.split,
                "model": detector.model_dir.name,
            },
        )
        written = write_calibrated_copy(detector.model_dir, Path(args.calibrate), fitted)
        report["calibrated_copy"] = str(written.parent)
    report["calibration"] = calibration_report(
        logits["bot"][labelled],
        bot_labels[labelled],
        current=calib.load(detector.model_dir),
        fitted=fitted,
    )
    out_dir = Path(args.output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "report.json").write_text(json.dumps(report, indent=2, allow_nan=False) + "\n")
    if args.save_predictions:
        _write_predictions(out_dir / "predictions.jsonl", ds, docs, Decision(report["threshold"]))
    if not args.no_plots:
        _reliability_plot(out_dir, logits["bot"][labelled], bot_labels[labelled], detector.model_dir, fitted)
        write_plots(
            out_dir,
            bot_labels[labelled],
            probs["bot_prob"][labelled],
            np.asarray(languages, dtype=object)[labelled],
            report["threshold"],
        )
    return report


def _write_predictions(path: Path, ds, docs, decision: Decision) -> None:
    """One record per row (``records.py``, decided at the report's threshold), with its language and label."""
    from autext_jax.data.dataset import column_values

    builder = RecordBuilder(decision, Layout(ids=True, chunks=False))
    columns = [column_values(ds, name) for name in ("id", "language", "bot")]
    rows = zip(*columns, docs, strict=True)
    with open(path, "w") as f:
        for row_id, language, label, doc in rows:
            record = {**builder.build(doc, id=row_id), "language": language, "label": int(label)}
            f.write(json.dumps(record, allow_nan=False) + "\n")


def _reliability_plot(out_dir: Path, z, y, model_dir, fitted: calib.Calibration | None) -> Path:
    from autext_jax.scores import sigmoid

    curves = {"raw": (sigmoid(z), y)}
    current = calib.load(model_dir)
    if current is not None and current.bot is not None:
        curves["model's calibration.json"] = (current.bot_prob(z), y)
    if fitted is not None:
        curves["fitted here (in sample)"] = (fitted.bot_prob(z), y)
    return calib.reliability_diagram(out_dir / "reliability.png", curves, "reliability of bot_prob")


def _summary(report: dict[str, Any]) -> str:
    lines = [f"threshold {report['threshold']:.6g} ({report['threshold_source']})"]
    for name, group in [("all", report["overall"]), *report["per_language"].items()]:
        ci = group["macro_f1_ci95"]
        ci_text = f" [{ci[0]:.4f}, {ci[1]:.4f}]" if ci else ""
        lines.append(f"{name:>8}: macro-F1 {group['macro_f1']:.4f}{ci_text}  n={group['n']}")
    cal = report.get("calibration", {})
    eces = {k[4:]: v for k, v in cal.items() if k.startswith("ece_") and v is not None}
    lines.append("ECE: " + ", ".join(f"{k} {v:.4f}" for k, v in eces.items()))
    if "calibrated_copy" in report:
        points = cal["fitted"]["operating_points"]
        shown = ", ".join(f"{k}: {v['threshold']:.4g} (recall {v['recall']:.3f})" for k, v in points.items())
        lines.append(f"wrote {report['calibrated_copy']} (operating points {shown})")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """Exit codes as in ``errors.py``: 0 done, 1 bad data or model, 2 bad arguments."""
    parser = _parser()
    return cli.main(parser.prog, parser, _main, argv)


def _main(args: argparse.Namespace) -> int:
    cli.setup_logging("evaluate")
    try:
        report = run(args)
    except ValueError as err:  # an option out of range for this model (max length, batch size, ...)
        if isinstance(err, AutextError):
            raise
        raise UsageError(str(err)) from None
    print(_summary(report))
    print(f"wrote {Path(args.output_dir) / 'report.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
