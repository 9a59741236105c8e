"""``autext_jax.load`` and ``Detector``: loading an exported directory, scores, streaming, errors."""

from __future__ import annotations

import time

import numpy as np
import pytest

import autext_jax
from autext_jax.api import Detector, load
from autext_jax.hub import ModelNotFoundError
from autext_jax.scores import scores_from_logits

TEXTS = ["The results are shown in the table.", "El modelo fue entrenado en español.", "", "  "]


@pytest.fixture(scope="module")
def detector(tiny_model_dir) -> Detector:
    return autext_jax.load(str(tiny_model_dir), batch_size=2, max_length=64)


def test_load_reads_config_model_and_tokenizer(detector, tiny_model_dir, tiny_config):
    assert detector.model_dir == tiny_model_dir
    assert detector.config == tiny_config
    assert detector.threshold == tiny_config.threshold
    assert detector.tokenizer("hola")["input_ids"][0] == 0


def test_score_matches_logits_through_scores(detector):
    scores = detector.score(TEXTS)
    logits = detector.logits(TEXTS)
    assert scores["bot_prob"].dtype == np.float32 and scores["is_bot"].dtype == np.bool_
    assert scores["bot_prob"].shape == scores["english_prob"].shape == (len(TEXTS),)
    want = scores_from_logits(logits["bot"], logits["english"], detector.threshold)
    for key in ("bot_prob", "english_prob", "is_bot"):
        np.testing.assert_array_equal(scores[key], want[key])
    assert len(set(scores["bot_prob"].tolist())) > 1  # different texts, different scores


def test_score_iter_streams_the_same_records(detector):
    records = list(detector.score_iter(iter(TEXTS)))
    scores = detector.score(TEXTS)
    assert [r["bot_prob"] for r in records] == pytest.approx(scores["bot_prob"].tolist(), abs=0)
    assert [r["is_bot"] for r in records] == scores["is_bot"].tolist()
    assert all(r["n_chunks"] == 1 for r in records)
    # Neighbouring texts score apart, so a swapped pair of records would fail the comparison above.
    assert np.abs(np.diff(scores["bot_prob"][:3])).min() > 1e-3


def test_threshold_override_changes_only_is_bot(tiny_model_dir, detector):
    probs = detector.score(TEXTS)["bot_prob"]
    cut = float(np.median(probs))
    strict = load(tiny_model_dir, threshold=cut, batch_size=2, max_length=64)
    np.testing.assert_array_equal(strict.score(TEXTS)["is_bot"], probs >= cut)
    with pytest.raises(ValueError, match="threshold"):
        load(tiny_model_dir, threshold=1.5)


def test_chunked_long_text(tiny_model_dir):
    chunked = load(tiny_model_dir, long="chunk", max_length=32, stride=8, batch_size=2)
    (record,) = chunked.score_iter([" ".join(["the cat sat on the mat"] * 40)])
    assert record["n_chunks"] > 3 and 0.0 < record["bot_prob"] < 1.0


BF16_TOL = 4e-3  # measured worst 2.2e-3 over 4 model seeds


def test_bfloat16_is_close_to_float32(tiny_model_dir, detector):
    half = load(tiny_model_dir, dtype="bfloat16", batch_size=2, max_length=64)
    full = detector.score(TEXTS)
    np.testing.assert_allclose(half.score(TEXTS)["bot_prob"], full["bot_prob"], atol=BF16_TOL, rtol=0)
    # A constant (e.g. 0.5) would fail: the fp32 scores spread far wider than the tolerance.
    assert np.ptp(full["bot_prob"]) > 10 * BF16_TOL
    with pytest.raises(ValueError, match="dtype"):
        load(tiny_model_dir, dtype="float16")


def test_wrong_inputs_fail_clearly(detector, tmp_path):
    with pytest.raises(TypeError, match="list of texts"):
        detector.score("a single string")
    with pytest.raises(TypeError, match="str"):
        detector.score(["ok", None])
    with pytest.raises(ModelNotFoundError, match="does not exist"):
        load(tmp_path / "missing")


def test_offline_hub_id_fails_fast(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    start = time.perf_counter()
    with pytest.raises(ModelNotFoundError, match="local directory"):
        load("someone/not-cached-model-xyz")
    assert time.perf_counter() - start < 10


def test_scoring_and_training_never_import_torch(tiny_model_dir):
    """torch is a test/tooling dependency: loading, scoring and the training modules never import it."""
    import subprocess
    import sys

    code = (
        "import sys, autext_jax, autext_jax.train, autext_jax.evaluate\n"
        f"d = autext_jax.load({str(tiny_model_dir)!r})\n"
        "d.score(['the cat', 'el gato'])\n"
        "print('torch' in sys.modules)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().splitlines()[-1] == "False"


def test_tokenizer_larger_than_the_vocabulary_is_refused(tmp_path, tiny_tokenizer_dir):
    from conftest import TINY_VOCAB, tiny_model_config

    from autext_jax.convert import ConversionError, export_checkpoint
    from autext_jax.model import create_model

    small = tiny_model_config(encoder_changes={"vocab_size": 200})
    export_checkpoint(create_model(small, seed=0), small, tmp_path, tokenizer_dir=tiny_tokenizer_dir)
    message = f"has {TINY_VOCAB} tokens but the model's embedding has 200 rows"
    with pytest.raises(ConversionError, match=message):
        load(tmp_path)
