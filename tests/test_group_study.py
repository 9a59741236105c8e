"""tools/group_study.py: groups from embeddings, folds that keep every row, the held-out table."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from autext_jax.data.dataset import load_examples
from tools import group_study

# Two "domains" with disjoint vocabularies, in both languages; labels alternate.
DOMAINS = {
    0: ["1234 5678 90", "98 76 54 3210", "111 222 333", "4444 55 6", "7 8 9 0 12", "31 41 59 26"],
    1: ["hello there friend", "good morning all", "the cat and the hat", "a big red dog", "see you soon"],
}


def _rows() -> list[dict]:
    rows = []
    for domain, texts in DOMAINS.items():
        for language in ("en", "es"):
            for i, text in enumerate(texts):
                label = "generated" if i % 2 else "human"
                rows.append({"id": f"d{domain}-{i}", "text": text, "label": label, "language": language})
    return rows


@pytest.fixture()
def data_file(tmp_path) -> Path:
    path = tmp_path / "rows.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in _rows()))
    return path


def test_kmeans_recovers_separated_blobs_and_numbers_groups_by_size():
    rng = np.random.default_rng(0)
    sizes, centres = (50, 30, 20), np.array([[0, 0], [10, 0], [0, 10]])
    points = np.concatenate([c + rng.normal(size=(n, 2)) for c, n in zip(centres, sizes, strict=True)])
    truth = np.repeat([0, 1, 2], sizes)
    labels = group_study.kmeans(points, 3, seed=1)
    np.testing.assert_array_equal(labels, truth)  # largest blob is group 0, whichever start won
    np.testing.assert_array_equal(group_study.kmeans(points, 3, seed=7), truth)
    with pytest.raises(group_study.StudyUsageError, match="cannot make 4 groups of 3 rows"):
        group_study.kmeans(points[:3], 4)


def test_centring_per_language_makes_topic_not_language_the_split():
    rng = np.random.default_rng(0)
    topic = np.repeat([[3.0, 0, 0], [-3.0, 0, 0]], 20, axis=0)  # 20 rows of each topic
    languages = np.array(["en", "es"] * 20)
    offset = np.where(languages[:, None] == "en", [0, 40.0, 0], [0, -40.0, 0])  # language dominates
    points = topic + offset + rng.normal(scale=0.3, size=topic.shape)
    topics = np.repeat([0, 1], 20)
    raw = group_study.kmeans(points, 2)
    assert abs(np.corrcoef(raw, languages == "en")[0, 1]) > 0.99  # uncentred: split by language
    centred = group_study.kmeans(group_study.centre_per_language(points, languages), 2)
    assert abs(np.corrcoef(centred, topics)[0, 1]) > 0.99


def test_mean_embeddings_match_the_models_own_pooling(tiny_model_dir):
    import jax.numpy as jnp

    from autext_jax.convert import load_checkpoint
    from autext_jax.data import batching
    from autext_jax.hub import load_tokenizer

    texts = ["hello there friend", "1234", "the cat and the hat sat on the mat today"]
    got = group_study.mean_embeddings(tiny_model_dir, texts, layers=None, max_length=64, batch_size=2)
    model = load_checkpoint(tiny_model_dir).model
    tokenizer = load_tokenizer(tiny_model_dir)
    for text, row in zip(texts, got, strict=True):
        ids = batching.tokenize(tokenizer, [text], 64)[0]
        input_ids, mask = jnp.asarray([ids]), jnp.ones((1, len(ids)), jnp.int32)
        expected = np.asarray(model.encoder(input_ids, mask)).mean(axis=1)[0]
        np.testing.assert_allclose(row, expected, rtol=1e-5, atol=1e-5)
    first_layer = group_study.mean_embeddings(tiny_model_dir, texts, layers=1, max_length=64, batch_size=2)
    assert not np.allclose(first_layer, got)
    with pytest.raises(group_study.StudyUsageError, match="has 2 layers"):
        group_study.mean_embeddings(tiny_model_dir, texts, layers=3, max_length=64, batch_size=2)


def test_assign_split_and_folds_keep_every_row_once(tiny_model_dir, data_file, tmp_path, capsys):
    groups_file = tmp_path / "study" / "groups.tsv"
    code = group_study.main(
        ["assign", "--encoder", str(tiny_model_dir), "--data", str(data_file), "--groups", "2"]
        + ["--out", str(groups_file), "--batch-size", "4"]
    )
    assert code == 0
    groups = group_study.read_groups(groups_file)
    rows = _rows()
    assert set(groups) == {(r["language"], r["id"]) for r in rows}
    assert set(groups.values()) == {0, 1}
    assert "| group | rows |" in groups_file.with_suffix(".md").read_text()

    folds = tmp_path / "folds"
    assert (
        group_study.main(
            ["split", "--groups-file", str(groups_file), "--data", str(data_file)] + ["--out", str(folds)]
        )
        == 0
    )
    for g in (0, 1):
        train = load_examples(folds / f"g{g}" / "train")
        heldout = load_examples(folds / f"g{g}" / "heldout")
        keys = lambda ds: set(zip(ds["language"], ds["id"], strict=True))  # noqa: E731
        assert keys(train).isdisjoint(keys(heldout))
        assert keys(train) | keys(heldout) == set(groups)
        assert {groups[k] for k in keys(heldout)} == {g}
        by_key = {(r["language"], r["id"]): r for r in rows}
        for row in heldout.to_list():  # text, label and language survive the round trip
            source = by_key[(row["language"], row["id"])]
            assert row["text"] == source["text"]
            assert row["bot"] == (source["label"] == "generated")
    counts = json.loads((folds / "folds.json").read_text())
    assert all(c["train"] + c["heldout"] == len(rows) for c in counts.values())


def test_split_refuses_rows_without_a_group(data_file, tmp_path, capsys):
    groups_file = tmp_path / "groups.tsv"
    rows = _rows()[1:]  # the first data row is left out of the groups file
    group_study.write_groups(
        groups_file, [r["language"] for r in rows], [r["id"] for r in rows], np.zeros(len(rows))
    )
    code = group_study.main(
        ["split", "--groups-file", str(groups_file), "--data", str(data_file)]
        + ["--out", str(tmp_path / "folds")]
    )
    err = capsys.readouterr().err.strip()
    assert code == 1 and "1 data rows have no group" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "folds").exists()
    missing = group_study.main(
        ["split", "--groups-file", str(tmp_path / "nope.tsv"), "--data", str(data_file)]
        + ["--out", str(tmp_path / "folds")]
    )
    assert missing == 2 and "does not exist" in capsys.readouterr().err


def _report(f1_en: float, f1_es: float, n: int = 100) -> dict:
    part = lambda f1: {"macro_f1": f1, "macro_f1_ci95": [f1 - 0.02, f1 + 0.01], "n": n}  # noqa: E731
    return {
        "overall": part((f1_en + f1_es) / 2) | {"n": 2 * n},
        "per_language": {"en": part(f1_en), "es": part(f1_es)},
    }


def test_table_lists_each_recipe_and_group(tmp_path, capsys):
    for name, report in {
        "old-g0": _report(0.8, 0.7),
        "old-g1": _report(0.9, 0.85),
        "new-g0": _report(0.85, 0.8),
    }.items():
        (tmp_path / name).mkdir()
        (tmp_path / name / "report.json").write_text(json.dumps(report))
    (tmp_path / "not-a-fold").mkdir()
    out = tmp_path / "table.md"
    assert group_study.main(["table", "--reports", str(tmp_path), "--out", str(out)]) == 0
    lines = out.read_text().splitlines()
    assert lines[0].startswith("| recipe | held-out group | n | macro-F1 en | macro-F1 es | macro-F1 all |")
    assert (
        lines[2] == "| new | 0 | 200 | 0.850 [0.830, 0.860] | 0.800 [0.780, 0.810] | 0.825 [0.805, 0.835] |"
    )
    assert [line.split(" | ")[:2] for line in lines[3:]] == [["| old", "0"], ["| old", "1"]]
    assert group_study.main(["table", "--reports", str(tmp_path / "not-a-fold")]) == 2
    assert "no RECIPE-gG/report.json" in capsys.readouterr().err
