"""The embedded default model: it loads offline, scores EN/ES sensibly, and its files match the model card."""

from __future__ import annotations

import hashlib
import json
import re

import numpy as np
import pytest

import autext_jax
from autext_jax import calibration as calib
from autext_jax import infer
from autext_jax.hub import DEFAULT_MODEL_DIR

CARD = DEFAULT_MODEL_DIR / "MODEL_CARD.md"
ENGLISH = [
    "The Commission shall publish the report every two years and submit it to the Council.",
    "To replace the filter, first switch off the unit and remove the front cover.",
    "can't believe the game last night, totally worth staying up for",
]
SPANISH = [
    "El presente Reglamento entrará en vigor a los veinte días de su publicación.",
    "Para cambiar la rueda, afloja primero las tuercas con la llave.",
    "no me puedo creer que mañana ya sea lunes otra vez",
]


@pytest.fixture(scope="module")
def detector():
    return autext_jax.load()


def test_default_model_is_the_embedded_directory(detector) -> None:
    assert detector.model_dir == DEFAULT_MODEL_DIR
    assert detector.raw_threshold == json.loads((DEFAULT_MODEL_DIR / "config.json").read_text())["threshold"]
    total = sum(p.stat().st_size for p in DEFAULT_MODEL_DIR.iterdir())
    assert total <= 50 * 2**20


def test_default_model_tells_english_from_spanish(detector) -> None:
    scores = detector.score(ENGLISH + SPANISH)
    n = len(ENGLISH)
    assert (scores["english_prob"][:n] > 0.9).all(), scores["english_prob"]
    assert (scores["english_prob"][n:] < 0.1).all(), scores["english_prob"]
    assert ((scores["bot_prob"] >= 0) & (scores["bot_prob"] <= 1)).all()
    np.testing.assert_array_equal(scores["is_bot"], scores["bot_prob"] >= np.float32(detector.threshold))


def test_shipped_files_match_the_model_card_checksums() -> None:
    listed = dict(
        (name, digest) for digest, name in re.findall(r"sha256 ([0-9a-f]{64})  (\S+)", CARD.read_text())
    )
    shipped = {p.name for p in DEFAULT_MODEL_DIR.iterdir() if p.is_file() and p != CARD}
    assert set(listed) == shipped
    for name, digest in listed.items():
        assert hashlib.sha256((DEFAULT_MODEL_DIR / name).read_bytes()).hexdigest() == digest, name


def test_default_model_ships_a_calibration_fitted_off_the_holdout(detector) -> None:
    """The README's promise: calibrated probabilities, three operating points, a ``short`` length."""
    fitted = calib.load(DEFAULT_MODEL_DIR)
    assert fitted is not None and fitted.bot is not None and fitted.english is not None
    assert set(detector.operating_points) == {"fpr=0.001", "fpr=0.01", "fpr=0.05"}
    assert "fit half" in fitted.fitted_on["split"]  # never the hold-out half the model card reports on
    assert detector.min_tokens == fitted.min_tokens
    # The reported threshold is the raw one mapped onto the calibrated scale: the decisions do not change.
    raw_logit = np.log(detector.raw_threshold) - np.log1p(-detector.raw_threshold)
    mapped = 1 / (1 + np.exp(-(fitted.bot.scale * raw_logit + fitted.bot.bias)))
    assert detector.threshold == pytest.approx(mapped, rel=1e-6)
    raw = autext_jax.load(calibrated=False).score(ENGLISH + SPANISH)
    np.testing.assert_array_equal(detector.score(ENGLISH + SPANISH)["is_bot"], raw["is_bot"])


def test_cli_operating_point_with_the_default_model(capsys) -> None:
    assert infer.main([ENGLISH[0], SPANISH[0], "--operating-point", "fpr=0.01"]) == 0
    records = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    point = calib.load(DEFAULT_MODEL_DIR).operating_points["fpr=0.01"]
    assert [r["operating_point"] for r in records] == ["fpr=0.01"] * 2
    assert [r["is_bot"] for r in records] == [r["bot_prob"] >= point.threshold for r in records]


def test_cli_without_model_uses_the_default(capsys) -> None:
    assert infer.main([ENGLISH[0], SPANISH[0], "--verbose"]) == 0
    captured = capsys.readouterr()
    records = [json.loads(line) for line in captured.out.splitlines()]
    assert [r["id"] for r in records] == [0, 1]
    assert records[0]["english_prob"] > 0.9 > 0.1 > records[1]["english_prob"]
    assert "the embedded default model" in captured.err
