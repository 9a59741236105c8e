"""How the detector fares under RAID's cheap evasions, before and after ``autext_jax.normalize``.

    python -m tools.evasion_study [--data ../shared/data/autextification/subtask_1] [--limit N]
        [--attacks homoglyph zero_width ...] [--rate homoglyph=0.5] [--output-dir runs/evasion]

Scores the embedded model's validation split (``configs/mini.py``'s id-hash split: fraction 0.1,
salt "autext", as ``tools/calibrate_default_model.py``) clean and under each attack of
``tools/evasion_attacks.py``, once on the raw text (``normalize=False``) and once through the
normalizing path, and writes ``evasion.md`` (macro-F1 overall and per language, recall of generated
texts, and the share of texts flagged ``obfuscated``, per attack, before → after) and
``evasion.json``. Decisions use the model's own threshold on raw probabilities (as ``evaluate``).
It also counts the clean texts whose token ids normalization leaves unchanged. ``--limit N`` scores
a fixed random subset of N texts (seeded). Exit codes: 0 done, 1 bad data, 2 bad usage.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from autext_jax import cli
from autext_jax.errors import UsageError
from tools.calibrate_default_model import DEFAULT_DATA, SALT, VAL_FRACTION
from tools.evasion_attacks import ATTACKS, attack_texts


@dataclass(frozen=True)
class Split:
    texts: list[str]
    languages: list[str]
    labels: np.ndarray  # 1 generated, 0 human


def validation_split(data: Sequence[str], limit: int | None, seed: int, fraction: float) -> Split:
    """The embedded model's held-out rows (all, or a seeded random ``limit`` of them, in file order)."""
    from autext_jax.data.dataset import column_values, load_examples, split_by_id

    ds = load_examples(list(data), languages=["en", "es"])
    _, val = split_by_id(ds, fraction, SALT)
    rows = list(range(len(val)))
    if limit is not None and limit < len(rows):
        rows = sorted(random.Random(seed).sample(rows, limit))
        val = val.select(rows)
    return Split(
        column_values(val, "text"), column_values(val, "language"), np.asarray(column_values(val, "bot"))
    )


class Scorer:
    """The model loaded twice, raw (``normalize=False``) and normalizing (the default), scoring
    through the API's records: ``(bot_prob, obfuscated)`` per text."""

    def __init__(self, model: str | None, max_length: int):
        import autext_jax

        common = {"calibrated": False, "max_length": max_length}
        self.detectors = {
            False: autext_jax.load(model, normalize=False, **common),
            True: autext_jax.load(model, **common),
        }
        self.detector = self.detectors[True]
        self.threshold = float(self.detector.raw_threshold)

    def score(self, texts: list[str], normalize: bool) -> tuple[np.ndarray, np.ndarray]:
        records = self.detectors[normalize].score_records(texts)
        probs = np.float32([r["bot_prob"] for r in records])
        return probs, np.asarray([bool(r["obfuscated"]) for r in records], dtype=bool)


def group_metrics(labels: np.ndarray, probs: np.ndarray, flags: np.ndarray, threshold: float) -> dict:
    from autext_jax.metrics import per_class_f1, predict

    pred = predict(probs, threshold)
    f1_human, f1_generated = per_class_f1(labels, pred)
    generated = labels == 1
    return {
        "n": int(labels.size),
        "macro_f1": float((f1_human + f1_generated) / 2),
        "recall": float(pred[generated].mean()) if generated.any() else None,
        "flagged": float(flags.mean()) if flags.size else 0.0,
        "flagged_human": float(flags[~generated].mean()) if (~generated).any() else None,
        "flagged_generated": float(flags[generated].mean()) if generated.any() else None,
    }


def measure(
    split: Split,
    scorer: Scorer,
    attacks: list[str],
    rates: dict[str, float],
    seed: int,
    done: Callable[[dict], None] = lambda results: None,
) -> dict:
    """Per attack (and ``none``): metrics overall and per language, raw ("before") and normalized ("after").

    The normalizing path scores only the texts normalization changes; a text it leaves as it is
    is tokenized exactly as the raw one, so its raw score is its score (and it is not flagged).
    ``done(results so far)`` is called after each attack (the CLI writes its files then).
    """
    from autext_jax.normalize import normalize

    langs = np.asarray(split.languages, dtype=object)
    groups = {"all": np.ones(langs.size, dtype=bool)} | {name: langs == name for name in sorted(set(langs))}
    out: dict[str, Any] = {}
    for name in ["none", *attacks]:
        texts = (
            split.texts if name == "none" else attack_texts(split.texts, ATTACKS[name], rates.get(name), seed)
        )
        before, _ = scorer.score(texts, normalize=False)
        after, flags = before.copy(), np.zeros(len(texts), dtype=bool)
        changed = [i for i, text in enumerate(texts) if normalize(text).changed]
        if changed:
            after[changed], flags[changed] = scorer.score([texts[i] for i in changed], normalize=True)
        row = {"changed_by_normalization": len(changed)}
        for side, probs in (("before", before), ("after", after)):
            row[side] = {
                g: group_metrics(split.labels[rows], probs[rows], flags[rows], scorer.threshold)
                for g, rows in groups.items()
            }
        out[name] = row
        before_f1, after_f1 = row["before"]["all"]["macro_f1"], row["after"]["all"]["macro_f1"]
        print(f"{name}: macro-F1 {before_f1:.3f} -> {after_f1:.3f}", flush=True)
        done(out)
    return out


def flag_rates(split: Split, attacks: list[str], rates: dict[str, float], seed: int) -> dict[str, dict]:
    """Without the model: per attack (and ``none``), the share of human and generated texts that
    ``normalize`` flags ``obfuscated`` (the same call the scoring path makes) and that it changes,
    and the share of words (split at whitespace) that differ from the clean text before and after
    normalization, for attacks that keep the word count (``None`` for the others)."""
    from autext_jax.normalize import normalize

    generated = split.labels == 1
    out = {}
    for name in ["none", *attacks]:
        texts = (
            split.texts if name == "none" else attack_texts(split.texts, ATTACKS[name], rates.get(name), seed)
        )
        results = [normalize(t) for t in texts]
        flags = np.asarray([r.obfuscated for r in results], dtype=bool)
        out[name] = {
            "flagged_human": float(flags[~generated].mean()),
            "flagged_generated": float(flags[generated].mean()),
            "changed": float(np.mean([r.changed > 0 for r in results])),
            "words_wrong_before": _words_wrong(split.texts, texts),
            "words_wrong_after": _words_wrong(split.texts, [r.text for r in results]),
        }
    return out


def _words_wrong(clean: list[str], texts: list[str]) -> float | None:
    pairs = [(a.split(), b.split()) for a, b in zip(clean, texts, strict=True)]
    if any(len(a) != len(b) for a, b in pairs):
        return None
    total = sum(len(a) for a, _ in pairs)
    return sum(x != y for a, b in pairs for x, y in zip(a, b, strict=True)) / max(total, 1)


def token_ids_unchanged(texts: list[str], tokenizer, max_length: int) -> dict[str, int]:
    """Clean texts whose token ids (as scored: up to ``max_length``) normalization leaves as they are."""
    from autext_jax.data.batching import tokenize
    from autext_jax.normalize import normalize

    normalized = [normalize(t) for t in texts]
    before = tokenize(tokenizer, texts, max_length)
    after = tokenize(tokenizer, [n.text for n in normalized], max_length)
    same = [a == b for a, b in zip(before, after, strict=True)]
    flagged = [n.obfuscated for n in normalized]
    return {
        "texts": len(texts),
        "ids_unchanged": sum(same),
        "ids_changed_flagged": sum(1 for s, f in zip(same, flagged, strict=True) if not s and f),
        "ids_changed_unflagged": sum(1 for s, f in zip(same, flagged, strict=True) if not s and not f),
        "text_changed": sum(1 for n in normalized if n.changed),
        "flagged": sum(flagged),
    }


def markdown(results: dict, ids: dict[str, int], n: int) -> str:
    langs = [g for g in next(iter(results.values()))["before"] if g != "all"]
    head = [
        "attack",
        "macro-F1 all",
        *(f"macro-F1 {g}" for g in langs),
        "recall",
        "flagged (human / generated)",
    ]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]

    def pair(row: dict, group: str, key: str, scale: float = 100) -> str:
        a, b = row["before"][group][key], row["after"][group][key]
        return "–" if a is None else f"{scale * a:.1f} → {scale * b:.1f}"

    for name, row in results.items():
        cells = [name, pair(row, "all", "macro_f1"), *(pair(row, g, "macro_f1") for g in langs)]
        after = row["after"]["all"]
        cells += [
            pair(row, "all", "recall"),
            f"{100 * after['flagged_human']:.1f} / {100 * after['flagged_generated']:.1f}",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    lines.append(
        f"{n} validation texts; before → after normalization; macro-F1, recall (of generated texts) and "
        "the share flagged `obfuscated` (after) in %. "
        f"Clean token ids unchanged: {ids['ids_unchanged']} of {ids['texts']} "
        f"(changed: {ids['ids_changed_flagged']} flagged, {ids['ids_changed_unflagged']} not flagged)."
    )
    return "\n".join(lines)


def _rates(values: list[str]) -> dict[str, float]:
    rates = {}
    for value in values:
        name, _, rate = value.partition("=")
        if name not in ATTACKS:
            raise UsageError(f"--rate {value}: unknown attack {name!r}; known: {', '.join(ATTACKS)}")
        try:
            rates[name] = float(rate)
        except ValueError:
            raise UsageError(f"--rate {value}: the rate must be a number, e.g. {name}=0.5") from None
    return rates


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m tools.evasion_study", description=__doc__.split("\n")[0])
    parser.add_argument(
        "--data", nargs="+", default=[str(DEFAULT_DATA)], help="AuTexTification subtask_1 folder"
    )
    parser.add_argument("--model", default=None, help="model dir or Hub id (default: the embedded model)")
    parser.add_argument("--limit", type=int, default=None, help="a seeded random subset of this many texts")
    parser.add_argument("--attacks", nargs="+", choices=list(ATTACKS), default=list(ATTACKS))
    parser.add_argument("--rate", action="append", default=[], metavar="ATTACK=RATE", help="override a rate")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--val-fraction", type=float, default=float(VAL_FRACTION), help="the split's held-out share"
    )
    parser.add_argument("--max-length", type=int, default=512)
    parser.add_argument("--output-dir", default="runs/evasion")
    parser.add_argument(
        "--flags-only",
        action="store_true",
        help="no scoring: print the flag rates per attack and the clean token-id check as JSON",
    )
    cli.add_debug_flag(parser)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    return cli.main(parser.prog, parser, _main, argv)


def _main(args: argparse.Namespace) -> int:
    cli.setup_logging("evasion_study")
    rates = _rates(args.rate)
    if args.limit is not None and args.limit < 1:
        raise UsageError(f"--limit must be positive, got {args.limit}")
    split = validation_split(args.data, args.limit, args.seed, args.val_fraction)
    if args.flags_only:
        from autext_jax.hub import load_tokenizer, resolve_model_dir

        tokenizer = load_tokenizer(resolve_model_dir(args.model))
        report = {
            "n": len(split.texts),
            "token_ids": token_ids_unchanged(split.texts, tokenizer, args.max_length),
            "flags": flag_rates(split, args.attacks, rates, args.seed),
        }
        print(json.dumps(report, indent=2))
        return 0
    scorer = Scorer(args.model, args.max_length)
    ids = token_ids_unchanged(split.texts, scorer.detector.tokenizer, args.max_length)
    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    rates_used = {name: rates.get(name, ATTACKS[name].rate) for name in args.attacks}

    def write(results: dict) -> None:
        report = {"n": len(split.texts), "limit": args.limit, "seed": args.seed, "rates": rates_used,
                  "token_ids": ids, "results": results}  # fmt: skip
        (out / "evasion.json").write_text(json.dumps(report, indent=2) + "\n")
        (out / "evasion.md").write_text(markdown(results, ids, len(split.texts)) + "\n")

    results = measure(split, scorer, args.attacks, rates, args.seed, write)
    print(markdown(results, ids, len(split.texts)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
