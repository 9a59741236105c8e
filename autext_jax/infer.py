"""``python -m autext_jax.infer`` / ``autext-jax``: score texts, write one JSONL/CSV record per input.

Inputs: positional texts, ``--input`` files (``.txt`` one text per line, ``.jsonl`` field ``text``,
``.csv``/``.tsv`` column ``text``; ``id`` kept when present; any of them ``.gz``), ``-`` or nothing
for stdin lines. Records come out in input order and are flushed as produced.

Exit codes: 0 done; 1 bad input or model (one line naming file and line); 2 usage / missing path;
130 interrupted (every record written so far is complete).
"""

from __future__ import annotations

import argparse
import csv
import gzip
import json
import logging
import os
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from autext_jax import cli
from autext_jax.errors import InputDataError as InputError
from autext_jax.errors import UsageError

FORMATS = ("txt", "jsonl", "csv", "tsv")
COMPILE_CACHE_ENV = "AUTEXT_JAX_COMPILE_CACHE"


@dataclass
class Item:
    """One input record: its id, its text (``None`` if unreadable) and, if so, why."""

    id: Any
    text: str | None
    error: str | None = None


# ---- reading ----------------------------------------------------------------------------------


def input_format(path: str, forced: str | None) -> str:
    if forced:
        return forced
    if path == "-":
        return "txt"
    name = path[:-3] if path.endswith(".gz") else path
    suffix = Path(name).suffix.lower().lstrip(".")
    return suffix if suffix in FORMATS else "txt"


def _open_binary(path: str) -> IO[bytes]:
    if path == "-":
        return sys.stdin.buffer
    return gzip.open(path, "rb") if path.endswith(".gz") else open(path, "rb")


def _decoded_lines(path: str, stream: IO[bytes]) -> Iterator[tuple[int, str, str | None]]:
    """(line number, text, problem) triples, decoded line by line so an error names its exact line.

    An undecodable line comes with a problem message (and its text decoded with replacements).
    """
    try:
        for lineno, raw in enumerate(stream, 1):
            problem = None
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as err:
                problem = f"{path}:{lineno}: not valid UTF-8 ({err.reason} at byte {err.start})"
                line = raw.decode("utf-8", errors="replace")
            if lineno == 1:
                line = line.removeprefix("\ufeff")
            yield lineno, line, problem
    except (OSError, EOFError) as err:  # e.g. a truncated or corrupt .gz
        raise InputError(f"{path}: cannot read ({err})") from None


def read_items(path: str, fmt: str, on_error: str, first_index: int) -> Iterator[Item]:
    """Items of one input; ``first_index`` numbers records without an ``id`` across all inputs.

    A bad record raises ``InputError`` or, with ``on_error="skip"``, becomes an item with ``error``.
    """
    stream = _open_binary(path)
    reader = {"txt": _txt_items, "jsonl": _jsonl_items}.get(fmt, _table_items)
    try:
        for index, item in enumerate(reader(path, fmt, _decoded_lines(path, stream)), first_index):
            if item.error is not None and on_error != "skip":
                raise InputError(item.error)
            if item.id is None:
                item.id = index
            yield item
    finally:
        if stream is not sys.stdin.buffer:
            stream.close()


def _bad(message: str) -> Item:
    return Item(id=None, text=None, error=message)


def _txt_items(path: str, fmt: str, lines: Iterator[tuple[int, str, str | None]]) -> Iterator[Item]:
    for _, line, problem in lines:
        yield _bad(problem) if problem else Item(id=None, text=line.rstrip("\r\n"))


def _jsonl_items(path: str, fmt: str, lines: Iterator[tuple[int, str, str | None]]) -> Iterator[Item]:
    for lineno, line, problem in lines:
        if problem:
            yield _bad(problem)
        elif not line.strip():
            continue  # a blank line holds no record in JSONL
        else:
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as err:
                yield _bad(f"{path}:{lineno}: malformed JSON ({err.msg} at column {err.colno})")
                continue
            if isinstance(obj, dict) and isinstance(obj.get("text"), str):
                yield Item(id=obj.get("id"), text=obj["text"])
            else:
                yield _bad(f"{path}:{lineno}: expected a JSON object with a string field 'text'")


def _table_items(path: str, fmt: str, lines: Iterator[tuple[int, str, str | None]]) -> Iterator[Item]:
    state = {"lineno": 0, "problem": None}

    def numbered() -> Iterator[str]:
        for lineno, line, problem in lines:
            state["lineno"] = lineno
            state["problem"] = state["problem"] or problem
            yield line

    csv.field_size_limit(2**31 - 1)  # a 1 MB text is a valid field
    reader = csv.reader(numbered(), delimiter="\t" if fmt == "tsv" else ",")
    kind = fmt.upper()
    try:
        header = next(reader, None)
    except csv.Error as err:
        raise InputError(f"{path}:{state['lineno']}: malformed {kind} header ({err})") from None
    if header is None:
        return
    if state["problem"] or "text" not in header:
        found = ", ".join(header) or "(none)"
        raise InputError(state["problem"] or f"{path}: no 'text' column; columns found: {found}")
    text_col, id_col = header.index("text"), header.index("id") if "id" in header else None
    while True:
        state["problem"] = None
        try:
            row = next(reader)
        except StopIteration:
            return
        except csv.Error as err:
            yield _bad(f"{path}:{state['lineno']}: malformed {kind} row ({err})")
            continue
        if state["problem"]:
            yield _bad(state["problem"])
        elif len(row) != len(header):
            if row:  # a blank line holds no record
                yield _bad(f"{path}:{state['lineno']}: {len(row)} fields, the header has {len(header)}")
        else:
            yield Item(id=row[id_col] if id_col is not None else None, text=row[text_col])


def all_items(args: argparse.Namespace) -> Iterator[Item]:
    """Positional texts first, then each ``--input`` in order (stdin when there is nothing else)."""
    index = 0
    for text in args.texts:
        yield Item(id=index, text=text)
        index += 1
    for path in args.inputs:
        for item in read_items(path, input_format(path, args.input_format), args.on_error, index):
            index += 1
            yield item


def count_records(args: argparse.Namespace) -> int | None:
    """Records in the inputs (for the progress bar's ETA); ``None`` if unknown (stdin) or unreadable."""
    if "-" in args.inputs:
        return None
    try:
        return len(args.texts) + sum(
            sum(1 for _ in read_items(p, input_format(p, args.input_format), "skip", 0)) for p in args.inputs
        )
    except (InputError, OSError):
        return None


def check_paths(paths: list[str]) -> None:
    for path in paths:
        if path == "-":
            continue
        if not os.path.exists(path):
            raise UsageError(f"input {path}: no such file")
        if os.path.isdir(path):
            raise UsageError(f"input {path}: is a directory, expected a file")
        if not os.access(path, os.R_OK):
            raise UsageError(f"input {path}: not readable (permission denied)")


# ---- writing ----------------------------------------------------------------------------------


class RecordWriter:
    """JSONL or CSV records, each written whole and flushed at once."""

    def __init__(self, stream: IO[str], fmt: str, columns: list[str]):
        self.stream = stream
        self.fmt = fmt
        self.columns = columns
        self.count = 0
        if fmt == "csv":
            self._csv = csv.writer(stream, lineterminator="\n")
            self._csv.writerow(columns)
            stream.flush()

    def write(self, record: dict[str, Any]) -> None:
        if self.fmt == "csv":
            self._csv.writerow(["" if record.get(c) is None else record[c] for c in self.columns])
        else:
            self.stream.write(json.dumps({c: record.get(c) for c in self.columns}, ensure_ascii=False) + "\n")
        self.stream.flush()
        self.count += 1


def output_columns(args: argparse.Namespace) -> list[str]:
    columns = ["id", "bot_prob", "english_prob", "is_bot"]
    if args.long == "chunk":
        columns.append("n_chunks")
    if args.include_text:
        columns.append("text")
    if args.on_error == "skip":
        columns.append("error")
    return columns


# ---- command line -----------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="autext-jax",
        description="Score texts as human-written or machine-generated (and English or not).",
    )
    p.add_argument("texts", nargs="*", help="texts to score (none and no --input: read stdin lines)")
    p.add_argument("--input", "-i", dest="inputs", action="append", default=[], metavar="PATH",
                   help=".txt/.jsonl/.csv/.tsv, optionally .gz; '-' for stdin; repeatable")
    p.add_argument("--input-format", choices=FORMATS, help="override the format guessed from the extension")
    p.add_argument("--output", "-o", metavar="PATH", help="write records here instead of stdout")
    p.add_argument("--format", choices=("jsonl", "csv"), default="jsonl", help="output format")
    p.add_argument("--include-text", action="store_true", help="copy each text into its record")
    p.add_argument("--model", "-m", help="model directory or Hub id (default: the embedded model)")
    p.add_argument("--threshold", type=float, help="is_bot threshold (default: the model's)")
    p.add_argument("--batch-size", type=int, default=None,
                   help="rows of a max-length batch; shorter buckets get more rows, same tokens "
                   "(default: 2048 tokens on CPU, 32 rows on accelerators)")
    p.add_argument("--max-length", type=int, default=512, help="tokens per text or window (default 512)")
    p.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32")
    p.add_argument("--long", choices=("truncate", "chunk"), default="truncate",
                   help="texts over max-length: keep the start (default) or score overlapping windows")
    p.add_argument("--stride", type=int, default=128, help="tokens shared by adjacent windows (chunk)")
    p.add_argument("--on-error", choices=("fail", "skip"), default="fail",
                   help="bad input line: stop (default) or write a record with 'error' and go on")
    p.add_argument("--window", type=int, default=None, metavar="N",
                   help="inputs in flight: records come out at most N inputs behind the reading "
                   "(default 2048; 1 when stdin is a terminal)")
    p.add_argument("--compile-cache", metavar="DIR",
                   help=f"persistent XLA compilation cache (default: ${COMPILE_CACHE_ENV} if set)")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress bar")
    p.add_argument("--verbose", "-v", action="store_true", help="say which model, shapes and compile count")
    cli.add_debug_flag(p)
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    return cli.main("autext-jax", parser, _main, argv)


def _main(args: argparse.Namespace) -> int:
    if not args.texts and not args.inputs:
        args.inputs = ["-"]
    cli.setup_logging("autext-jax", verbose=args.verbose)
    return _run(args)


def _run(args: argparse.Namespace) -> int:
    check_paths(args.inputs)
    if args.output:
        parent = Path(args.output).resolve().parent
        if os.path.isdir(args.output) or not parent.is_dir() or not os.access(parent, os.W_OK):
            raise UsageError(f"--output {args.output}: cannot write there (a directory, or no such folder)")
    cache_dir = args.compile_cache or os.environ.get(COMPILE_CACHE_ENV)
    detector = _load_detector(args, cache_dir)
    log = logging.getLogger("autext_jax.infer")
    which = "the embedded default model " if args.model is None else ""
    log.info(
        "model: %s%s (dtype %s, threshold %.4f)", which, detector.model_dir, args.dtype, detector.threshold
    )
    total = None if args.quiet or not args.inputs or args.inputs == ["-"] else count_records(args)
    out = open(args.output, "w", encoding="utf-8", newline="") if args.output else sys.stdout
    start = time.perf_counter()
    writer = RecordWriter(out, args.format, output_columns(args))
    try:
        _score(args, detector, writer, total)
    finally:
        if out is not sys.stdout:
            out.close()
        _report(log, detector, writer.count, time.perf_counter() - start, cache_dir)
    return 0


def _load_detector(args: argparse.Namespace, cache_dir: str | None):
    from autext_jax import engine
    from autext_jax.api import load
    from autext_jax.config import ConfigError
    from autext_jax.convert import ConversionError

    if cache_dir:
        engine.enable_compile_cache(cache_dir)
    try:
        return load(
            args.model,
            dtype=args.dtype,
            max_length=args.max_length,
            batch_size=args.batch_size,
            long=args.long,
            stride=args.stride,
            threshold=args.threshold,
            **_stream_options(args),
        )
    except FileNotFoundError as err:
        raise UsageError(str(err).strip("'\"")) from None
    except (ConversionError, ConfigError) as err:
        raise InputError(f"model {args.model or '(default)'}: {err}") from None
    except ValueError as err:  # an option out of range for this model (max length, stride, ...)
        raise UsageError(str(err)) from None


def _stream_options(args: argparse.Namespace) -> dict[str, int]:
    """Typing at a terminal gets each record at once; files and pipes are batched for speed."""
    if args.window is not None:
        if args.window < 1:
            raise UsageError(f"--window must be at least 1, got {args.window}")
        return {"window": args.window}
    if "-" in args.inputs and sys.stdin.isatty():
        return {"window": 1}
    return {}


def _score(args: argparse.Namespace, detector, writer: RecordWriter, total: int | None) -> None:
    bar = None
    if not args.quiet and args.inputs and args.inputs != ["-"]:
        from tqdm import tqdm

        bar = tqdm(total=total, unit="text", file=sys.stderr, dynamic_ncols=True)
    try:
        items = ((item, item.text) for item in all_items(args))
        for item, doc in detector.engine.run(items):
            record: dict[str, Any] = {"id": item.id}
            if doc is not None:
                record.update(detector.record(doc.bot, doc.english, doc.n_chunks))
            else:
                record["error"] = item.error
            if args.include_text:
                record["text"] = item.text
            writer.write(record)
            if bar is not None:
                bar.update(1)
    finally:
        if bar is not None:
            bar.close()


def _report(log: logging.Logger, detector, count: int, seconds: float, cache_dir: str | None) -> None:
    from autext_jax import engine

    stats = detector.engine.stats
    log.info(
        "%d records in %.1f s (%.1f texts/s); %d windows in %d batches, %.0f%% padding",
        count, seconds, count / seconds if seconds else 0.0, stats.windows, stats.batches,
        100 * stats.padding_fraction,
    )
    log.info(
        "compilations: %d (shapes rows x length: %s)%s",
        stats.compilations,
        ", ".join(f"{r}x{b}" for r, b in sorted(stats.shapes, key=lambda s: s[1])) or "none",
        f"; {engine.cache_hit_count()} loaded from the cache in {cache_dir}" if cache_dir else "",
    )


if __name__ == "__main__":
    sys.exit(main())
