"""Data pipeline: every layout loads into one schema; split, tokens and batches are deterministic."""

from __future__ import annotations

import gzip
import json
import random
from pathlib import Path

import numpy as np
import pytest

from autext_jax.data import dataset as data
from autext_jax.data.batching import bucket_lengths, tokenize
from autext_jax.data.dataset import (
    DataConfig,
    DataError,
    build_datasets,
    load_examples,
    split_by_id,
    tokenize_dataset,
)
from autext_jax.data.stream import BatchStream, eval_batches

_WORDS = "the of and to in is that it for on with el la de que y en los se del".split()


@pytest.fixture(autouse=True, scope="module")
def _private_datasets_cache(tmp_path_factory):
    """Keep the parsed test files out of the user's ``datasets`` cache."""
    import datasets

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path_factory.mktemp("datasets_cache"))
        yield


def _text(rng: random.Random, n_words: int) -> str:
    return " ".join(rng.choice(_WORDS) for _ in range(n_words))


def _write_official(root: Path, rows_per_language: int = 40, seed: int = 0) -> Path:
    """AuTexTification layout: ROOT/{en,es}/train.tsv.gz with id, text, label (human/generated)."""
    rng = random.Random(seed)
    for lang in ("en", "es"):
        folder = root / lang
        folder.mkdir(parents=True)
        lines = ["id\ttext\tlabel"]
        for i in range(rows_per_language):
            # Short and long texts so that several buckets are used; one text is literally "NA".
            text = "NA" if i == 3 else _text(rng, rng.choice([1, 3, 10, 25, 80]))
            lines.append(f"{i}\t{text}\t{'generated' if i % 2 else 'human'}")
        with gzip.open(folder / "train.tsv.gz", "wt", encoding="utf-8") as f:
            f.write("\n".join(lines) + "\n")
    return root


@pytest.fixture(scope="module")
def tokenizer(tiny_tokenizer_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_tokenizer_dir)


@pytest.fixture(scope="module")
def official_dir(tmp_path_factory) -> Path:
    return _write_official(tmp_path_factory.mktemp("official") / "subtask_1")


@pytest.fixture(scope="module")
def tokenized(official_dir, tokenizer):
    return tokenize_dataset(load_examples([official_dir]), tokenizer, max_length=64)


# ---- loading ---------------------------------------------------------------------------------


def test_official_tsv_folders_give_language_and_labels(official_dir):
    ds = load_examples(official_dir)
    assert ds.column_names == ["id", "text", "bot", "english", "language"]
    assert len(ds) == 80
    rows = ds.to_list()
    assert {r["language"] for r in rows} == {"en", "es"}
    for r in rows:
        assert r["english"] == (1 if r["language"] == "en" else 0)
        assert r["bot"] == int(r["id"]) % 2
        assert isinstance(r["id"], str)
    assert [r["text"] for r in rows if r["id"] == "3"] == ["NA", "NA"]  # "NA" is text, not a missing value
    per_language = {"human": 20, "generated": 20, "unlabelled": 0}
    assert data.summarize(ds) == {"en": per_language, "es": per_language}
    # A single file works as well as its folder, and the language still comes from the folder name.
    es_only = load_examples(official_dir / "es" / "train.tsv.gz")
    assert set(es_only["language"]) == {"es"} and len(es_only) == 40


def test_hf_form_jsonl_csv_and_saved_dataset(tmp_path):
    import datasets

    hf_rows = [
        {"id": f"x{i}", "prompt": "p", "text": f"text {i}", "label": i % 2, "model": "m", "domain": "d",
         "language": "English" if i < 2 else "es"}
        for i in range(4)
    ]
    (tmp_path / "hf.jsonl").write_text("\n".join(json.dumps(r) for r in hf_rows) + "\n")
    (tmp_path / "plain.csv").write_text('text,label\n"hello, world",generated\nhola,human\nmissing,\n')
    saved = datasets.Dataset.from_dict(
        {"text": ["a", "b"], "label": [1, 0]},
        features=datasets.Features(
            text=datasets.Value("string"), label=datasets.ClassLabel(names=["human", "generated"])
        ),
    )
    saved.save_to_disk(str(tmp_path / "saved"))

    hf = load_examples(tmp_path / "hf.jsonl").to_list()
    assert [(r["id"], r["bot"], r["english"], r["language"]) for r in hf] == [
        ("x0", 0, 1, "en"), ("x1", 1, 1, "en"), ("x2", 0, 0, "es"), ("x3", 1, 0, "es")
    ]
    plain = load_examples(tmp_path / "plain.csv").to_list()
    assert [(r["text"], r["bot"], r["english"], r["language"]) for r in plain] == [
        ("hello, world", 1, -1, ""), ("hola", 0, -1, ""), ("missing", -1, -1, "")
    ]
    assert plain[0]["id"] == data._text_id("hello, world")  # a missing id comes from the text, not the path
    disk = load_examples(tmp_path / "saved").to_list()
    assert [(r["text"], r["bot"]) for r in disk] == [("a", 1), ("b", 0)]
    # The whole folder: every supported file found (the saved dataset's own .arrow files are not data files).
    assert len(load_examples(tmp_path)) == 4 + 3 + 2


def test_bad_inputs_give_clear_errors(tmp_path, official_dir):
    (tmp_path / "bad_labels.tsv").write_text("id\ttext\tlabel\n1\ta\thuman\n2\tb\tmaybe\n3\tc\tAI\n")
    expected = r"unknown label values 'AI', 'maybe' \(values found: 'AI', 'human', 'maybe'\)"
    with pytest.raises(DataError, match=expected):
        load_examples(tmp_path / "bad_labels.tsv")
    (tmp_path / "no_text.csv").write_text("id,body,label\n1,a,human\n")
    with pytest.raises(DataError, match="no 'text' column; columns found: id, body, label"):
        load_examples(tmp_path / "no_text.csv")
    (tmp_path / "empty.jsonl").write_text("")
    with pytest.raises(DataError, match="no rows|empty"):
        load_examples(tmp_path / "empty.jsonl")
    with pytest.raises(DataError, match=r"no rows in language\(s\) \['fr'\]"):
        load_examples(official_dir, languages=("en", "fr"))
    with pytest.raises(DataError, match="does not exist"):
        load_examples(tmp_path / "nope")
    with pytest.raises(DataError, match="format"):
        load_examples(tmp_path / "no_text.csv", format="xml")
    with pytest.raises(DataError, match="val_fraction"):
        DataConfig(paths=("x",), val_fraction=1.5)


# ---- split -----------------------------------------------------------------------------------


def test_split_is_by_hashed_id_not_file_order(official_dir):
    ds = load_examples(official_dir)
    train, val = split_by_id(ds, 0.25, "salt")
    keys = lambda d: {(r["language"], r["id"]) for r in d.to_list()}  # noqa: E731
    assert keys(train).isdisjoint(keys(val)) and len(train) + len(val) == len(ds)
    assert 5 <= len(val) <= 35
    shuffled = ds.shuffle(seed=3)
    assert keys(split_by_id(shuffled, 0.25, "salt")[1]) == keys(val)
    assert keys(split_by_id(ds, 0.25, "other salt")[1]) != keys(val)
    assert len(split_by_id(ds, 0.0, "salt")[1]) == 0


# ---- tokenization ----------------------------------------------------------------------------


def test_tokenize_matches_batching_and_is_cached(official_dir, tokenizer, monkeypatch):
    ds = load_examples(official_dir)
    first = tokenize_dataset(ds, tokenizer, max_length=64)
    expected = tokenize(tokenizer, first["text"], 64)
    assert [list(x) for x in first["input_ids"]] == expected
    assert list(first["length"]) == [len(x) for x in expected]
    assert max(first["length"]) == 64  # the long texts were truncated

    def fail(*args, **kwargs):
        raise AssertionError("tokenized again instead of reading the datasets cache")

    monkeypatch.setattr(data, "tokenize", fail)
    again = tokenize_dataset(load_examples(official_dir), tokenizer, max_length=64)
    assert again.cache_files == first.cache_files
    with pytest.raises(AssertionError, match="tokenized again"):  # another max_length is another cache entry
        tokenize_dataset(ds, tokenizer, max_length=32)


def test_build_datasets_from_config(official_dir, tokenizer, tmp_path, caplog):
    cache = str(tmp_path)
    cfg = DataConfig(str(official_dir), val_fraction=0.2, max_length=64, languages=["en"], cache_dir=cache)
    assert cfg.paths == (str(official_dir),) and cfg.languages == ("en",)
    with caplog.at_level("WARNING", logger="autext_jax.data"):
        train, val = build_datasets(cfg, tokenizer)
    assert "left out {'es': 40}" in caplog.text  # leaving rows out is never silent
    assert all(f["filename"].startswith(str(tmp_path)) for f in train.cache_files)
    assert len(train) + len(val) == 40
    assert set(train["language"]) == {"en"} and "input_ids" in val.column_names
    assert cfg.buckets == (16, 32, 64)


# ---- batches ---------------------------------------------------------------------------------


def _stream(ds, **kwargs) -> BatchStream:
    base = dict(global_batch_size=8, buckets=bucket_lengths(64), seed=7, pad_id=1)
    base.update(kwargs)
    return BatchStream(ds, **base)


def test_training_batches_fixed_shapes_and_each_row_at_most_once(tokenized):
    stream = _stream(tokenized, with_index=True, global_batch_size=12)  # 80 rows: 8 left over
    lengths = np.asarray(tokenized["length"])
    batches = list(stream.batches(0))
    assert len(batches) == stream.steps_per_epoch > 0
    seen = []
    for batch in batches:
        rows, length = batch["input_ids"].shape
        assert rows == 12 and length in (16, 32, 64)
        assert batch["input_ids"].dtype == np.int32 and batch["attention_mask"].dtype == np.int32
        for key in ("bot", "english", "bot_mask", "english_mask", "weight"):
            assert batch[key].dtype == np.float32 and batch[key].shape == (12,)
        assert (batch["weight"] == 1).all()
        assert (lengths[batch["index"]] <= length).all()
        # Well packed: every batch holds a row that needs its bucket (leftovers only move up).
        assert lengths[batch["index"]].max() > length // 2 or length == 16
        seen.extend(batch["index"].tolist())
    assert len(seen) == len(set(seen)) == stream.steps_per_epoch * 12 == 72
    # Only the remainder of the whole epoch is dropped (leftovers move up a bucket), and it changes per epoch.
    assert set(seen) != {int(i) for b in stream.batches(1) for i in b["index"]}


def test_rows_labels_and_masks_are_the_datasets(tokenized):
    ds = tokenized.add_column("row", list(range(len(tokenized))))
    ds = ds.map(lambda r: {"bot": -1 if r["row"] == 5 else r["bot"]})  # one missing label
    seen = {}
    for batch in eval_batches(ds, global_batch_size=8, buckets=bucket_lengths(64)):
        for j, index in enumerate(batch["index"]):
            if index < 0:
                assert batch["weight"][j] == 0 and batch["bot_mask"][j] == 0 and batch["english_mask"][j] == 0
                assert batch["attention_mask"][j].sum() == 0
                continue
            assert index not in seen
            seen[index] = True
            row = ds[int(index)]
            n = row["length"]
            assert batch["input_ids"][j, :n].tolist() == list(row["input_ids"])
            assert batch["attention_mask"][j].sum() == n and batch["weight"][j] == 1
            assert batch["bot_mask"][j] == (row["bot"] >= 0) and batch["bot"][j] == max(row["bot"], 0)
            assert batch["english"][j] == row["english"] and batch["english_mask"][j] == 1
    assert sorted(seen) == list(range(len(ds)))  # evaluation never drops a row


def test_order_is_a_pure_function_of_seed_and_epoch_and_resumes(tokenized):
    stream = _stream(tokenized)
    epoch1 = list(stream.batches(1))
    same = list(_stream(tokenized).batches(1))
    resumed = list(_stream(tokenized).batches(1, start=3))
    for a, b in zip(epoch1, same, strict=True):
        assert all(np.array_equal(a[k], b[k]) for k in a)
    for a, b in zip(epoch1[3:], resumed, strict=True):
        assert all(np.array_equal(a[k], b[k]) for k in a)
    plan = lambda s, e: [r.tolist() for _, r in s.plan(e)]  # noqa: E731
    assert plan(stream, 1) != plan(stream, 2)
    assert plan(stream, 1) != plan(_stream(tokenized, seed=8), 1)
    with pytest.raises(DataError, match="start"):
        next(stream.batches(0, start=stream.steps_per_epoch + 1))


def test_processes_get_disjoint_slices_of_the_same_global_batch(tokenized):
    whole = list(_stream(tokenized).batches(0))
    parts = [list(_stream(tokenized, process_index=p, process_count=4).batches(0)) for p in range(4)]
    assert all(len(p) == len(whole) for p in parts)
    for step, batch in enumerate(whole):
        for key, value in batch.items():
            assert np.array_equal(np.concatenate([p[step][key] for p in parts]), value)
    with pytest.raises(DataError, match="multiple of process_count"):
        _stream(tokenized, global_batch_size=6, process_count=4)


def test_batch_stream_input_errors(tokenizer, official_dir):
    with pytest.raises(DataError, match="tokenize_dataset"):
        _stream(load_examples(official_dir))
    tokenized = tokenize_dataset(load_examples(official_dir), tokenizer, max_length=64)
    with pytest.raises(DataError, match="longest bucket"):
        _stream(tokenized, buckets=(16, 32))


# ---- sources: the shared table reader, URLs and the Hub ------------------------------------------


def test_jsonl_mixing_int_and_string_labels_reads_both(tmp_path):
    rows = [{"id": 1, "text": "a", "label": 0}, {"id": 2, "text": "b", "label": "generated"},
            {"id": 3, "text": "c", "label": True}, {"id": 4, "text": "d", "label": None}]
    (tmp_path / "mixed.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    got = load_examples(tmp_path / "mixed.jsonl").to_list()
    assert [(r["id"], r["bot"]) for r in got] == [("1", 0), ("2", 1), ("3", 1), ("4", -1)]


def test_training_tsv_is_one_row_per_line_and_bad_lines_are_named(tmp_path):
    (tmp_path / "q.tsv").write_text('id\ttext\tlabel\n1\t"unmatched\thuman\n2\tb\tgenerated\n3\tc\thuman\n')
    got = load_examples(tmp_path / "q.tsv").to_list()
    assert [(r["id"], r["text"]) for r in got] == [("1", '"unmatched'), ("2", "b"), ("3", "c")]
    (tmp_path / "deep.jsonl").write_text('{"text": "a", "label": 0}\n' + "[" * 200_000 + "]" * 200_000 + "\n")
    with pytest.raises(DataError, match=r"deep\.jsonl:2: JSON nested too deeply"):
        load_examples(tmp_path / "deep.jsonl")
    (tmp_path / "short.tsv").write_text("id\ttext\tlabel\n1\ta\thuman\n2\tonly two\n")
    with pytest.raises(DataError, match=r"short\.tsv:3: 2 fields, the header has 3"):
        load_examples(tmp_path / "short.tsv")


def test_warnings_count_one_class_empty_texts_and_missing_labels(tmp_path, tokenizer, caplog):
    lines = ["id\ttext\tlabel"] + [f"{i}\t{'' if i % 5 == 0 else f'text {i}'}\thuman" for i in range(40)]
    lines += [f"{i}\tunlabelled {i}\t" for i in range(40, 50)]
    (tmp_path / "en").mkdir()
    (tmp_path / "en" / "train.tsv").write_text("\n".join(lines) + "\n")
    cfg = DataConfig(str(tmp_path), val_paths=(str(tmp_path),), languages=["en"], max_length=16)
    with caplog.at_level("WARNING", logger="autext_jax.data"):
        build_datasets(cfg, tokenizer)
    text = caplog.text
    assert "training data: all 40 labelled rows are human" in text
    assert "training data: 10 of 50 rows (20%) have no human/generated label" in text
    assert "training data: 8 of 50 rows (16%) have an empty text" in text
    assert "validation data: all 40 labelled rows are human" in text


def test_urls_files_and_folders_through_the_path_layer():
    import fsspec

    memory = fsspec.filesystem("memory")
    root = "memory://autext-data-test"
    memory.pipe(f"{root}/subtask_1/en/train.tsv", b"id\ttext\tlabel\n1\thello\thuman\n2\tworld\tgenerated\n")
    with gzip.open(memory.open(f"{root}/subtask_1/es/train.jsonl.gz", "wb"), "wt") as f:
        f.write('{"id": 1, "text": "hola", "label": "generated"}\n')
    try:
        folder = load_examples(f"{root}/subtask_1").to_list()
        assert sorted((r["language"], r["text"], r["bot"]) for r in folder) == [
            ("en", "hello", 0), ("en", "world", 1), ("es", "hola", 1)
        ]
        assert len(load_examples(f"{root}/subtask_1/en/train.tsv")) == 2
        with pytest.raises(DataError, match="does not exist"):
            load_examples(f"{root}/nowhere")
    finally:
        memory.rm(root, recursive=True)


def test_hub_dataset_ids(monkeypatch):
    import datasets

    from autext_jax.data.sources import DataUsageError

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", True)
    message = r"cannot load Hub dataset someone/not-cached-xyz \(split train\): offline"
    with pytest.raises(DataUsageError, match=message) as caught:
        load_examples("hf://datasets/someone/not-cached-xyz")
    assert "\n" not in str(caught.value) and caught.value.exit_code == 2
    asked = {}

    def fake_load(name, split, cache_dir=None):
        asked.update(name=name, split=split)
        return datasets.Dataset.from_dict({"text": ["x", "y"], "label": [1, 0], "language": ["en", "es"]})

    monkeypatch.setattr(datasets, "load_dataset", fake_load)
    got = load_examples("hf://datasets/owner/autext:validation").to_list()
    assert asked == {"name": "owner/autext", "split": "validation"}
    assert [(r["text"], r["bot"], r["language"]) for r in got] == [("x", 1, "en"), ("y", 0, "es")]
