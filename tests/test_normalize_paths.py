"""Every scoring path shares the one normalization (``TextEncoder.encode`` → ``normalize.normalize``).

Per path, an attacked text (look-alike letters and invisible characters) must score exactly as its
clean original and carry ``obfuscated: true`` with the count of changed characters, while the
switch (``normalize=False`` / ``--no-normalize``) scores the raw text (a different score here: the
tiny tokenizer reads the look-alikes as other pieces) with both fields null.
"""

from __future__ import annotations

import gzip
import json
import random

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import autext_jax
from autext_jax import evaluate as ev
from autext_jax import infer
from autext_jax.normalize import normalize
from tests.helpers.corpus import run as run_cli
from tools import evasion_attacks as attacks

CLEAN = [
    "the cat sat on the mat while the dog slept near the river",
    "el perro come pan y la casa es grande cerca del rio",
    "a plain text with nothing to undo at all",
]


def _attacked(text: str, seed: int) -> str:
    return attacks.zero_width(attacks.homoglyph(text, random.Random(seed), 1.0), random.Random(seed), 0.5)


ATTACKED = [_attacked(CLEAN[0], 1), _attacked(CLEAN[1], 2), CLEAN[2]]
CHANGED = [normalize(t).changed for t in ATTACKED]


@pytest.fixture(autouse=True, scope="module")
def _private_datasets_cache(tmp_path_factory):
    import datasets

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path_factory.mktemp("datasets_cache"))
        yield


@pytest.fixture(scope="module")
def detectors(tiny_model_dir):
    on = autext_jax.load(str(tiny_model_dir), max_length=64)
    off = autext_jax.load(str(tiny_model_dir), max_length=64, normalize=False)
    return on, off


def _check(records: list[dict], clean: list[dict], raw: list[dict] | None = None) -> None:
    """``records`` of ATTACKED equal ``clean`` (records of CLEAN) but for the two normalization fields."""
    assert CHANGED[0] > 20 and CHANGED[1] > 20 and CHANGED[2] == 0
    for k, (got, want) in enumerate(zip(records, clean, strict=True)):
        assert (got["obfuscated"], got["n_changed"]) == (k < 2, CHANGED[k])
        shared = set(got) - {"obfuscated", "n_changed", "id"}  # a CLI record has no n_chunks
        assert {f: got[f] for f in shared} == {f: want[f] for f in shared}
    if raw is not None:
        assert [(r["obfuscated"], r["n_changed"]) for r in raw] == [(None, None)] * 3
        assert raw[0]["bot_prob"] != clean[0]["bot_prob"] and raw[2]["bot_prob"] == clean[2]["bot_prob"]


def test_api(detectors):
    on, off = detectors
    clean = on.score_records(CLEAN)
    assert [(r["obfuscated"], r["n_changed"]) for r in clean] == [(False, 0)] * 3
    _check(on.score_records(ATTACKED), clean, off.score_records(ATTACKED))
    _check(list(on.score_iter(ATTACKED)), clean)
    np.testing.assert_array_equal(on.score(ATTACKED)["bot_prob"], on.score(CLEAN)["bot_prob"])


def test_segments_are_found_in_the_normalized_text_and_tile_the_original(tiny_model_dir):
    on = autext_jax.load(str(tiny_model_dir), max_length=32, long="chunk", stride=8)
    text = " ".join(CLEAN[0] + "." for _ in range(6))
    attacked = _attacked(text, 3)
    clean = on.score_records([text], segments="window")[0]["segments"]
    got = on.score_records([attacked], segments="window")[0]["segments"]
    assert len(got) == len(clean) > 1
    assert got[0]["start"] == 0 and got[-1]["end"] == len(attacked)
    assert all(a["end"] == b["start"] for a, b in zip(got, got[1:], strict=False))
    for g, c in zip(got, clean, strict=True):  # each span covers the same words, in the original
        assert normalize(attacked[g["start"] : g["end"]]).text.strip() == text[c["start"] : c["end"]].strip()
        assert g["bot_prob"] == pytest.approx(c["bot_prob"], abs=1e-6)


def test_cli_and_its_switch(detectors, tiny_model_dir, tmp_path, capsys):
    on, _ = detectors
    source = tmp_path / "in.jsonl"
    source.write_text("".join(json.dumps({"id": k, "text": t}) + "\n" for k, t in enumerate(ATTACKED)))
    argv = ["-m", str(tiny_model_dir), "--max-length", "64", "-i", str(source), "-q"]
    outputs = {}
    for name, extra in (("on", []), ("off", ["--no-normalize"])):
        out = tmp_path / f"{name}.jsonl"
        assert infer.main([*argv, "-o", str(out), *extra]) == 0, capsys.readouterr().err
        outputs[name] = [json.loads(line) for line in out.read_text().splitlines()]
    clean = on.score_records(CLEAN)
    _check(outputs["on"], clean, outputs["off"])
    assert [r["id"] for r in outputs["on"]] == [0, 1, 2]


def test_corpus_parts(tiny_model_dir, tmp_path):
    source = tmp_path / "in" / "shard.parquet"
    source.parent.mkdir()
    pq.write_table(pa.table({"doc_id": ["a", "b", "c"], "body": ATTACKED}), source)
    clean_source = tmp_path / "clean" / "shard.parquet"
    clean_source.parent.mkdir()
    pq.write_table(pa.table({"doc_id": ["a", "b", "c"], "body": CLEAN}), clean_source)
    parts = {}
    for name, folder, extra in (("on", source.parent, ()), ("clean", clean_source.parent, ()),
                                ("off", source.parent, ("--no-normalize",))):  # fmt: skip
        out = tmp_path / f"out-{name}"
        done = run_cli("-i", folder, "--text-column", "body", "--id-column", "doc_id", "-o", f"{out}/",
                       "--model", tiny_model_dir, "--max-length", 64, "--format", "parquet", "-q", *extra)
        assert done.returncode == 0, done.stderr[-2000:]
        table = pq.read_table(out / "part-00000.parquet")
        assert table.schema.field("obfuscated").type == pa.bool_()
        assert table.schema.field("n_changed").type == pa.int64()
        parts[name] = [{k: v for k, v in r.items() if k != "source"} for r in table.to_pylist()]
    _check(parts["on"], parts["clean"], parts["off"])


def test_ray_scorer(tiny_model_dir, detectors):
    """The callable class Ray Data runs in each actor (``map_batches``), options passed as for Ray."""
    from autext_jax.ray_data import Scorer

    on, _ = detectors
    batch = {"text": np.asarray(ATTACKED, dtype=object), "id": np.asarray(["a", "b", "c"], dtype=object)}
    rows = {}
    for name, options in (("on", {}), ("off", {"normalize": False})):
        scorer = Scorer(str(tiny_model_dir), max_length=64, **options)
        rows[name] = [{k: v for k, v in r.items() if k != "error"} for r in scorer(batch).to_pylist()]
    clean = on.score_records(CLEAN)
    _check(rows["on"], clean, rows["off"])


def _write_labelled(path, texts) -> None:
    rows = [f"{k}\t{t}\t{'generated' if k % 2 else 'human'}" for k, t in enumerate(texts)]
    lines = ["id\ttext\tlabel", *rows]
    with gzip.open(path, "wt") as f:
        f.write("\n".join(lines) + "\n")


def test_evaluate(tiny_model_dir, tmp_path):
    texts_clean = [t for t in CLEAN for _ in range(4)]
    texts_attacked = [_attacked(t, k) if k % 3 else t for k, t in enumerate(texts_clean)]
    reports, predictions = {}, {}
    for name, texts, extra in (("clean", texts_clean, []), ("on", texts_attacked, []),
                               ("off", texts_attacked, ["--no-normalize"])):  # fmt: skip
        (tmp_path / name / "en").mkdir(parents=True)
        _write_labelled(tmp_path / name / "en" / "test.tsv.gz", texts)
        out = tmp_path / f"report-{name}"
        argv = ["--model", str(tiny_model_dir), "--max-length", "64", "--data", str(tmp_path / name),
                "--output-dir", str(out), "--threshold", "0.5", "--bootstrap", "0", "--no-plots",
                "--save-predictions", *extra]  # fmt: skip
        assert ev.main(argv) == 0
        reports[name] = json.loads((out / "report.json").read_text())
        lines = (out / "predictions.jsonl").read_text().splitlines()
        predictions[name] = [json.loads(line) for line in lines]
    attacked_rows = sum(1 for k in range(len(texts_clean)) if k % 3)
    assert reports["on"]["obfuscated_rows"] == attacked_rows and reports["clean"]["obfuscated_rows"] == 0
    assert reports["on"]["overall"] == reports["clean"]["overall"]
    assert reports["off"]["normalized"] is False and "obfuscated_rows" not in reports["off"]
    assert [p["bot_prob"] for p in predictions["on"]] == [p["bot_prob"] for p in predictions["clean"]]
    assert sum(bool(p["obfuscated"]) for p in predictions["on"]) == attacked_rows
    assert all(p["obfuscated"] is None for p in predictions["off"])


def test_training_data(tmp_path):
    from autext_jax.data.dataset import load_examples, tokenize_dataset
    from autext_jax.hub import load_tokenizer, resolve_model_dir

    tokenizer = load_tokenizer(resolve_model_dir(None))
    ids = {}
    for name, texts in (("clean", CLEAN), ("attacked", ATTACKED)):
        (tmp_path / name / "en").mkdir(parents=True)
        _write_labelled(tmp_path / name / "en" / "train.tsv.gz", texts)
        ds = load_examples([str(tmp_path / name)])
        ids[name] = tokenize_dataset(ds, tokenizer, 64)["input_ids"]
        ids[name + "-raw"] = tokenize_dataset(ds, tokenizer, 64, normalize=False)["input_ids"]
    assert ids["attacked"] == ids["clean"] == ids["clean-raw"]
    assert ids["attacked-raw"][:2] != ids["clean"][:2] and ids["attacked-raw"][2] == ids["clean"][2]


def test_service(tiny_model_dir):
    """A real server process normalizes; one started with --no-normalize scores the raw text."""
    pytest.importorskip("fastapi")
    from tests.helpers.serve import post_json, running_service

    answers = {}
    for name, flags in (("on", ()), ("off", ("--no-normalize",))):
        with running_service(tiny_model_dir, *flags) as (base, _):
            status, body = post_json(base + "/v1/score", {"texts": ATTACKED})
            assert status == 200, body
            answers[name] = body["records"]
    clean = autext_jax.load(str(tiny_model_dir)).score_records(CLEAN)
    _check(answers["on"], clean, answers["off"])
