"""``records.py``, the one record builder: checked by hand, then every path (API, CLI, evaluate) row
for row against it. Corpus parts and Ray are compared with the CLI in ``test_corpus.py`` and
``test_ray_data.py``."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

import autext_jax
from autext_jax import calibration as calib
from autext_jax import evaluate as ev
from autext_jax import infer, records
from autext_jax.data.encoding import TextEncoder
from autext_jax.decision import Decision
from autext_jax.engine import DocLogits
from autext_jax.errors import InputDataError, UsageError
from autext_jax.records import Layout, RecordBuilder

LONG = " ".join(["the cat sat on the mat while the dog slept"] * 8)
TEXTS = ["The results are shown in the table.", "El modelo fue entrenado.", "", LONG, "hola"]


def _sigmoid(z: float) -> float:
    return 1.0 / (1.0 + math.exp(-z))


@pytest.fixture(scope="module")
def detector(tiny_model_dir):
    return autext_jax.load(str(tiny_model_dir), max_length=32)


def test_a_record_by_hand():
    layout = Layout(ids=True, chunks=False, source=True, text=True, errors=True)
    builder = RecordBuilder(Decision(0.6), layout)
    assert builder.columns == ["id", "bot_prob", "english_prob", "is_bot", "n_tokens", "truncated", "short",
                               "obfuscated", "n_changed", "source", "text", "error"]
    got = builder.build(DocLogits(0.5, -1.0, 1, 40), id="a", text="x", source="f.txt")
    assert got == {"id": "a", "bot_prob": pytest.approx(_sigmoid(0.5), rel=1e-6),
                   "english_prob": pytest.approx(_sigmoid(-1.0), rel=1e-6), "is_bot": True,  # 0.622 >= 0.6
                   "n_tokens": 40, "truncated": False, "short": False, "obfuscated": None, "n_changed": None,
                   "source": "f.txt", "text": "x", "error": None}
    assert list(got) == builder.columns
    below = builder.build(DocLogits(0.4, 0.0, 1, 29, truncated=True), id=1)  # sigmoid(0.4) = 0.599
    assert (below["is_bot"], below["short"], below["truncated"]) == (False, True, True)
    failed = builder.build(None, id=7, error="f.jsonl:line 3: not JSON")
    assert failed == {c: None for c in builder.columns} | {"id": 7, "error": "f.jsonl:line 3: not JSON"}
    with pytest.raises(InputDataError, match="record 'b': the model gave a non-finite score"):
        builder.build(DocLogits(float("nan"), 0.0, 1, 40), id="b")


def test_calibration_reports_mapped_probabilities_and_decides_on_raw_logits():
    points = {"fpr=0.1": calib.OperatingPoint(0.1, raw_logit=0.3, threshold=0.4, fpr=0.1, recall=0.5)}
    cal = calib.Calibration(calib.HeadCalibration("platt", 2.0, -1.0), operating_points=points, min_tokens=10)
    doc = DocLogits(0.5, 0.5, 1, 12)  # calibrated bot logit 2·0.5 − 1 = 0: reported 0.5
    record = RecordBuilder(Decision(0.6, calibration=cal)).build(doc)
    assert record["bot_prob"] == 0.5 and record["is_bot"] is True  # raw sigmoid(0.5) = 0.622 >= 0.6
    assert record["short"] is False  # 12 >= the calibration's 10
    given = RecordBuilder(Decision(0.6, given_threshold=0.55, calibration=cal)).build(doc)
    assert given["is_bot"] is False  # a given threshold compares what is shown: 0.5 < 0.55
    at_point = RecordBuilder(Decision(0.6, calibration=cal), Layout(operating_point="fpr=0.1")).build(doc)
    assert (at_point["is_bot"], at_point["operating_point"]) == (True, "fpr=0.1")  # 0.5 >= 0.3
    assert RecordBuilder(Decision(0.6, calibration=cal), Layout(operating_point="fpr=0.1")).build(
        DocLogits(0.2, 0.0, 1, 12)
    )["is_bot"] is False
    with pytest.raises(UsageError, match="operating point 'fpr=0.2' is not stored with this model; it has"):
        RecordBuilder(Decision(0.6, calibration=cal), Layout(operating_point="fpr=0.2"))


def test_encoding_facts_reach_the_record(detector, monkeypatch):
    """The spot for per-text facts: what ``TextEncoder.encode`` learns lands in the record's columns."""
    encode = TextEncoder.encode

    def with_facts(self, texts):
        encoded = zip(encode(self, texts), texts, strict=True)
        return [replace(e, facts={"n_chars": len(t)}) for e, t in encoded]

    monkeypatch.setattr(TextEncoder, "encode", with_facts)
    monkeypatch.setattr(records, "FACT_FIELDS", ("n_chars",))
    got = detector.score_records(TEXTS)
    assert [r["n_chars"] for r in got] == [len(t) for t in TEXTS]
    assert list(got[0])[-2:] == ["short", "n_chars"]


def _built(detector, layout: Layout, texts, ids=None) -> list[dict]:
    builder = detector.builder(layout)
    ids = ids if ids is not None else list(range(len(texts)))
    return [builder.build(doc, id=ids[i]) for i, doc in detector.run(enumerate(texts))]


def test_api_records_are_the_builders(detector):
    want = _built(detector, Layout(), TEXTS)
    assert detector.score_records(TEXTS) == want
    assert list(detector.score_iter(TEXTS)) == want
    assert want[3]["truncated"] and want[2]["n_tokens"] == 2 and want[4]["short"]


def test_cli_records_are_the_builders(detector, tiny_model_dir, tmp_path, capsys):
    source = tmp_path / "in.jsonl"
    lines = [json.dumps({"id": f"r{i}", "text": t}) for i, t in enumerate(TEXTS)]
    lines.insert(2, "{not json")
    source.write_text("\n".join(lines) + "\n")
    out = tmp_path / "out.jsonl"
    argv = ["-m", str(tiny_model_dir), "--max-length", "32", "-i", str(source), "-o", str(out), "-q",
            "--on-error", "skip", "--include-text"]
    assert infer.main(argv) == 0, capsys.readouterr().err
    got = [json.loads(line) for line in out.read_text().splitlines()]
    layout = Layout(ids=True, chunks=False, text=True, errors=True)
    want = _built(detector, layout, TEXTS, ids=[f"r{i}" for i in range(len(TEXTS))])
    for record, text in zip(want, TEXTS, strict=True):
        record["text"] = text
    bad = detector.builder(layout).build(None, id=2, error=got[2]["error"])
    assert got[2]["error"].startswith(f"{source}:3: malformed JSON")
    assert got == want[:2] + [bad] + want[2:]


def test_evaluate_predictions_are_the_builders(detector, tiny_model_dir, tmp_path):
    rows = [(i, t, i % 2) for i, t in enumerate(TEXTS) if t]
    data = tmp_path / "en.tsv"
    data.write_text("id\ttext\tlabel\n" + "".join(f"{i}\t{t}\t{'generated' if y else 'human'}\n"
                                                   for i, t, y in rows))
    out = tmp_path / "out"
    argv = ["--model", str(tiny_model_dir), "--max-length", "32", "--data", str(data),
            "--output-dir", str(out), "--threshold", "0.5", "--save-predictions", "--no-plots",
            "--bootstrap", "0"]
    assert ev.main(argv) == 0
    got = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    raw = autext_jax.load(str(tiny_model_dir), max_length=32, calibrated=False)
    texts = [t for _, t, _ in rows]
    builder = RecordBuilder(Decision(0.5), Layout(ids=True, chunks=False))
    want = [builder.build(doc, id=str(rows[i][0])) for i, doc in raw.run(enumerate(texts))]
    for record, (_, _, label) in zip(want, rows, strict=True):
        record.update(language="en", label=label)  # from the file name
    counted = [len(raw.tokenizer(t, truncation=True, max_length=32)["input_ids"]) for t in texts]
    assert [r["n_tokens"] for r in got] == counted
    assert got == want
    assert np.array_equal([r["is_bot"] for r in got], np.float32([r["bot_prob"] for r in got]) >= 0.5)


def test_decision_and_records_need_numpy_only():
    """The decision and the record builder load no JAX, Flax, transformers or pyarrow (cheap to reuse)."""
    code = ("import sys, autext_jax.decision, autext_jax.records; "
            "print(sorted(m for m in ('jax', 'flax', 'transformers', 'pyarrow') if m in sys.modules))")
    repo = Path(__file__).resolve().parents[1]
    env = dict(os.environ, PYTHONPATH=str(repo))  # this checkout's package, whatever is installed
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env)
    assert out.stdout.strip() == "[]"
