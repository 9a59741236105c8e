"""The inference engine: same logits as a plain forward pass, input order, bounded shapes and memory,
chunked long texts, errors mid-stream, sharding over several devices."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import tiny_model_config

from autext_jax import batching
from autext_jax.engine import InferenceEngine, forward_logits
from autext_jax.model import create_model

REPO = Path(__file__).resolve().parents[1]
WORDS = "the of and to in is that it el la de que y en los".split()


def make_texts(count: int, seed: int = 0, max_words: int = 60) -> list[str]:
    rng = np.random.default_rng(seed)
    return [" ".join(rng.choice(WORDS, size=rng.integers(0, max_words))) for _ in range(count)]


@pytest.fixture(scope="module")
def tokenizer(tiny_tokenizer_dir):
    from autext_jax.api import load_tokenizer

    return load_tokenizer(tiny_tokenizer_dir)


@pytest.fixture(scope="module")
def model():
    return create_model(tiny_model_config(), seed=3)


def direct_logits(model, tokenizer, windows: list[list[int]], length: int) -> tuple[np.ndarray, np.ndarray]:
    """All windows in one batch in input order, padded to ``length``: what the engine must reproduce
    with its own bucket lengths, row counts and order."""
    input_ids, mask = batching.pad_batch(windows, length, len(windows), tokenizer.pad_token_id)
    out = forward_logits(model, input_ids, mask)
    return np.asarray(out["bot"]), np.asarray(out["english"])


def test_engine_matches_per_text_forward_in_input_order(model, tokenizer):
    texts = make_texts(40) + ["", "   "]
    engine = InferenceEngine(model, tokenizer, max_length=64, batch_size=2, tokenize_chunk=16)
    out = engine.logits(texts)
    want_bot, want_english = direct_logits(model, tokenizer, batching.tokenize(tokenizer, texts, 64), 64)
    np.testing.assert_allclose(out["bot"], want_bot, atol=1e-5)
    np.testing.assert_allclose(out["english"], want_english, atol=1e-5)
    assert out["bot"].dtype == np.float32 and (out["n_chunks"] == 1).all()
    # Several buckets and batch shapes really were used, each row count one of the allowed ones.
    assert len({length for _, length in engine.stats.shapes}) >= 3
    for rows, length in engine.stats.shapes:
        assert rows in engine.row_options[length]
    assert engine.stats.padding_fraction < 0.5


def test_compilations_bounded_by_shapes_not_by_stream(model, tokenizer):
    engine = InferenceEngine(model, tokenizer, max_length=64, batch_size=2)
    engine.logits(make_texts(30, seed=1))
    first = engine.stats.compilations
    assert first <= len(engine.stats.shapes)
    engine.logits(make_texts(300, seed=2))
    possible = sum(len(options) for options in engine.row_options.values())
    assert len(engine.stats.shapes) <= possible
    assert engine.stats.compilations <= possible
    seen = set(engine.stats.shapes)
    before = engine.stats.compilations
    engine.logits(make_texts(30, seed=1))  # shapes already compiled: no new compilation
    if set(engine.stats.shapes) == seen:
        assert engine.stats.compilations == before


def test_streaming_reads_lazily_and_keeps_order(model, tokenizer):
    texts = make_texts(120, seed=4)
    pulled = []

    def source():
        for i, text in enumerate(texts):
            pulled.append(i)
            yield i, text

    engine = InferenceEngine(model, tokenizer, max_length=64, batch_size=2, window=8, tokenize_chunk=4)
    tags = []
    for tag, doc in engine.run(source()):
        # Results come out while the input is still being read, at most window + chunk behind.
        assert len(pulled) <= len(tags) + 1 + 8 + 4
        tags.append(tag)
        assert doc.n_chunks == 1
    assert tags == list(range(len(texts)))


def test_chunk_mode_weighted_mean_of_windows(model, tokenizer):
    max_length, stride = 32, 6
    long_text = " ".join(WORDS * 9)
    engine = InferenceEngine(
        model, tokenizer, max_length=max_length, batch_size=2, long="chunk", stride=stride
    )
    out = engine.logits([long_text, "the cat", ""])
    ids = tokenizer(long_text, add_special_tokens=False)["input_ids"]
    body, step = max_length - 2, max_length - 2 - stride
    windows = [[0] + ids[s : s + body] + [2] for s in range(0, len(ids) - stride, step)]
    assert windows[-1][-2] == ids[-1] and all(len(w) <= max_length for w in windows)
    assert int(out["n_chunks"][0]) == len(windows) > 3
    bot, english = direct_logits(model, tokenizer, windows, max_length)
    weights = np.array([len(w) for w in windows], dtype=np.float64)
    np.testing.assert_allclose(out["bot"][0], (weights * bot).sum() / weights.sum(), atol=1e-5)
    np.testing.assert_allclose(out["english"][0], (weights * english).sum() / weights.sum(), atol=1e-5)
    # Texts that fit score exactly as in truncate mode.
    truncated = InferenceEngine(model, tokenizer, max_length=max_length, batch_size=2).logits(["the cat", ""])
    np.testing.assert_allclose(out["bot"][1:], truncated["bot"], atol=1e-6)
    assert out["n_chunks"][1:].tolist() == [1, 1]


def test_failing_input_yields_earlier_results_first(model, tokenizer):
    def source():
        yield from enumerate(make_texts(5, seed=5))
        raise ValueError("bad line 6")

    engine = InferenceEngine(model, tokenizer, max_length=64, batch_size=2)
    got = []
    with pytest.raises(ValueError, match="bad line 6"):
        for tag, _ in engine.run(source()):
            got.append(tag)
    assert got == [0, 1, 2, 3, 4]


def test_none_text_passes_through_in_order(model, tokenizer):
    engine = InferenceEngine(model, tokenizer, max_length=64, batch_size=2)
    results = list(engine.run([("a", "the cat"), ("b", None), ("c", "")]))
    assert [tag for tag, _ in results] == ["a", "b", "c"]
    assert results[1][1] is None and results[0][1].n_tokens > 2


def test_invalid_options_are_rejected(model, tokenizer):
    with pytest.raises(ValueError, match="stride"):
        InferenceEngine(model, tokenizer, max_length=32, long="chunk", stride=30)
    with pytest.raises(ValueError, match="max_length"):
        InferenceEngine(model, tokenizer, max_length=600)
    with pytest.raises(ValueError, match="long"):
        InferenceEngine(model, tokenizer, long="split")
    with pytest.raises(TypeError, match="str"):
        InferenceEngine(model, tokenizer).logits(["ok", 3])


def test_forward_logits_is_deterministic_and_leaves_the_model_alone(model):
    model.train()
    try:
        ids = np.array([[0, 50, 60, 2]], dtype=np.int32)
        mask = np.ones_like(ids)
        a, b = forward_logits(model, ids, mask), forward_logits(model, ids, mask)
        np.testing.assert_array_equal(np.asarray(a["bot"]), np.asarray(b["bot"]))
        assert model.encoder.embeddings.dropout.deterministic is False
    finally:
        model.eval()


_SHARDED = """
import json, sys
sys.path.insert(0, sys.argv[1])
import jax
from conftest import build_tiny_tokenizer, tiny_model_config
from autext_jax.api import load_tokenizer
from autext_jax.engine import InferenceEngine
from autext_jax.model import create_model
texts = json.load(open(sys.argv[2]))
tok = load_tokenizer(build_tiny_tokenizer(__import__("pathlib").Path(sys.argv[3]) / "tok"))
engine = InferenceEngine(create_model(tiny_model_config(), seed=3), tok, max_length=64, batch_size=2)
out = engine.logits(texts)
print(json.dumps({"devices": len(jax.devices()), "bot": out["bot"].tolist(),
                  "rows": sorted({r for r, _ in engine.stats.shapes})}))
"""


def test_batch_is_sharded_over_several_devices(model, tokenizer, tmp_path):
    texts = make_texts(8, seed=6)
    (tmp_path / "texts.json").write_text(json.dumps(texts))
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4", HF_HUB_OFFLINE="1")
    proc = subprocess.run(
        [sys.executable, "-c", _SHARDED, str(REPO / "tests"), str(tmp_path / "texts.json"), str(tmp_path)],
        capture_output=True, text=True, env=env, timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["devices"] == 4 and all(r % 4 == 0 for r in result["rows"])
    single = InferenceEngine(model, tokenizer, max_length=64, batch_size=2).logits(texts)
    np.testing.assert_allclose(result["bot"], single["bot"], atol=1e-5)
