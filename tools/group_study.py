"""Held-out-group study: how a recipe does on text unlike anything it was trained on.

The AuTexTification rows carry no domain column (they mix legal text, tweets and how-to articles),
so groups are made from the text itself: k-means of an encoder's mean-pooled embeddings, centred
per language (a multilingual encoder still puts English and Spanish apart; centring leaves topic
and style as what separates the clusters). Each group is then held out in turn: a model is trained
on the other groups and scored on the held-out one, so the figure says how a recipe transfers to a
domain it never saw, unlike an in-domain validation split.

    python -m tools.group_study assign --encoder e5/pruned-12l --data DATA --groups 3 --out study/groups.tsv
    python -m tools.group_study split --groups-file study/groups.tsv --data DATA --out study/folds
    # for each group G and recipe R (tools/make_default_model.sh does this loop):
    python -m autext_jax.train --config configs/R.py --workdir study/runs/R-gG --init INIT \
        --set data.paths=study/folds/gG/train
    python -m autext_jax.evaluate --model study/runs/R-gG/export --data study/folds/gG/heldout \
        --output-dir study/reports/R-gG
    python -m tools.group_study table --reports study/reports --out study/table.md

``assign`` writes ``groups.tsv`` (language, id, group) and ``groups.md`` (size, label balance, length
and tweet markers per group, with example openings, so a reader can name each group). ``split``
writes every row exactly once per fold: ``gG/train/rows.jsonl`` (the other groups) and
``gG/heldout/rows.jsonl`` (group G). ``table`` reads the evaluate reports into one markdown table.
Exit codes: 0 done, 1 bad data, 2 bad usage (one-line message).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from autext_jax import cli
from autext_jax.errors import InputDataError, UsageError

GROUPS_HEADER = ("language", "id", "group")
_REPORT_NAME = re.compile(r"^(?P<recipe>.+)-g(?P<group>\d+)$")


class StudyError(InputDataError):
    """Data that does not fit the study (rows without a group, a group with one class): exit 1."""


class StudyUsageError(UsageError, ValueError):
    """A bad flag or a missing file: exit 2."""


# ---- grouping ----------------------------------------------------------------------------------


def kmeans(
    points: np.ndarray, k: int, *, seed: int = 0, restarts: int = 4, iterations: int = 100
) -> np.ndarray:
    """Cluster labels ``(n,)`` in ``[0, k)``: Lloyd's algorithm from k-means++ starts, best of ``restarts``.

    Labels are renumbered by cluster size (0 = largest, ties by first row) so they do not depend on
    which start won.
    """
    n = len(points)
    if not 1 <= k <= n:
        raise StudyUsageError(f"cannot make {k} groups of {n} rows")
    rng = np.random.default_rng(seed)
    squared = (points**2).sum(axis=1)
    best_labels, best_cost = None, np.inf
    for _ in range(restarts):
        centres = _kmeans_plus_plus(points, squared, k, rng)
        labels = np.full(n, -1)
        for _ in range(iterations):
            distances = _squared_distances(points, squared, centres)
            new_labels = distances.argmin(axis=1)
            if np.array_equal(new_labels, labels):
                break
            labels = new_labels
            for c in range(k):
                members = points[labels == c]
                # An emptied cluster restarts at the point worst served by its current centre.
                centres[c] = members.mean(axis=0) if len(members) else points[distances.min(axis=1).argmax()]
        cost = float(np.maximum(distances[np.arange(n), labels], 0).sum())
        if cost < best_cost:
            best_labels, best_cost = labels, cost
    return _renumber_by_size(best_labels, k)


def _kmeans_plus_plus(
    points: np.ndarray, squared: np.ndarray, k: int, rng: np.random.Generator
) -> np.ndarray:
    centres = [points[rng.integers(len(points))]]
    for _ in range(1, k):
        stacked = np.stack(centres)
        nearest = _squared_distances(points, squared, stacked).min(axis=1)
        weights = np.maximum(nearest, 0)
        total = weights.sum()
        pick = rng.choice(len(points), p=weights / total) if total > 0 else rng.integers(len(points))
        centres.append(points[pick])
    return np.stack(centres).astype(np.float64)


def _squared_distances(points: np.ndarray, squared: np.ndarray, centres: np.ndarray) -> np.ndarray:
    """``(n, k)`` squared distances from each point (``squared`` = its squared norm) to each centre."""
    return squared[:, None] - 2 * points @ centres.T + (centres**2).sum(axis=1)[None, :]


def _renumber_by_size(labels: np.ndarray, k: int) -> np.ndarray:
    sizes = np.bincount(labels, minlength=k)
    first_row = np.array([np.flatnonzero(labels == c)[0] if sizes[c] else len(labels) for c in range(k)])
    order = sorted(range(k), key=lambda c: (-sizes[c], first_row[c]))
    new_of_old = np.empty(k, dtype=np.int64)
    new_of_old[order] = np.arange(k)
    return new_of_old[labels]


def centre_per_language(embeddings: np.ndarray, languages: Sequence[str]) -> np.ndarray:
    """Unit vectors after subtracting each language's mean (so language is not what clusters split on)."""
    out = embeddings.astype(np.float64).copy()
    languages = np.asarray(languages)
    for language in np.unique(languages):
        rows = languages == language
        out[rows] -= out[rows].mean(axis=0)
    norms = np.linalg.norm(out, axis=1, keepdims=True)
    return out / np.maximum(norms, 1e-12)


def mean_embeddings(
    encoder_dir: Path, texts: Sequence[str], *, layers: int | None, max_length: int, batch_size: int
) -> np.ndarray:
    """``(len(texts), hidden)`` float32: the mean over real tokens of the encoder's hidden states.

    ``layers`` (optional): stop after the first N blocks (domain shows early; the cost is per block).
    """
    import jax
    from flax import nnx

    from autext_jax.convert import load_checkpoint
    from autext_jax.data import batching
    from autext_jax.hub import load_tokenizer
    from autext_jax.model import attention_mask_of

    model = load_checkpoint(encoder_dir, allow_fresh=True).model
    total_layers = len(model.encoder.layers)
    if layers is not None and not 1 <= layers <= total_layers:
        raise StudyUsageError(f"--layers {layers}: {encoder_dir} has {total_layers} layers")
    depth = layers or total_layers
    tokenizer = load_tokenizer(encoder_dir)

    @nnx.jit
    def embed(model, input_ids, attention_mask):
        x = model.encoder.embeddings(input_ids, attention_mask)
        mask = attention_mask_of(attention_mask, None)
        for layer in model.encoder.layers[:depth]:
            x = layer(x, mask)
        weights = attention_mask[..., None].astype(x.dtype)  # the mean whatever the heads pool
        return (x * weights).sum(axis=1) / weights.sum(axis=1).clip(1)

    ids = batching.tokenize(tokenizer, texts, max_length)
    buckets = batching.bucket_lengths(max_length)
    order = np.argsort([len(x) for x in ids], kind="stable")
    out = np.zeros((len(texts), model.cfg.encoder.hidden_size), np.float32)
    pad_id = model.cfg.encoder.pad_token_id
    for start in range(0, len(order), batch_size):
        rows = order[start : start + batch_size]
        length = batching.bucket_for(max(len(ids[r]) for r in rows), buckets)
        input_ids, mask = batching.pad_batch([ids[r] for r in rows], length, batch_size, pad_id)
        out[rows] = np.asarray(jax.device_get(embed(model, input_ids, mask)))[: len(rows)]
    return out


def describe_groups(rows: dict[str, list], groups: np.ndarray, k: int, examples: int = 3) -> str:
    """A markdown table per group: rows per language, share generated, words, tweet markers, openings."""
    texts, languages, bots = rows["text"], np.asarray(rows["language"]), np.asarray(rows["bot"])
    words = np.array([len(t.split()) for t in texts])
    tweet_like = np.array([bool(re.search(r"(^|\s)[@#]\w|https?://", t)) for t in texts])
    lines = [
        "| group | rows | en | es | generated | median words | with @, # or a link | openings |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for g in range(k):
        members = np.flatnonzero(groups == g)
        labelled = bots[members] >= 0
        generated = float((bots[members][labelled] == 1).mean()) if labelled.any() else float("nan")
        openings = " / ".join(_opening(texts[i]) for i in members[:examples])
        lines.append(
            f"| {g} | {len(members):,} | {(languages[members] == 'en').sum():,} | "
            f"{(languages[members] == 'es').sum():,} | {generated:.1%} | {np.median(words[members]):.0f} | "
            f"{tweet_like[members].mean():.1%} | {openings} |"
        )
    return "\n".join(lines) + "\n"


def _opening(text: str, size: int = 50) -> str:
    flat = " ".join(text.split()).replace("|", "/")
    return flat[:size] + ("…" if len(flat) > size else "")


def write_groups(path: Path, languages: Sequence[str], ids: Sequence[str], groups: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as f:
        f.write("\t".join(GROUPS_HEADER) + "\n")
        for language, row_id, group in zip(languages, ids, groups, strict=True):
            f.write(f"{language}\t{row_id}\t{int(group)}\n")


def read_groups(path: Path) -> dict[tuple[str, str], int]:
    """``{(language, id): group}`` from ``assign``'s file; a malformed line is an error naming it."""
    if not path.is_file():
        raise StudyUsageError(f"groups file {path} does not exist; write it with `group_study.py assign`")
    out: dict[tuple[str, str], int] = {}
    with path.open(encoding="utf-8") as f:
        header = tuple(f.readline().rstrip("\n").split("\t"))
        if header != GROUPS_HEADER:
            raise StudyError(f"{path}: first line must be {'<TAB>'.join(GROUPS_HEADER)}, got {header}")
        for number, line in enumerate(f, start=2):
            parts = line.rstrip("\n").split("\t")
            if len(parts) != 3 or not parts[2].isdigit():
                raise StudyError(f"{path}:{number}: expected language<TAB>id<TAB>group, got {line.strip()!r}")
            key = (parts[0], parts[1])
            if key in out:
                raise StudyError(f"{path}:{number}: row {key} appears twice")
            out[key] = int(parts[2])
    return out


# ---- folds -------------------------------------------------------------------------------------


def load_rows(paths: Sequence[str], languages: Sequence[str]) -> dict[str, list]:
    from autext_jax.data.dataset import load_examples

    ds = load_examples(list(paths), languages=list(languages))
    rows = ds.to_dict()
    keys = list(zip(rows["language"], rows["id"], strict=True))
    if len(set(keys)) != len(keys):
        raise StudyError(
            "some (language, id) pairs occur more than once in the data; ids must be unique per language"
        )
    return rows


def write_folds(
    rows: dict[str, list], groups: dict[tuple[str, str], int], out_dir: Path
) -> dict[str, dict[str, int]]:
    """Per group G: ``gG/train/rows.jsonl`` (every other row) and ``gG/heldout/rows.jsonl``; counts back.

    Every data row must have a group and every grouped row must be in the data: a mismatch means the
    groups were made from other data, and a fold built from it would silently drop rows.
    """
    keys = list(zip(rows["language"], rows["id"], strict=True))
    missing = [k for k in keys if k not in groups]
    if missing:
        raise StudyError(
            f"{len(missing)} data rows have no group (first: {missing[0]}); re-run assign on this data"
        )
    extra = len(groups) - len(keys)
    if extra:
        raise StudyError(
            f"the groups file names {extra} rows that are not in the data; re-run assign on this data"
        )
    labels = {1: "generated", 0: "human"}
    assignment = np.array([groups[k] for k in keys])
    lines = []  # each row serialised once, written to every fold
    for i, key in enumerate(keys):
        record = {"id": key[1], "text": rows["text"][i], "language": key[0]}
        if rows["bot"][i] >= 0:
            record["label"] = labels[rows["bot"][i]]
        lines.append(json.dumps(record, ensure_ascii=False) + "\n")
    counts: dict[str, dict[str, int]] = {}
    for g in sorted(set(assignment.tolist())):
        for part, rows_in_part in (("train", assignment != g), ("heldout", assignment == g)):
            (out_dir / f"g{g}" / part).mkdir(parents=True, exist_ok=True)
            with (out_dir / f"g{g}" / part / "rows.jsonl").open("w", encoding="utf-8") as f:
                f.writelines(line for line, keep in zip(lines, rows_in_part, strict=True) if keep)
        held = int((assignment == g).sum())
        counts[f"g{g}"] = {"train": len(keys) - held, "heldout": held}
    (out_dir / "folds.json").write_text(json.dumps(counts, indent=2) + "\n")
    return counts


# ---- table -------------------------------------------------------------------------------------


def collect_reports(reports_dir: Path) -> dict[str, dict[int, dict]]:
    """``{recipe: {group: report}}`` from ``reports_dir/RECIPE-gG/report.json``."""
    found: dict[str, dict[int, dict]] = {}
    for report in sorted(reports_dir.glob("*/report.json")):
        match = _REPORT_NAME.match(report.parent.name)
        if match:
            found.setdefault(match["recipe"], {})[int(match["group"])] = json.loads(report.read_text())
    if not found:
        raise StudyUsageError(
            f"no RECIPE-gG/report.json under {reports_dir}; run evaluate with --output-dir there"
        )
    return found


def format_table(found: dict[str, dict[int, dict]], languages: Sequence[str] = ("en", "es")) -> str:
    """Rows: recipe × held-out group; columns: macro-F1 [95% CI] per language and overall, n."""
    header = ["recipe", "held-out group", "n", *[f"macro-F1 {lang}" for lang in languages], "macro-F1 all"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for recipe, by_group in sorted(found.items()):
        for group, report in sorted(by_group.items()):
            cells = [recipe, str(group), f"{report['overall']['n']:,}"]
            for lang in languages:
                part = report.get("per_language", {}).get(lang)
                cells.append(_f1_cell(part) if part else "–")
            cells.append(_f1_cell(report["overall"]))
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _f1_cell(part: dict) -> str:
    ci = part.get("macro_f1_ci95")
    interval = f" [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else ""
    return f"{part['macro_f1']:.3f}{interval}"


# ---- command line ------------------------------------------------------------------------------


def _assign(args: argparse.Namespace) -> int:
    rows = load_rows(args.data, args.languages)
    print(f"embedding {len(rows['text']):,} rows with {args.encoder}", file=sys.stderr)
    embeddings = mean_embeddings(
        args.encoder, rows["text"], layers=args.layers, max_length=args.max_length, batch_size=args.batch_size
    )
    groups = kmeans(centre_per_language(embeddings, rows["language"]), args.groups, seed=args.seed)
    write_groups(args.out, rows["language"], rows["id"], groups)
    summary = describe_groups(rows, groups, args.groups)
    args.out.with_suffix(".md").write_text(summary, encoding="utf-8")
    print(summary, end="")
    return 0


def _split(args: argparse.Namespace) -> int:
    counts = write_folds(load_rows(args.data, args.languages), read_groups(args.groups_file), args.out)
    print(json.dumps(counts))
    return 0


def _table(args: argparse.Namespace) -> int:
    table = format_table(collect_reports(args.reports), args.languages)
    if args.out:
        args.out.write_text(table, encoding="utf-8")
    print(table, end="")
    return 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    assign = commands.add_parser("assign", help="k-means groups of the encoder's mean embeddings")
    assign.add_argument("--encoder", required=True, type=Path, help="HF-layout encoder or model dir")
    assign.add_argument("--groups", type=int, default=3)
    assign.add_argument("--layers", type=int, default=None, help="use only the first N blocks (cheaper)")
    assign.add_argument("--max-length", type=int, default=128)
    assign.add_argument("--batch-size", type=int, default=64)
    assign.add_argument("--seed", type=int, default=0)
    assign.add_argument("--out", required=True, type=Path, help="groups.tsv to write (groups.md beside it)")
    split = commands.add_parser("split", help="write train/heldout files for each group")
    split.add_argument("--groups-file", required=True, type=Path)
    split.add_argument("--out", required=True, type=Path)
    table = commands.add_parser("table", help="markdown table of RECIPE-gG/report.json files")
    table.add_argument("--reports", required=True, type=Path)
    table.add_argument("--out", type=Path)
    for sub in (assign, split, table):
        sub.add_argument("--languages", nargs="+", default=["en", "es"])
        cli.add_debug_flag(sub)
    for sub in (assign, split):
        sub.add_argument("--data", required=True, nargs="+", help="data files/folders")
    return parser


def main(argv: list[str] | None = None) -> int:
    commands = {"assign": _assign, "split": _split, "table": _table}
    return cli.main("group_study", _parser(), lambda args: commands[args.command](args), argv)


if __name__ == "__main__":
    sys.exit(main())
