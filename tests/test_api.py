"""``autext_jax.load`` and ``Detector``: loading an exported directory, scores, streaming, errors."""

from __future__ import annotations

import time

import numpy as np
import pytest

import autext_jax
from autext_jax.api import Detector, load
from autext_jax.hub import ModelNotFoundError
from tests.helpers.torch_scores import reference_logits, sigmoid

REFERENCE_TOL = 1e-5  # float32 JAX (packed rows) against float32 PyTorch (padded rows)
TEXTS = ["The results are shown in the table.", "El modelo fue entrenado en español.", "", "  "]


@pytest.fixture(scope="module")
def detector(tiny_model_dir) -> Detector:
    return autext_jax.load(str(tiny_model_dir), batch_size=2, max_length=64)


def test_load_reads_config_model_and_tokenizer(detector, tiny_model_dir, tiny_config):
    assert detector.model_dir == tiny_model_dir
    assert detector.config == tiny_config
    assert detector.threshold == tiny_config.threshold
    assert detector.tokenizer("hola")["input_ids"][0] == 0


def test_scores_are_the_pytorch_reference_and_its_threshold(detector, tiny_model_dir):
    scores = detector.score(TEXTS)
    assert scores["bot_prob"].dtype == np.float32 and scores["is_bot"].dtype == np.bool_
    windows = detector.tokenizer(TEXTS, truncation=True, max_length=64)["input_ids"]
    bot, english = reference_logits(tiny_model_dir, windows)
    np.testing.assert_allclose(scores["bot_prob"], sigmoid(bot), atol=REFERENCE_TOL, rtol=0)
    np.testing.assert_allclose(scores["english_prob"], sigmoid(english), atol=REFERENCE_TOL, rtol=0)
    # The decision, by hand: no score sits within the tolerance of the threshold, so it is unambiguous.
    assert np.abs(sigmoid(bot) - detector.threshold).min() > 10 * REFERENCE_TOL
    assert scores["is_bot"].tolist() == (sigmoid(bot) >= detector.threshold).tolist()
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
    windows = detector.tokenizer(TEXTS, truncation=True, max_length=64)["input_ids"]
    want = sigmoid(reference_logits(tiny_model_dir, windows)[0])
    cut = float(np.sort(want)[1:3].mean())  # halfway between the 2nd and 3rd scores: both decisions occur
    assert np.abs(want - cut).min() > 10 * REFERENCE_TOL  # no score on the edge
    strict = load(tiny_model_dir, threshold=cut, batch_size=2, max_length=64)
    scores = strict.score(TEXTS)
    assert scores["is_bot"].tolist() == (want >= cut).tolist() and 0 < scores["is_bot"].sum() < len(TEXTS)
    np.testing.assert_array_equal(scores["bot_prob"], detector.score(TEXTS)["bot_prob"])
    with pytest.raises(ValueError, match="threshold"):
        load(tiny_model_dir, threshold=1.5)


def test_chunked_long_text_is_the_token_weighted_mean_of_its_windows(tiny_model_dir):
    chunked = load(tiny_model_dir, long="chunk", max_length=32, stride=8, batch_size=2)
    text = " ".join(["the cat sat on the mat"] * 40)
    (record,) = chunked.score_iter([text])
    ids = chunked.tokenizer(text, add_special_tokens=False)["input_ids"]
    body, step = 32 - 2, 32 - 2 - 8  # windows of 32 tokens with <s> and </s>, 8 shared
    windows = [[0, *ids[s : s + body], 2] for s in range(0, len(ids) - 8, step)]
    bot, english = reference_logits(tiny_model_dir, windows)
    weights = np.array([len(w) for w in windows], np.float64)
    assert (record["n_chunks"], record["n_tokens"]) == (len(windows), weights.sum()) and len(windows) > 3
    mean_bot, mean_english = weights @ bot / weights.sum(), weights @ english / weights.sum()
    assert record["bot_prob"] == pytest.approx(sigmoid(mean_bot), abs=REFERENCE_TOL)
    assert record["english_prob"] == pytest.approx(sigmoid(mean_english), abs=REFERENCE_TOL)
    # The first window alone (what truncation scores) is far from the mean: the comparison can fail.
    assert abs(sigmoid(bot[0]) - record["bot_prob"]) > 10 * REFERENCE_TOL


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
