"""Evaluation metrics agree with scikit-learn; the report and the CLI describe what the model did."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import numpy as np
import pytest
from conftest import scores_with_labels as _scores
from sklearn import metrics as skm

from autext_jax import evaluate as ev
from autext_jax import metrics
from autext_jax.api import load

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(autouse=True, scope="module")
def _private_datasets_cache(tmp_path_factory):
    """Keep the parsed test files out of the user's ``datasets`` cache."""
    import datasets

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path_factory.mktemp("datasets_cache"))
        yield


def test_report_per_language_and_missing_labels():
    labels, probs = _scores(120, 8)
    languages = np.array(["en"] * 70 + ["es"] * 50, dtype=object)
    labels = labels.copy()
    labels[:5] = -1  # unlabelled rows are counted, not scored
    english = (languages == "en").astype(int)
    english_probs = np.where(english == 1, 0.9, 0.1).astype(np.float32)
    english_probs[-10:] = 0.8  # the language head gets 10 Spanish rows wrong
    report = ev.evaluate_predictions(
        labels, probs, threshold=0.5, languages=languages, english_labels=english,
        english_probs=english_probs, n_bootstrap=100,
    )
    assert report["threshold"] == 0.5 and report["threshold_source"] == "given"
    assert report["n"] == 120 and report["n_unlabelled"] == 5
    assert set(report["per_language"]) == {"en", "es"}
    for name, rows in (("en", slice(5, 70)), ("es", slice(70, 120))):
        group = report["per_language"][name]
        pred = probs[rows] >= 0.5
        assert group["n"] == len(labels[rows])
        assert group["macro_f1"] == pytest.approx(skm.f1_score(labels[rows], pred, average="macro"))
        assert group["confusion_matrix"]["matrix"] == skm.confusion_matrix(labels[rows], pred).tolist()
        low, high = group["macro_f1_ci95"]
        assert low <= group["macro_f1"] <= high
    assert report["overall"]["n"] == 115
    accuracy = report["language_accuracy"]
    assert accuracy["en"] == 1.0 and accuracy["es"] == pytest.approx(0.8) and accuracy["n"] == 120
    by_fpr = ev.evaluate_predictions(labels, probs, target_fpr=0.1, languages=languages, n_bootstrap=0)
    assert by_fpr["overall"]["false_positive_rate"] <= 0.1 and by_fpr["overall"]["macro_f1_ci95"] is None
    best = ev.evaluate_predictions(labels, probs, languages=languages, n_bootstrap=0)
    assert best["threshold_source"].startswith("best")
    assert best["overall"]["macro_f1"] >= report["overall"]["macro_f1"]
    assert json.loads(json.dumps(report)) == report  # JSON-serialisable as is
    with pytest.raises(ValueError, match="no row has a human/generated label"):
        ev.evaluate_predictions([-1, -1], [0.1, 0.2])


def test_plots_are_written(tmp_path):
    labels, probs = _scores(100, 9)
    languages = np.array(["en", "es"] * 50, dtype=object)
    written = ev.write_plots(tmp_path, labels, probs, languages, threshold=0.5)
    assert {p.name for p in written} == {"roc.png", "score_histograms.png", "macro_f1_vs_threshold.png"}
    for path in written:
        assert path.read_bytes()[:8] == PNG_MAGIC and path.stat().st_size > 5000


# ---- CLI -------------------------------------------------------------------------------------


def _eval_rows() -> list[tuple[int, str, int]]:
    """``(id, text, label)`` of each language's fixture file; label 1 = generated."""
    words = "the of and to in is el la de que y en".split()
    return [
        (i, " ".join(words[(i * 7 + k) % len(words)] for k in range(3 + i % 9)), int(i % 3 != 0))
        for i in range(24)
    ]


def _write_eval_data(root: Path) -> Path:
    for lang in ("en", "es"):
        (root / lang).mkdir(parents=True)
        lines = ["id\ttext\tlabel"]
        for i, text, label in _eval_rows():
            lines.append(f"{i}\t{text}\t{'generated' if label else 'human'}")
        with gzip.open(root / lang / "test.tsv.gz", "wt") as f:
            f.write("\n".join(lines) + "\n")
    return root


def test_cli_writes_report_plots_and_predictions(tmp_path, tiny_model_dir):
    # The expected F1 comes from the fixture's own labels and the Python API's scores, not from the run;
    # the threshold is their median, so both classes are predicted and a misaligned score changes the F1.
    _, texts, labels = zip(*_eval_rows(), strict=True)
    scores = load(tiny_model_dir).score(list(texts))
    probs = scores["bot_prob"]
    cut = float(np.median(probs))
    predicted = probs >= cut
    assert 0 < predicted.sum() < len(texts)
    expected = skm.f1_score(labels, predicted, average="macro")
    data = _write_eval_data(tmp_path / "data")
    out = tmp_path / "out"
    argv = ["--model", str(tiny_model_dir), "--data", str(data), "--output-dir", str(out)]
    argv += ["--bootstrap", "50"]
    assert ev.main([*argv, "--save-predictions", "--threshold", repr(cut)]) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["threshold_source"] == "given" and report["threshold"] == cut
    assert {k: v["n"] for k, v in report["per_language"].items()} == {"en": 24, "es": 24}
    rows = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    assert len(rows) == 48
    assert all(r["is_bot"] == (np.float32(r["bot_prob"]) >= cut) for r in rows)
    for lang in ("en", "es"):
        assert report["per_language"][lang]["macro_f1"] == pytest.approx(expected, abs=1e-12)
    # Both folders hold the same texts: English rows are right where the head says English, Spanish
    # rows where it does not, so the accuracy is exactly 1/2 overall and the head's share per language.
    english_share = float((scores["english_prob"] >= 0.5).mean())
    assert english_share != 0.5  # else swapped languages would give the same numbers
    assert report["language_accuracy"] == {"n": 48, "accuracy": 0.5, "en": english_share,
                                           "es": 1 - english_share}
    for name in ("roc.png", "score_histograms.png", "macro_f1_vs_threshold.png"):
        assert (out / name).read_bytes()[:8] == PNG_MAGIC

    assert ev.main([*argv, "--target-fpr", "0.25", "--no-plots"]) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["target_fpr"] == 0.25 and report["overall"]["false_positive_rate"] <= 0.25


def test_cli_split_scores_exactly_the_training_validation_rows(tmp_path, tiny_model_dir):
    from autext_jax.data.dataset import column_values, load_examples, split_by_id

    data = _write_eval_data(tmp_path / "data")
    out = tmp_path / "out"
    argv = ["--model", str(tiny_model_dir), "--data", str(data), "--output-dir", str(out), "--no-plots"]
    argv += ["--bootstrap", "0", "--split", "validation", "--val-fraction", "0.3", "--save-predictions"]
    assert ev.main(argv) == 0
    _, val = split_by_id(load_examples([str(data)]), 0.3, "autext")
    rows = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    assert 0 < len(rows) < 48
    assert [(r["language"], r["id"]) for r in rows] == list(
        zip(column_values(val, "language"), column_values(val, "id"), strict=True)
    )
    report = json.loads((out / "report.json").read_text())
    assert report["split"] == {"side": "validation", "val_fraction": 0.3, "salt": "autext"}


def test_cli_errors_are_one_line(tmp_path, capsys):
    assert ev.main(["--data", str(tmp_path / "missing.tsv"), "--output-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("python -m autext_jax.evaluate: error:")
    assert "does not exist" in err and "\n" not in err
    (tmp_path / "bad.tsv").write_text("id\ttext\tlabel\n1\thi\tperhaps\n")
    assert ev.main(["--data", str(tmp_path / "bad.tsv"), "--output-dir", str(tmp_path)]) == 1  # bad data
    assert "'perhaps'" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:  # argparse: the two threshold options exclude each other
        ev.main(["--data", "x", "--threshold", "0.5", "--target-fpr", "0.1"])
    assert exit_info.value.code == 2
    assert ev.main(["--data", str(tmp_path / "bad.tsv"), "--target-fpr", "2"]) == 2
    assert "--target-fpr 2.0 is outside [0, 1]" in capsys.readouterr().err


def test_non_finite_scores_are_an_error_naming_how_many(tmp_path):
    labels, probs = _scores(50, 3)
    probs = probs.copy()
    probs[[1, 7, 9]] = [np.nan, np.inf, np.nan]
    with pytest.raises(metrics.NonFiniteScores, match="3 of 50 scores are not finite"):
        ev.evaluate_predictions(labels, probs, threshold=0.5, n_bootstrap=0)
    with pytest.raises(metrics.NonFiniteScores):
        metrics.best_threshold(labels, probs)


def test_threshold_tuning_on_one_class_is_refused():
    probs = np.linspace(0.1, 0.9, 20, dtype=np.float32)
    with pytest.raises(metrics.OneClassError, match="20 human and 0 generated rows"):
        metrics.best_threshold(np.zeros(20, int), probs)
    with pytest.raises(metrics.OneClassError):
        ev.evaluate_predictions(np.ones(20, int), probs, n_bootstrap=0)
    # A given threshold still evaluates one-class data (e.g. a human-only test set), without "best" claims.
    report = ev.evaluate_predictions(np.zeros(20, int), probs, threshold=0.5, n_bootstrap=0)
    overall = report["overall"]
    assert overall["best_threshold_here"] is None and overall["false_positive_rate"] == 0.5


def test_cli_on_nan_predictions_is_an_error_naming_how_many(tmp_path, tiny_model_dir, capsys, monkeypatch):
    from autext_jax.api import Detector
    from autext_jax.engine import DocLogits

    rows = ["id\ttext\tlabel", "1\tthe cat\thuman", "2\tel gato\tgenerated", "3\tla\thuman"]
    (tmp_path / "d.tsv").write_text("\n".join(rows) + "\n")

    def nan_scored(self, items, **_):
        for (tag, _), bot in zip(items, [0.1, np.nan, np.nan], strict=True):
            yield tag, DocLogits(bot, 0.0, 1, 4), None

    monkeypatch.setattr(Detector, "scored", nan_scored)
    argv = ["--model", str(tiny_model_dir), "--data", str(tmp_path / "d.tsv"), "--output-dir", str(tmp_path)]
    assert ev.main(argv) == 1
    last = capsys.readouterr().err.strip().splitlines()[-1]  # (after the datasets progress bars)
    assert last.startswith("python -m autext_jax.evaluate: error: 2 of 3 scores are not finite")
    assert not (tmp_path / "report.json").exists()
