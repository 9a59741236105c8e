"""``tools.mixed_documents``: mixed documents, segment truth, boundary cuts, and a run on a tiny model."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tools import mixed_documents as md


def test_documents_join_human_and_generated_blocks_at_the_boundary():
    texts = [f"human {i}." for i in range(5)] + [f"bot {i}." for i in range(5)]
    labels = [0] * 5 + [1] * 5
    docs = md.build_documents(texts, labels, ["en"] * 10, n_docs=20, paragraphs=2, seed=0)
    assert len(docs) == 20 and {d["first"] for d in docs} == {0, 1}
    for d in docs:
        head, tail = d["text"][: d["boundary"]], d["text"][d["boundary"] :]
        first, second = ("human", "bot") if d["first"] == 0 else ("bot", "human")
        assert head.count(first) == 2 and tail.count(second) == 2 and first not in tail


def test_truth_and_cuts():
    segments = [{"start": 0, "end": 10}, {"start": 10, "end": 30}, {"start": 30, "end": 40}]
    assert md.segment_truth(segments, 10, first=0).tolist() == [0, 1, 1]
    assert md.segment_truth(segments, 25, first=1).tolist() == [1, 1, 0]  # mostly before: the first class
    assert md.true_cut(segments, 10) == (1, False)
    assert md.true_cut(segments, 25) == (2, True) and md.true_cut(segments, 12) == (1, True)
    assert md.predicted_cut(np.float32([0.1, 0.2, 0.9, 0.8])) == 2
    assert md.predicted_cut(np.float32([0.5, 0.5])) is None


def test_measure_segment_scores_against_the_document_baseline():
    docs = [{"language": "en", "boundary": 20, "first": 0, "text": "x" * 40}] * 2
    segments = [
        {"start": 0, "end": 10, "bot_prob": 0.1},
        {"start": 10, "end": 20, "bot_prob": 0.2},
        {"start": 20, "end": 30, "bot_prob": 0.9},
        {"start": 30, "end": 40, "bot_prob": 0.8},
    ]
    records = [{"bot_prob": 0.6, "segments": segments}] * 2
    result = md.measure(docs, records, threshold=0.5)
    for key in ("en", "all"):
        r = result[key]
        assert r["segment_macro_f1"] == 1.0 and r["baseline_macro_f1"] == pytest.approx(1 / 3)
        assert r["boundary_within_one_segment"] == 1.0
        assert r["baseline_boundary_within_one_segment"] == pytest.approx(1.0)  # 3 cuts, all within one
        assert r["boundary_inside_a_segment"] == 0.0 and r["documents"] == 2


def test_tool_runs_end_to_end(tmp_path, tiny_model_dir):
    rng = np.random.default_rng(0)
    words = "the of and to in is that it for on with as was by el la de que y en".split()
    for lang in ("en", "es"):
        (tmp_path / "data" / lang).mkdir(parents=True)
        lines = ["id\ttext\tlabel"]
        for i in range(60):
            sentences = [" ".join(rng.choice(words, 12)).capitalize() + "." for _ in range(3)]
            lines.append(f"{i}\t{' '.join(sentences)}\t{'generated' if i % 2 else 'human'}")
        (tmp_path / "data" / lang / "train.tsv").write_text("\n".join(lines) + "\n")
    out = tmp_path / "out"
    argv = ["--data", str(tmp_path / "data"), "--model", str(tiny_model_dir), "--docs", "4"]
    argv += ["--out", str(out)]
    assert md.main([*argv, "--val-fraction", "0.5"]) == 0
    results = json.loads((out / "results.json").read_text())["results"]
    assert set(results) == {"en", "es", "all"} and results["all"]["documents"] == 8
    assert results["all"]["segments_per_document"] >= 2
    assert "| all |" in (out / "table.md").read_text()
