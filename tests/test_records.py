"""``Detector.score_records``: the record shape, calibration (same decisions), operating points, segments."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

import autext_jax
from autext_jax import calibration as calib
from autext_jax import segments as seg
from autext_jax.errors import UsageError

WORDS = "the of and to in is that it for on with as was by this are be at from el la de que y en los".split()


def make_texts(n: int, seed: int) -> list[str]:
    """Texts of one to four sentences of varied length (so their scores differ)."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        sentences = []
        for _ in range(int(rng.integers(1, 5))):
            words = rng.choice(WORDS, size=int(rng.integers(3, 12)))
            sentences.append(" ".join(words).capitalize() + ".")
        out.append(" ".join(sentences))
    return out


@pytest.fixture(scope="module")
def detector(tiny_model_dir):
    return autext_jax.load(str(tiny_model_dir), max_length=64)


def noisy_labels(z: np.ndarray, seed: int) -> np.ndarray:
    """Labels that follow ``z`` with noise (a head worth calibrating, far from calibrated)."""
    rng = np.random.default_rng(seed)
    spread = max(float(z.std()), 1e-6)
    return (rng.random(z.size) < 1 / (1 + np.exp(-(z - np.median(z)) / spread * 2))).astype(np.int64)


@pytest.fixture(scope="module")
def labelled(detector):
    texts = make_texts(200, seed=1)
    z = detector.logits(texts)["bot"]
    return texts, z, noisy_labels(z, 2)


@pytest.fixture(scope="module")
def calibrated_dir(tmp_path_factory, tiny_model_dir, detector, labelled):
    texts, z, labels = labelled
    out = tmp_path_factory.mktemp("calibrated") / "model"
    shutil.copytree(tiny_model_dir, out)
    english = detector.logits(texts)["english"]
    fitted = calib.fit(
        z, labels, english_logits=english, english_labels=noisy_labels(english, 3), n_tokens=[40] * len(texts)
    )
    fitted.save(out)
    return out


def test_record_shape_n_tokens_and_short(detector):
    long_text = " ".join(["the cat sat on the mat"] * 3)
    records = detector.score_records([long_text, "hi", ""])
    assert [sorted(r) for r in records] == [
        ["bot_prob", "english_prob", "is_bot", "n_changed", "n_chunks", "n_tokens", "obfuscated", "short",
         "truncated"]
    ] * 3
    assert [(r["obfuscated"], r["n_changed"]) for r in records] == [(False, 0)] * 3
    assert [r["truncated"] for r in records] == [False] * 3
    n_long = len(detector.tokenizer(long_text)["input_ids"])
    assert records[0]["n_tokens"] == n_long and records[2]["n_tokens"] == 2
    assert [r["short"] for r in records] == [n_long < calib.DEFAULT_MIN_TOKENS, True, True]
    scores = detector.score([long_text, "hi", ""])
    assert [r["bot_prob"] for r in records] == scores["bot_prob"].tolist()
    assert [r["is_bot"] for r in records] == scores["is_bot"].tolist()


def test_sentence_segments_tile_the_text_and_are_scored_alone(detector):
    text = "  " + " ".join(make_texts(6, seed=5)) + "\n"
    (record,) = detector.score_records([text], segments="sentence")
    segments = record["segments"]
    assert len(segments) > 1
    assert segments[0]["start"] == 0 and segments[-1]["end"] == len(text)
    assert all(a["end"] == b["start"] for a, b in zip(segments, segments[1:], strict=False))
    sentence_starts = {a for a, _ in seg.sentence_spans(text, "en")}
    assert all(s["start"] in sentence_starts for s in segments[1:])  # whole sentences only
    counts = seg.token_counts(detector.tokenizer, [text[s["start"] : s["end"]] for s in segments])
    assert all(n >= seg.MIN_SEGMENT_TOKENS for n in counts)
    alone = detector.score([text[s["start"] : s["end"]] for s in segments])["bot_prob"]
    np.testing.assert_allclose([s["bot_prob"] for s in segments], alone, atol=1e-6)


def test_one_sentence_text_is_one_segment_with_the_document_score(detector):
    records = detector.score_records(["The cat sat on the mat.", "   "], segments="sentence")
    whole = {"start": 0, "end": 23, "bot_prob": records[0]["bot_prob"], "truncated": False}
    assert records[0]["segments"] == [whole]
    assert records[1]["segments"] == []


def test_a_segment_longer_than_max_length_says_only_its_start_was_scored(tiny_model_dir):
    short = autext_jax.load(str(tiny_model_dir), max_length=32)
    long_sentence = " ".join(["the cat sat on the mat and"] * 12) + "."
    text = "The cat sat on the mat. " * 8 + long_sentence
    (record,) = short.score_records([text], segments="sentence")
    pieces = [text[s["start"] : s["end"]] for s in record["segments"]]
    assert record["truncated"] and len(pieces) > 1
    n_tokens = seg.token_counts(short.tokenizer, pieces)
    assert [s["truncated"] for s in record["segments"]] == [n > 32 for n in n_tokens]
    assert record["segments"][-1]["truncated"] and not record["segments"][0]["truncated"]


def test_merge_spans_joins_short_sentences_and_a_short_tail():
    spans = [(0, 10), (11, 20), (21, 40), (41, 45)]
    assert seg.merge_spans(spans, [10, 25, 30, 5], 47, min_tokens=30) == [(0, 21), (21, 47)]
    assert seg.merge_spans(spans[:1], [3], 12, min_tokens=30) == [(0, 12)]


def test_window_segments_tile_a_long_text(tiny_model_dir):
    chunked = autext_jax.load(str(tiny_model_dir), long="chunk", max_length=32, stride=8)
    text = " ".join(["the cat sat on the mat"] * 12)
    (record,) = chunked.score_records([text], segments="window")
    spans = [(s["start"], s["end"]) for s in record["segments"]]
    assert len(spans) == record["n_chunks"] > 2
    assert spans[0][0] == 0 and spans[-1][1] == len(text)
    assert all(a[1] == b[0] for a, b in zip(spans, spans[1:], strict=False))


def test_calibrated_model_keeps_decisions_and_maps_the_threshold(tiny_model_dir, calibrated_dir, labelled):
    texts = labelled[0]
    raw = autext_jax.load(str(tiny_model_dir), max_length=64)
    cal = autext_jax.load(str(calibrated_dir), max_length=64)
    before, after = raw.score(texts), cal.score(texts)
    np.testing.assert_array_equal(before["is_bot"], after["is_bot"])
    assert not np.allclose(before["bot_prob"], after["bot_prob"])
    assert cal.threshold == cal.calibration.threshold(raw.threshold) != raw.threshold
    order = np.argsort(raw.logits(texts)["bot"], kind="stable")  # calibration is monotone in the logit
    assert np.all(np.diff(after["bot_prob"][order]) >= 0)
    assert [r["is_bot"] for r in cal.score_records(texts)] == before["is_bot"].tolist()
    plain = autext_jax.load(str(calibrated_dir), max_length=64, calibrated=False)
    np.testing.assert_array_equal(plain.score(texts)["bot_prob"], before["bot_prob"])


@pytest.mark.parametrize("name", ["fpr=0.01", "fpr=0.05"])
def test_operating_point_gives_its_fpr(calibrated_dir, labelled, name):
    texts, _, labels = labelled
    cal = autext_jax.load(str(calibrated_dir), max_length=64)
    assert set(cal.operating_points) == {"fpr=0.001", "fpr=0.01", "fpr=0.05"}
    records = cal.score_records(texts, operating_point=name)
    flagged = np.array([r["is_bot"] for r in records])
    target = float(name.split("=")[1])
    fpr = flagged[labels == 0].mean()
    point = cal.calibration.operating_points[name]
    assert fpr <= target and fpr == pytest.approx(point.fpr)
    assert flagged[labels == 1].mean() == pytest.approx(point.recall)
    assert all(r["operating_point"] == name for r in records)
    probs = np.array([r["bot_prob"] for r in records])  # the shown threshold separates the same way
    np.testing.assert_array_equal(probs >= cal.operating_points[name], flagged)
    # the largest recall within the budget: one more human text flagged would exceed it
    human = np.sort(cal.logits(texts)["bot"][labels == 0])[::-1]
    n_allowed = int(np.floor(target * human.size + 1e-9))
    if n_allowed < human.size:
        assert human[n_allowed] < point.raw_logit or human[n_allowed] == human[n_allowed - 1]


def test_unknown_operating_point_is_one_clear_error(detector, calibrated_dir):
    with pytest.raises(UsageError, match="fit them"):
        detector.score_records(["x"], operating_point="fpr=0.01")
    cal = autext_jax.load(str(calibrated_dir), max_length=64)
    with pytest.raises(UsageError, match="fpr=0.001, fpr=0.01, fpr=0.05"):
        cal.score_records(["x"], operating_point="fpr=0.2")
    with pytest.raises(UsageError, match="segments"):
        cal.score_records(["x"], segments="paragraph")


def test_min_tokens_from_calibration_sets_short(calibrated_dir):
    cal = autext_jax.load(str(calibrated_dir), max_length=64)
    assert cal.min_tokens == 40
    (record,) = cal.score_records([" ".join(["the cat sat"] * 4)])
    assert record["short"] == (record["n_tokens"] < 40)
