"""``tools.calibrate_default_model``: fitted on half of the validation split, checked on the other half."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

import autext_jax
from autext_jax import calibration as calib
from autext_jax.data.dataset import column_values, load_examples, split_by_id
from tools import calibrate_default_model as tool

WORDS = "the of and to in is that it for on with as was by el la de que y en los se del las".split()


@pytest.fixture(autouse=True, scope="module")
def _private_datasets_cache(tmp_path_factory):
    """Keep the parsed test files out of the user's ``datasets`` cache."""
    import datasets

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path_factory.mktemp("datasets_cache"))
        yield


def test_wilson_interval_matches_published_values():
    low, high = tool.wilson_interval(5, 100)
    assert (round(low, 4), round(high, 4)) == (0.0215, 0.1118)
    low, high = tool.wilson_interval(0, 100)  # no false positives seen still allows up to ~3.7%
    assert low == 0.0 and round(high, 4) == 0.037


def test_measure_counts_false_positives_and_recall_per_language():
    rows = {
        "bot": np.float32([-2, -1, 0.5, 1, 2, -3, 0.2, 3, 0.7]),
        "bot_label": np.int64([0, 0, 0, 1, 1, 0, 0, 1, -1]),  # the last row is unlabelled: ignored
        "language": np.array(["en"] * 5 + ["es"] * 4, dtype=object),
    }
    point = calib.OperatingPoint(0.01, raw_logit=0.4, threshold=0.6, fpr=0.01, recall=0.9)
    result = tool.measure(calib.Calibration(operating_points={"fpr=0.01": point}), rows)
    en, es, both = (result[g]["operating_points"]["fpr=0.01"] for g in ("en", "es", "all"))
    assert en["false_positives"] == 1 and en["fpr"] == pytest.approx(1 / 3)  # 0.5 >= 0.4
    assert es["false_positives"] == 0 and es["fpr"] == 0.0  # 0.2 < 0.4
    assert both["false_positives"] == 1 and both["fpr"] == pytest.approx(1 / 5)
    assert en["recall"] == 1.0 and es["recall"] == 1.0
    assert result["all"]["rows"] == 8 and result["all"]["human"] == 5


@pytest.fixture(scope="module")
def labelled_folder(tmp_path_factory, tiny_model_dir):
    """en/ and es/ official-format TSVs whose labels follow the tiny model's bot logit (with noise)."""
    rng = np.random.default_rng(11)
    detector = autext_jax.load(str(tiny_model_dir), max_length=64)
    root = tmp_path_factory.mktemp("subtask_1")
    for lang in ("en", "es"):
        texts = [" ".join(rng.choice(WORDS, size=int(rng.integers(3, 25)))) for _ in range(700)]
        z = detector.logits(texts)["bot"]
        generated = rng.random(z.size) < 1 / (1 + np.exp(-(z - np.median(z)) / max(float(z.std()), 1e-6) * 3))
        (root / lang).mkdir()
        lines = ["id\ttext\tlabel"]
        pairs = enumerate(zip(texts, generated, strict=True))
        lines += [f"{i}\t{t}\t{'generated' if g else 'human'}" for i, (t, g) in pairs]
        (root / lang / "train.tsv").write_text("\n".join(lines) + "\n")
    return root


def test_fit_and_holdout_halves_partition_the_validation_split(labelled_folder):
    fit, holdout = tool.split_validation([str(labelled_folder)])
    _, validation = split_by_id(load_examples([str(labelled_folder)]), 0.1, "autext")
    key = lambda ds: set(zip(column_values(ds, "language"), column_values(ds, "id"), strict=True))  # noqa: E731
    assert key(fit) and key(holdout) and not key(fit) & key(holdout)
    assert key(fit) | key(holdout) == key(validation)


def test_tool_writes_a_calibration_whose_holdout_report_the_api_reproduces(
    tmp_path, labelled_folder, tiny_model_dir, capsys
):
    model = tmp_path / "model"
    shutil.copytree(tiny_model_dir, model)
    report_dir = tmp_path / "report"
    argv = ["--data", str(labelled_folder), "--model", str(model), "--report", str(report_dir)]
    assert tool.main(argv) == 0
    assert "fpr=0.01" in capsys.readouterr().out
    report = json.loads((report_dir / "report.json").read_text())
    fitted = calib.load(model)
    assert set(fitted.operating_points) == {"fpr=0.001", "fpr=0.01", "fpr=0.05"}
    assert "fit half" in fitted.fitted_on["split"]

    # The hold-out FPR the tool reports is what the API's own decision at that operating point gives.
    _, holdout = tool.split_validation([str(labelled_folder)])
    texts, labels = column_values(holdout, "text"), np.asarray(column_values(holdout, "bot"))
    detector = autext_jax.load(str(model), max_length=512)
    assert report["holdout"]["all"]["rows"] == len(texts)
    for name in fitted.operating_points:
        flagged = detector.score(texts, operating_point=name)["is_bot"]
        point = report["holdout"]["all"]["operating_points"][name]
        assert point["false_positives"] == int(flagged[labels == 0].sum())
        assert point["recall"] == pytest.approx(float(flagged[labels == 1].mean()))
    assert (report_dir / "report.md").read_text().startswith("| rows | operating point |")


def test_tool_errors_are_one_line(tmp_path, capsys):
    assert tool.main(["--data", str(tmp_path / "missing"), "--report", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "\n" not in err
