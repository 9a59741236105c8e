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
from conftest import discriminative_model, forward_logits, tiny_model_config

from autext_jax.data import batching
from autext_jax.engine import EngineOptions, InferenceEngine
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
    return discriminative_model(tiny_model_config(), seed=3)


def make_engine(model, tokenizer, **options) -> InferenceEngine:
    return InferenceEngine(model, tokenizer, EngineOptions(**options))


def direct_logits(model, tokenizer, windows: list[list[int]], length: int) -> tuple[np.ndarray, np.ndarray]:
    """All windows in one batch in input order, padded to ``length``: what the engine must reproduce
    with its own bucket lengths, row counts and order."""
    input_ids, mask = batching.pad_batch(windows, length, len(windows), tokenizer.pad_token_id)
    out = forward_logits(model, input_ids, mask)
    return np.asarray(out["bot"]), np.asarray(out["english"])


def test_engine_matches_per_text_forward_in_input_order(model, tokenizer):
    texts = make_texts(40) + ["", "   "]
    engine = make_engine(model, tokenizer, max_length=64, batch_size=2, tokenize_chunk=16)
    out = engine.logits(texts)
    want_bot, want_english = direct_logits(model, tokenizer, batching.tokenize(tokenizer, texts, 64), 64)
    np.testing.assert_allclose(out["bot"], want_bot, atol=1e-5)
    np.testing.assert_allclose(out["english"], want_english, atol=1e-5)
    assert out["bot"].dtype == np.float32 and (out["n_chunks"] == 1).all()
    # Packed rows, each batch shape one of the policy's; almost no padding.
    assert set(engine.stats.shapes) <= set(engine.policy.shapes())
    rows = sum(r * count for (r, _), count in engine.stats.shapes.items())
    assert engine.stats.windows == len(texts) and rows < len(texts) // 2
    assert engine.stats.padding_fraction < 0.1


def test_compilations_bounded_by_shapes_not_by_stream(model, tokenizer):
    engine = make_engine(model, tokenizer, max_length=64, batch_size=2)
    engine.logits(make_texts(30, seed=1))
    first = engine.stats.compilations
    assert first <= len(engine.stats.shapes)
    engine.logits(make_texts(300, seed=2))
    possible = len(engine.policy.shapes())
    assert set(engine.stats.shapes) <= set(engine.policy.shapes())
    assert engine.stats.compilations <= possible
    seen = set(engine.stats.shapes)
    before = engine.stats.compilations
    engine.logits(make_texts(30, seed=1))  # the first call's texts again: shapes already compiled
    assert set(engine.stats.shapes) == seen
    assert engine.stats.compilations == before


def test_streaming_reads_lazily_and_keeps_order(model, tokenizer):
    texts = make_texts(120, seed=4)
    pulled = []

    def source():
        for i, text in enumerate(texts):
            pulled.append(i)
            yield i, text

    engine = make_engine(model, tokenizer, max_length=64, batch_size=2, window=8, tokenize_chunk=4)
    tags = []
    for tag, doc in engine.run(source()):
        # Results come out while the input is still being read: the block being scored plus the
        # next one read ahead (window + chunk) at most.
        assert len(pulled) <= len(tags) + 1 + 2 * 8 + 4
        tags.append(tag)
        assert doc.n_chunks == 1
    assert tags == list(range(len(texts)))


CHUNK_TOL = 5e-7  # measured worst 8.1e-8 over 4 model seeds


def test_chunk_mode_weighted_mean_of_windows(model, tokenizer):
    max_length, stride = 32, 6
    long_text = " ".join(WORDS * 9)
    engine = make_engine(model, tokenizer, max_length=max_length, batch_size=2, long="chunk", stride=stride)
    out = engine.logits([long_text, "the cat", ""])
    ids = tokenizer(long_text, add_special_tokens=False)["input_ids"]
    body, step = max_length - 2, max_length - 2 - stride
    windows = [[0] + ids[s : s + body] + [2] for s in range(0, len(ids) - stride, step)]
    assert windows[-1][-2] == ids[-1] and all(len(w) <= max_length for w in windows)
    assert int(out["n_chunks"][0]) == len(windows) > 3
    bot, english = direct_logits(model, tokenizer, windows, max_length)
    weights = np.array([len(w) for w in windows], dtype=np.float64)
    for got, per_window in ((out["bot"][0], bot), (out["english"][0], english)):
        weighted = (weights * per_window).sum() / weights.sum()
        np.testing.assert_allclose(got, weighted, atol=CHUNK_TOL, rtol=0)
        # The check can fail: the plain mean and the first window are both far from the weighted mean.
        assert abs(weighted - per_window.mean()) > 20 * CHUNK_TOL
        assert abs(weighted - per_window[0]) > 20 * CHUNK_TOL
    # Texts that fit score exactly as in truncate mode.
    truncated = make_engine(model, tokenizer, max_length=max_length, batch_size=2).logits(["the cat", ""])
    np.testing.assert_allclose(out["bot"][1:], truncated["bot"], atol=1e-6)
    assert out["n_chunks"][1:].tolist() == [1, 1]


def test_failing_input_yields_earlier_results_first(model, tokenizer):
    def source():
        yield from enumerate(make_texts(5, seed=5))
        raise ValueError("bad line 6")

    engine = make_engine(model, tokenizer, max_length=64, batch_size=2)
    got = []
    with pytest.raises(ValueError, match="bad line 6"):
        for tag, _ in engine.run(source()):
            got.append(tag)
    assert got == [0, 1, 2, 3, 4]


def test_none_text_passes_through_in_order(model, tokenizer):
    engine = make_engine(model, tokenizer, max_length=64, batch_size=2)
    results = list(engine.run([("a", "the cat"), ("b", None), ("c", "")]))
    assert [tag for tag, _ in results] == ["a", "b", "c"]
    assert results[1][1] is None and results[0][1].n_tokens > 2


def test_invalid_options_are_rejected(model, tokenizer):
    with pytest.raises(ValueError, match="stride"):
        make_engine(model, tokenizer, max_length=32, long="chunk", stride=30)
    with pytest.raises(ValueError, match="max_length"):
        make_engine(model, tokenizer, max_length=600)
    with pytest.raises(ValueError, match="long"):
        make_engine(model, tokenizer, long="split")
    with pytest.raises(TypeError, match="str"):
        make_engine(model, tokenizer).logits(["ok", 3])


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
from conftest import build_tiny_tokenizer, discriminative_model, tiny_model_config
from autext_jax.api import load_tokenizer
from autext_jax.engine import EngineOptions, InferenceEngine
texts = json.load(open(sys.argv[2]))
tok = load_tokenizer(build_tiny_tokenizer(__import__("pathlib").Path(sys.argv[3]) / "tok"))
options = EngineOptions(max_length=64, batch_size=2)
engine = InferenceEngine(discriminative_model(tiny_model_config(), seed=3), tok, options)
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
    single = make_engine(model, tokenizer, max_length=64, batch_size=2).logits(texts)
    np.testing.assert_allclose(result["bot"], single["bot"], atol=1e-5)


def test_packed_rows_score_as_one_text_per_row(tokenizer):
    """Packing changes no score (attention, positions and pooling are per text), chunked texts too.
    (Mean pooling here; test_model checks every pooling on packed rows.)"""
    model = create_model(tiny_model_config(pooling="mean"), seed=5)
    texts = make_texts(30, seed=7) + [" ".join(WORDS * 6), ""]
    common = dict(max_length=48, batch_size=4, long="chunk", stride=8)
    packed = make_engine(model, tokenizer, pack_length=48, **common)
    alone = make_engine(model, tokenizer, pack=False, **common)
    got, want = packed.logits(texts), alone.logits(texts)
    for name in ("bot", "english"):
        np.testing.assert_allclose(got[name], want[name], atol=1e-6, rtol=0)
    assert got["n_chunks"].tolist() == want["n_chunks"].tolist() and got["n_chunks"].max() > 2
    # Packing did put several texts in a row, and it wastes less than buckets do.
    assert packed.stats.batches < alone.stats.batches
    padding = packed.stats.padding_fraction
    assert padding < 0.15 and padding < alone.stats.padding_fraction / 2
    assert packed.stats.attention_overhead > 1.0


def test_shape_policy_packs_every_item_once_in_known_shapes():
    policy = batching.ShapePolicy.build(512, 2048, pack_length=256, row_multiple=2)
    rng = np.random.default_rng(0)
    lengths = rng.integers(2, 513, size=300).tolist() + [2] * 200
    batches = policy.plan(lengths)
    seen = [i for b in batches for row in b.rows for i in row]
    assert sorted(seen) == list(range(len(lengths)))
    for b in batches:
        assert (b.n_rows, b.length) in policy.shapes() and b.n_rows % 2 == 0 and len(b.rows) <= b.n_rows
        assert all(sum(lengths[i] for i in row) <= b.length and len(row) <= b.texts for row in b.rows)
    computed = sum(b.n_rows * b.length for b in batches)
    assert sum(lengths) / computed > 0.9
    # Unpacked: one item per row in the smallest bucket that holds it.
    buckets = batching.ShapePolicy.build(64, 256, pack_length=None)
    assert buckets.lengths == batching.bucket_lengths(64)
    short = [3, 20, 64, 17]
    for b in buckets.plan(short):
        assert all(len(row) == 1 for row in b.rows)
        assert all(batching.bucket_for(short[row[0]], buckets.lengths) == b.length for row in b.rows)


class _CountingTokenizer:
    """The test tokenizer, recording the longest text it was given."""

    def __init__(self, inner):
        self.inner, self.longest = inner, 0
        self.pad_token_id = inner.pad_token_id

    def __call__(self, texts, **kwargs):
        batch = [texts] if isinstance(texts, str) else texts
        self.longest = max([self.longest] + [len(t) for t in batch])
        return self.inner(texts, **kwargs)


def test_a_huge_line_is_tokenized_only_as_far_as_it_is_scored(model, tokenizer, monkeypatch):
    from autext_jax.data import encoding

    line = " ".join(make_texts(4000, seed=8, max_words=80))  # ≈ 0.6 MB on one line
    counting = _CountingTokenizer(tokenizer)
    engine = make_engine(model, counting, max_length=64, batch_size=2)
    got = engine.logits([line, "the cat"])
    assert counting.longest <= 4 * 64 * 16 < len(line) // 100
    want = make_engine(model, tokenizer, max_length=64, batch_size=2).logits(["the cat"])
    np.testing.assert_allclose(got["bot"][1], want["bot"][0], atol=1e-6)
    full = batching.tokenize(tokenizer, [line], 64)
    assert engine.encoder.tokenize_truncated([line]) == full
    # Chunk mode tokenizes it in whitespace-cut pieces: the same ids as one call on the whole text.
    monkeypatch.setattr(encoding, "_PIECE_CHARS", 500)
    chunked = make_engine(model, counting, max_length=64, long="chunk", stride=8)
    counting.longest = 0
    ids = chunked.encoder.tokenize_plain([line])[0]
    assert counting.longest <= 1000 + 1
    whole = tokenizer(line, add_special_tokens=False)["input_ids"]
    assert ids.dtype == np.int32 and ids.tolist() == whole


def test_statistics_belong_to_each_engine(model, tokenizer):
    first = make_engine(model, tokenizer, max_length=32, batch_size=2)
    first.logits(make_texts(10, seed=9))
    second = make_engine(model, tokenizer, max_length=32, batch_size=2)
    assert second.stats.compilations == 0 and second.stats.texts == 0
    assert first.stats.compilations >= 1 and first.stats.texts == 10


_CACHE_RUNS = """
import io, json, os, sys, contextlib, logging
from autext_jax import infer
model, cache = sys.argv[1], sys.argv[2]
for name in ("a_file", "a_file/sub", "broken", "broken"):
    code = infer.main(["-m", model, "--compile-cache", os.path.join(cache, name), "-q", "-v", "the cat"])
    print("RC", name, code, flush=True)
    if name == "broken":  # corrupt every entry the first run wrote: the next run must still work
        for root, _, files in os.walk(os.path.join(cache, name)):
            for f in files:
                open(os.path.join(root, f), "wb").write(b"not an executable")
"""


def test_unusable_or_broken_compile_cache_never_fails_a_run(tiny_model_dir, tmp_path):
    (tmp_path / "a_file").write_text("a file where the cache folder should be")
    env = dict(os.environ, PYTHONPATH=str(REPO), HF_HUB_OFFLINE="1")
    proc = subprocess.run(
        [sys.executable, "-c", _CACHE_RUNS, str(tiny_model_dir), str(tmp_path)],
        capture_output=True, text=True, env=env, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    codes = [line.split() for line in proc.stdout.splitlines() if line.startswith("RC")]
    assert [c[-1] for c in codes] == ["0"] * 4, proc.stderr[-3000:]
    assert "Error reading persistent compilation cache" in proc.stderr  # the corrupt entries were read
    assert proc.stdout.count('"bot_prob"') == 4 and proc.stderr.count("compiling without it") == 2
    assert any(files for _, _, files in os.walk(tmp_path / "broken"))


def test_compile_cache_default_location(monkeypatch, tmp_path):
    from autext_jax.compile_cache import COMPILE_CACHE_ENV, default_cache_dir

    monkeypatch.delenv(COMPILE_CACHE_ENV, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert default_cache_dir() == tmp_path / "autext-jax" / "xla"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert default_cache_dir() == Path.home() / ".cache" / "autext-jax" / "xla"
    for off in ("off", "0", ""):
        monkeypatch.setenv(COMPILE_CACHE_ENV, off)
        assert default_cache_dir() is None
    monkeypatch.setenv(COMPILE_CACHE_ENV, str(tmp_path / "mine"))
    assert default_cache_dir() == tmp_path / "mine"


def test_engine_option_errors_are_usage_errors():
    from autext_jax.engine import EngineOptionError, EngineOptions
    from autext_jax.errors import UsageError

    with pytest.raises(EngineOptionError, match="max_length must be in 3..512") as caught:
        EngineOptions(max_length=600).check(512)
    assert isinstance(caught.value, UsageError) and isinstance(caught.value, ValueError)
    assert caught.value.exit_code == 2


def test_text_encoder_windows_by_hand(tokenizer):
    """``data/encoding.py`` alone (no model): truncation flags and chunk windows from the tokenizer's ids."""
    from autext_jax.data.encoding import TextEncoder

    long_text, short_text = " ".join(WORDS * 3), "the cat"
    ids = tokenizer(long_text, add_special_tokens=False)["input_ids"]
    assert len(ids) > 14
    cut, whole = TextEncoder(tokenizer, 16).encode([long_text, short_text])
    assert cut.truncated and cut.windows[0].tolist() == [0, *ids[:14], 2]
    assert not whole.truncated and whole.windows[0].tolist() == tokenizer(short_text)["input_ids"]
    assert cut.facts == {"obfuscated": False, "n_changed": 0} and cut.windows[0].dtype == np.int32
    assert TextEncoder(tokenizer, 16, normalize=False).encode([long_text])[0].facts == {}
    (chunked,) = TextEncoder(tokenizer, 16, "chunk", stride=4).encode([long_text])
    want = [[0, *ids[s : s + 14], 2] for s in range(0, len(ids) - 4, 10)]
    assert [w.tolist() for w in chunked.windows] == want and not chunked.truncated
    with pytest.raises(TypeError, match="texts must be strings"):
        TextEncoder(tokenizer, 16).encode(["ok", None])
