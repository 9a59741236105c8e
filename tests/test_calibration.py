"""Calibration: fits recover known maps, ECE, the file, ``evaluate --calibrate`` and CLI flags end to end."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

import autext_jax
from autext_jax import calibration as calib
from autext_jax import evaluate as ev
from autext_jax import infer

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def synthetic(n: int, scale: float, bias: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Raw logits and labels drawn from ``sigmoid(scale * logit + bias)``: the true calibration map."""
    rng = np.random.default_rng(seed)
    z = rng.normal(0.0, 3.0, n).astype(np.float32)
    y = (rng.random(n) < 1 / (1 + np.exp(-(scale * z + bias)))).astype(np.int64)
    return z, y


def test_temperature_fit_recovers_a_known_temperature():
    z, y = synthetic(40_000, scale=1 / 2.5, bias=0.0, seed=0)
    head = calib.fit_head(z, y, "temperature")
    assert head.method == "temperature" and head.bias == 0.0
    assert head.temperature == pytest.approx(2.5, rel=0.05)


def test_platt_fit_recovers_scale_and_bias():
    z, y = synthetic(40_000, scale=0.5, bias=-1.0, seed=1)
    head = calib.fit_head(z, y, "platt")
    assert head.scale == pytest.approx(0.5, rel=0.05) and head.bias == pytest.approx(-1.0, abs=0.08)


def test_ece_is_small_when_calibrated_and_fitting_lowers_it():
    z, y = synthetic(40_000, scale=1 / 3, bias=0.5, seed=2)
    true_probs = 1 / (1 + np.exp(-(z / 3 + 0.5)))
    assert calib.expected_calibration_error(true_probs, y) < 0.02
    raw = 1 / (1 + np.exp(-z))
    fitted = calib.fit(z, y)
    assert calib.expected_calibration_error(raw, y) > 0.1
    assert calib.expected_calibration_error(fitted.bot_prob(z), y) < 0.02
    assert calib.expected_calibration_error(np.ones(4), [1, 1, 1, 1]) == 0.0


def test_fit_refuses_one_class_and_an_inverted_head():
    z, y = synthetic(1000, scale=1.0, bias=0.0, seed=3)
    with pytest.raises(calib.CalibrationError, match="both classes"):
        calib.fit_head(z, np.zeros_like(y))
    with pytest.raises(calib.CalibrationError, match="not positive"):
        calib.fit_head(z, 1 - y)


def test_operating_points_meet_their_fpr_and_round_trip(tmp_path):
    z, y = synthetic(5000, scale=0.7, bias=0.3, seed=4)
    fitted = calib.fit(z, y, n_tokens=np.arange(100), fitted_on={"data": ["x"]})
    assert set(fitted.operating_points) == {"fpr=0.001", "fpr=0.01", "fpr=0.05"}
    for name, point in fitted.operating_points.items():
        flagged = z >= np.float32(point.raw_logit)
        assert flagged[y == 0].mean() <= point.target_fpr == float(name[4:])
        assert flagged[y == 0].mean() == pytest.approx(point.fpr)
        assert point.threshold == pytest.approx(float(fitted.bot_prob(np.float32([point.raw_logit]))[0]))
    recalls = [fitted.operating_points[k].recall for k in ("fpr=0.001", "fpr=0.01", "fpr=0.05")]
    assert recalls == sorted(recalls) and recalls[-1] > recalls[0]
    assert fitted.min_tokens == 4  # 5th percentile of 0..99
    fitted.save(tmp_path)
    assert calib.load(tmp_path) == fitted
    (tmp_path / calib.FILE_NAME).write_text('{"bot": {"method": "cubic"}}')
    with pytest.raises(calib.CalibrationError, match="calibration"):
        calib.load(tmp_path)
    assert calib.load(tmp_path / "nowhere") is None


# ---- end to end -------------------------------------------------------------------------------

WORDS = "the of and to in is that it for on with as was by el la de que y en los se del las".split()


@pytest.fixture(scope="module")
def labelled_data(tmp_path_factory, tiny_model_dir) -> Path:
    """en/ and es/ TSVs whose labels follow the tiny model's bot logit (with noise)."""
    rng = np.random.default_rng(7)
    texts = {
        lang: [" ".join(rng.choice(WORDS, size=int(rng.integers(3, 30)))) for _ in range(60)]
        for lang in ("en", "es")
    }
    detector = autext_jax.load(str(tiny_model_dir), max_length=64)
    root = tmp_path_factory.mktemp("cal_data")
    for lang, rows in texts.items():
        z = detector.logits(rows)["bot"]
        spread = max(float(z.std()), 1e-6)
        # ~80% generated while the raw probabilities sit near 0.5: far from calibrated
        labels = rng.random(z.size) < 1 / (1 + np.exp(-(z - np.quantile(z, 0.2)) / spread * 2))
        (root / lang).mkdir()
        pairs = enumerate(zip(rows, labels, strict=True))
        lines = ["id\ttext\tlabel"] + [f"{i}\t{t}\t{'generated' if g else 'human'}" for i, (t, g) in pairs]
        (root / lang / "val.tsv").write_text("\n".join(lines) + "\n")
    return root


def test_evaluate_calibrate_writes_a_calibrated_copy(tmp_path, tiny_model_dir, labelled_data, capsys):
    copy, out = tmp_path / "calibrated", tmp_path / "report"
    argv = ["--model", str(tiny_model_dir), "--data", str(labelled_data), "--bootstrap", "0"]
    assert ev.main([*argv, "--output-dir", str(out), "--calibrate", str(copy)]) == 0
    assert "ECE: raw" in capsys.readouterr().out
    assert sorted(p.name for p in copy.iterdir()) == sorted(
        [p.name for p in Path(tiny_model_dir).iterdir()] + [calib.FILE_NAME]
    )
    report = json.loads((out / "report.json").read_text())
    cal = report["calibration"]
    assert cal["ece_fitted_in_sample"] < cal["ece_raw"] and cal["ece_fitted_cross_fitted"] is not None
    assert (out / "reliability.png").read_bytes()[:8] == PNG_MAGIC
    fitted = calib.load(copy)
    assert fitted.fitted_on["rows"] == 120 and fitted.bot.method == "platt"

    raw = autext_jax.load(str(tiny_model_dir), max_length=64)
    calibrated = autext_jax.load(str(copy), max_length=64)
    texts = [line.split("\t")[1] for line in (labelled_data / "en" / "val.tsv").read_text().splitlines()[1:]]
    np.testing.assert_array_equal(raw.score(texts)["is_bot"], calibrated.score(texts)["is_bot"])

    # Evaluating the calibrated copy reports what its calibration.json does, with the same decisions.
    out2 = tmp_path / "report2"
    assert ev.main(["--model", str(copy), "--data", str(labelled_data), "--bootstrap", "0",
                    "--output-dir", str(out2)]) == 0
    report2 = json.loads((out2 / "report.json").read_text())
    assert report2["calibration"]["ece_model_calibration"] == pytest.approx(cal["ece_fitted_in_sample"])
    assert report2["overall"]["macro_f1"] == report["overall"]["macro_f1"]
    # A folder that is not empty is refused before anything is scored.
    assert ev.main([*argv, "--output-dir", str(out), "--calibrate", str(copy)]) == 2
    assert "not an empty folder" in capsys.readouterr().err


def test_infer_operating_point_and_segments_flags(tmp_path, tiny_model_dir, labelled_data, capsys):
    copy = tmp_path / "calibrated"
    base = ["--model", str(tiny_model_dir), "--data", str(labelled_data), "--bootstrap", "0", "--no-plots"]
    assert ev.main([*base, "--output-dir", str(tmp_path / "r"), "--calibrate", str(copy)]) == 0
    text = "The cat sat on the mat. " * 4 + "El gato se sentó en la alfombra. " * 4
    out = tmp_path / "out.jsonl"
    argv = [text, "hola", "--model", str(copy), "--max-length", "64", "--quiet", "-o", str(out)]
    assert infer.main([*argv, "--operating-point", "fpr=0.05", "--segments", "sentence"]) == 0
    records = [json.loads(line) for line in out.read_text().splitlines()]
    detector = autext_jax.load(str(copy), max_length=64)
    want = detector.score_records([text, "hola"], segments="sentence", operating_point="fpr=0.05")
    assert [{k: v for k, v in r.items() if k != "id"} for r in records] == [
        {k: v for k, v in r.items() if k != "n_chunks"} for r in want  # n_chunks: only with --long chunk
    ]
    assert records[0]["operating_point"] == "fpr=0.05" and len(records[0]["segments"]) > 1
    assert records[1]["short"] is True

    csv_out = tmp_path / "out.csv"
    argv[-1] = str(csv_out)
    assert infer.main([*argv, "--segments", "sentence", "--format", "csv"]) == 0
    rows = list(csv.DictReader(csv_out.open()))
    assert json.loads(rows[0]["segments"]) == want[0]["segments"] and "operating_point" not in rows[0]

    capsys.readouterr()
    assert infer.main([*argv, "--operating-point", "fpr=0.3"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "operating point 'fpr=0.3' is not stored" in err[0]
