"""Measure per-segment scores on mixed documents: human paragraphs followed or preceded by generated ones.

    python -m tools.mixed_documents [--data ../shared/data/autextification/subtask_1] [--model DIR]
        [--docs 300] [--paragraphs 2] [--out runs/mixed_documents]

From the validation split (the id-hash split the model did not train on), each document joins
``--paragraphs`` human texts and ``--paragraphs`` generated texts of one language with blank lines, the
human block first or second (a coin flip). ``score_records(segments="sentence")`` scores it; each
segment's truth is the class of most of its characters, its prediction ``bot_prob >= threshold``.

Reported per language and overall, for the segments' own scores and for the baseline that gives every
segment the document's score: segment-level macro-F1; the share of documents whose predicted boundary
(the cut between segments with the largest jump in mean score on either side) lands within one segment
of the true one (the baseline has no jump: its share is that of a cut drawn at random); and how often
the true boundary falls inside a segment rather than between two. Writes ``table.md`` and
``results.json``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

from autext_jax.metrics import macro_f1

DEFAULT_DATA = Path("../shared/data/autextification/subtask_1")


def build_documents(
    texts, labels, languages, n_docs: int, paragraphs: int, seed: int
) -> list[dict[str, Any]]:
    """Mixed documents per language: text, language, the boundary offset and which block comes first."""
    rng = np.random.default_rng(seed)
    texts, labels, languages = list(texts), np.asarray(labels), np.asarray(languages, dtype=object)
    docs = []
    for lang in sorted(set(languages.tolist())):
        human = [texts[i] for i in np.flatnonzero((labels == 0) & (languages == lang))]
        generated = [texts[i] for i in np.flatnonzero((labels == 1) & (languages == lang))]
        if len(human) < paragraphs or len(generated) < paragraphs:
            continue
        for _ in range(n_docs):
            blocks = {
                label: "\n\n".join(pool[i].strip() for i in rng.choice(len(pool), paragraphs, replace=False))
                for label, pool in ((0, human), (1, generated))
            }
            first = int(rng.integers(0, 2))
            head = blocks[first] + "\n\n"
            text = head + blocks[1 - first]
            docs.append({"text": text, "language": lang, "boundary": len(head), "first": first})
    return docs


def segment_truth(segments: list[dict[str, Any]], boundary: int, first: int) -> np.ndarray:
    """Each segment's class: the class of most of its characters (before ``boundary``: ``first``)."""
    out = []
    for s in segments:
        before = max(0, min(s["end"], boundary) - s["start"])
        after = (s["end"] - s["start"]) - before
        out.append(first if before >= after else 1 - first)
    return np.asarray(out, np.int64)


def true_cut(segments: list[dict[str, Any]], boundary: int) -> tuple[int, bool]:
    """Index of the first segment after the boundary (the cut), and whether a segment straddles it."""
    for k, s in enumerate(segments):
        if s["start"] >= boundary:
            return k, False
        if s["end"] > boundary:
            inside = boundary - s["start"] >= s["end"] - boundary  # cut after it if mostly before
            return (k + 1 if inside else k), True
    return len(segments), False


def predicted_cut(probs: np.ndarray) -> int | None:
    """The cut with the largest difference of mean score on its two sides (``None``: no jump at all)."""
    diffs = [abs(probs[:c].mean() - probs[c:].mean()) for c in range(1, probs.size)]
    if not diffs or max(diffs) == 0.0:
        return None
    return int(np.argmax(diffs)) + 1


def measure(docs: list[dict[str, Any]], records: list[dict[str, Any]], threshold: float) -> dict[str, Any]:
    """Segment macro-F1 and boundary hits per language and overall, for segment scores and the baseline."""
    rows: dict[str, dict[str, list]] = {}
    for doc, record in zip(docs, records, strict=True):
        segments = record["segments"]
        if len(segments) < 2:
            continue
        truth = segment_truth(segments, doc["boundary"], doc["first"])
        probs = np.array([s["bot_prob"] for s in segments], np.float32)
        cut, straddles = true_cut(segments, doc["boundary"])
        found = predicted_cut(probs)
        n_cuts = len(segments) - 1
        random_hit = sum(abs(c - cut) <= 1 for c in range(1, len(segments))) / n_cuts
        for key in (doc["language"], "all"):
            names = ("truth", "seg", "doc", "hit", "base_hit", "straddle", "n")
            r = rows.setdefault(key, {k: [] for k in names})
            r["truth"] += truth.tolist()
            r["seg"] += (probs >= np.float32(threshold)).tolist()
            r["doc"] += [record["bot_prob"] >= np.float32(threshold)] * len(segments)
            r["hit"].append(found is not None and abs(found - cut) <= 1)
            r["base_hit"].append(random_hit)
            r["straddle"].append(straddles)
            r["n"].append(len(segments))
    return {
        key: {
            "documents": len(r["hit"]),
            "segments": len(r["truth"]),
            "segments_per_document": float(np.mean(r["n"])),
            "segment_macro_f1": macro_f1(r["truth"], np.asarray(r["seg"], np.int64)),
            "baseline_macro_f1": macro_f1(r["truth"], np.asarray(r["doc"], np.int64)),
            "boundary_within_one_segment": float(np.mean(r["hit"])),
            "baseline_boundary_within_one_segment": float(np.mean(r["base_hit"])),
            "boundary_inside_a_segment": float(np.mean(r["straddle"])),
        }
        for key, r in rows.items()
    }


def table(results: dict[str, Any], threshold: float) -> str:
    lines = [
        f"threshold {threshold:.4f} (the model's, on the reported bot_prob scale)",
        "",
        "| language | docs | segments/doc | segment macro-F1 | baseline (doc score) | boundary ±1 segment "
        "| baseline (random cut) | boundary inside a segment |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for key, r in sorted(results.items(), key=lambda kv: kv[0] == "all"):
        lines.append(
            f"| {key} | {r['documents']} | {r['segments_per_document']:.1f} | {r['segment_macro_f1']:.3f} | "
            f"{r['baseline_macro_f1']:.3f} | {r['boundary_within_one_segment']:.3f} | "
            f"{r['baseline_boundary_within_one_segment']:.3f} | {r['boundary_inside_a_segment']:.3f} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.mixed_documents", description=__doc__)
    parser.add_argument("--data", default=str(DEFAULT_DATA))
    parser.add_argument("--model", default=None, help="model dir (default: the embedded model)")
    parser.add_argument("--docs", type=int, default=300, help="documents per language")
    parser.add_argument("--paragraphs", type=int, default=2, help="human (and generated) texts per document")
    parser.add_argument("--val-fraction", type=float, default=0.1)
    parser.add_argument("--split-salt", default="autext")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="runs/mixed_documents")
    args = parser.parse_args(argv)

    import autext_jax
    from autext_jax.data.dataset import column_values, load_examples, split_by_id

    _, val = split_by_id(load_examples([args.data]), args.val_fraction, args.split_salt)
    docs = build_documents(
        column_values(val, "text"), column_values(val, "bot"), column_values(val, "language"),
        args.docs, args.paragraphs, args.seed,
    )  # fmt: skip
    detector = autext_jax.load(args.model)
    records = detector.score_records([d["text"] for d in docs], segments="sentence")
    results = measure(docs, records, detector.threshold)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    setup = {k: getattr(args, k) for k in ("data", "model", "docs", "paragraphs", "val_fraction", "seed")}
    payload = {"setup": setup, "threshold": detector.threshold, "results": results}
    (out / "results.json").write_text(json.dumps(payload, indent=2) + "\n")
    text = table(results, detector.threshold)
    (out / "table.md").write_text(text)
    print(text, end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
