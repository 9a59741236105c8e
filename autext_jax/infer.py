"""``python -m autext_jax.infer`` / ``autext-jax``: score texts, write one JSONL/CSV record per input.

Inputs: positional texts, ``--input`` files (``.txt`` one text per line, ``.jsonl`` field ``text``,
``.csv``/``.tsv`` column ``text``; ``id`` kept when present; any of them ``.gz``), ``-`` or nothing
for stdin lines; all read by ``tables.py``. Records come out in input order, each written whole.

Exit codes (``errors.py``): 0 done; 1 bad input or model (one line naming file and line), or a full
disk; 2 usage, a missing path, or an output that is one of the inputs; 130 interrupted (every record
written so far is complete).
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import errno
import io
import json
import logging
import math
import os
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from autext_jax import cli, paths
from autext_jax.config import COMPUTE_DTYPES
from autext_jax.data import tables
from autext_jax.errors import InputDataError as InputError
from autext_jax.errors import UsageError

FORMATS = tables.FORMATS


@dataclass
class Item:
    """One input record: its id, its text (``None`` if unreadable) and, if so, why."""

    id: Any
    text: str | None
    error: str | None = None


# ---- reading ----------------------------------------------------------------------------------


def input_format(path: str, forced: str | None) -> str:
    return forced or tables.format_of(path)


def read_items(path: str, fmt: str, on_error: str, first_index: int) -> Iterator[Item]:
    """Items of one input (read by ``tables``); ``first_index`` numbers records without an ``id``.

    A bad record raises ``InputError`` or, with ``on_error="skip"``, becomes an item with ``error``
    that keeps the record's own ``id`` when it has one.
    """
    for index, record in enumerate(tables.read(path, fmt, required=("text",)), first_index):
        item = _item(record)
        if item.error is not None and on_error != "skip":
            raise InputError(item.error)
        if item.id is None:
            item.id = index
        yield item


def _item(record: tables.Record) -> Item:
    if record.values is None:
        return Item(id=None, text=None, error=record.problem)
    text, item_id = record.values.get("text"), record.values.get("id")
    if not isinstance(text, str):
        kind = "null" if text is None else type(text).__name__
        return Item(id=item_id, text=None, error=f"{record.where}: field 'text' must be a string, got {kind}")
    return Item(id=item_id, text=text)


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


def check_paths(inputs: list[str], output: str | None) -> None:
    """Refuse what cannot work before anything is opened: missing inputs, an output that is an input."""
    for path in inputs:
        if path == "-":
            continue
        if paths.is_url(path):  # gs://, memory://, ...: read through the path layer
            if not paths.isfile(path):
                raise UsageError(f"input {path}: no such file")
            continue
        if not os.path.exists(path):
            raise UsageError(f"input {path}: no such file")
        if os.path.isdir(path):
            raise UsageError(f"input {path}: is a directory, expected a file")
        if not os.access(path, os.R_OK):
            raise UsageError(f"input {path}: not readable (permission denied)")
        # samefile follows links (symbolic and hard): writing there would empty the input.
        if output and os.path.exists(output) and os.path.samefile(path, output):
            raise UsageError(f"--output {output} is the input {path}; writing it would destroy the input")
    if output:
        parent = Path(output).resolve().parent
        if os.path.isdir(output) or not parent.is_dir() or not os.access(parent, os.W_OK):
            raise UsageError(f"--output {output}: cannot write there (a directory, or no such folder)")


# ---- writing ----------------------------------------------------------------------------------


class RecordWriter:
    """JSONL or CSV records, each written whole and at once (no buffer holds half a record).

    On a file or pipe every record goes out in unbuffered writes; if one fails (a full disk), a
    regular file is cut back to the end of the last complete record before the error is raised.
    JSON is strict: a non-finite number is refused rather than written as ``NaN``.
    """

    def __init__(self, stream: IO[str] | IO[bytes], fmt: str, columns: list[str], name: str = "<stdout>"):
        self.stream = stream
        self.fmt = fmt
        self.columns = columns
        self.name = name
        self.count = 0
        self._bytes = 0  # length of the complete records written

    def begin(self) -> None:
        """The CSV header (nothing for JSONL)."""
        if self.fmt == "csv":
            self._write(self._csv_line(self.columns))

    @staticmethod
    def _csv_line(values: list[Any]) -> str:
        buffer = io.StringIO()
        csv.writer(buffer, lineterminator="\n").writerow(values)
        return buffer.getvalue()

    def write(self, record: dict[str, Any]) -> None:
        if self.fmt == "csv":
            line = self._csv_line([_csv_value(record.get(c)) for c in self.columns])
        else:
            fields = {c: record.get(c) for c in self.columns}
            line = json.dumps(fields, ensure_ascii=False, allow_nan=False) + "\n"
        self._write(line)
        self.count += 1

    def _write(self, line: str) -> None:
        if isinstance(self.stream, io.TextIOBase):  # e.g. a captured sys.stdout
            self.stream.write(line)
            self.stream.flush()
            return
        data = memoryview(line.encode("utf-8"))
        try:
            while data:
                data = data[self.stream.write(data) or 0 :]
        except BrokenPipeError:  # the reader went away (e.g. `| head`): the CLI runner stops quietly
            raise
        except OSError as err:
            if self.stream.seekable():
                with contextlib.suppress(OSError):  # not a regular file (e.g. /dev/full)
                    self.stream.truncate(self._bytes)
            written = f"{self.count} complete records written before it" if self.count else "nothing written"
            reason = err.strerror or os.strerror(err.errno or errno.EIO)
            raise OSError(err.errno, f"{reason} ({written})", self.name) from None
        self._bytes += len(line.encode("utf-8"))


def _csv_value(value: Any) -> Any:
    """A CSV cell: empty for a missing value, JSON for a list (segments), the value otherwise."""
    if value is None:
        return ""
    return json.dumps(value, allow_nan=False) if isinstance(value, list | dict) else value


def _open_output(path: str | None) -> IO[str] | IO[bytes]:
    """The unbuffered binary stream records go to (``sys.stdout`` as is when it has no file)."""
    if path:
        return open(path, "wb", buffering=0)
    buffer = getattr(sys.stdout, "buffer", None)  # already unbuffered under PYTHONUNBUFFERED
    raw = buffer if isinstance(buffer, io.RawIOBase) else getattr(buffer, "raw", None)
    if raw is None:
        return sys.stdout
    sys.stdout.flush()
    return raw


def output_columns(args: argparse.Namespace) -> list[str]:
    columns = ["id", "bot_prob", "english_prob", "is_bot"]
    if args.long == "chunk":
        columns.append("n_chunks")
    columns += ["n_tokens", "short"]
    if args.operating_point:
        columns.append("operating_point")
    if args.segments:
        columns.append("segments")
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
    p.add_argument("--threshold", type=cli.threshold_arg, help="is_bot threshold (default: the model's)")
    p.add_argument("--batch-size", type=int, default=None,
                   help="rows of a max-length batch; shorter buckets get more rows, same tokens "
                   "(default: 2048 tokens on CPU, 32 rows on accelerators)")
    p.add_argument("--max-length", type=int, default=512, help="tokens per text or window (default 512)")
    p.add_argument("--dtype", choices=COMPUTE_DTYPES, default="float32")
    p.add_argument("--long", choices=("truncate", "chunk"), default="truncate",
                   help="texts over max-length: keep the start (default) or score overlapping windows")
    p.add_argument("--stride", type=int, default=128, help="tokens shared by adjacent windows (chunk)")
    p.add_argument("--operating-point", metavar="NAME",
                   help="decide is_bot at a stored operating point, e.g. fpr=0.01 (see calibration.json)")
    p.add_argument("--segments", choices=("sentence", "window"),
                   help="also score segments: sentences merged to >= 30 tokens, or the --long chunk windows")
    p.add_argument("--on-error", choices=("fail", "skip"), default="fail",
                   help="bad input line: stop (default) or write a record with 'error' and go on")
    p.add_argument("--window", type=int, default=None, metavar="N",
                   help="inputs in flight: records come out at most N inputs behind the reading "
                   "(default 2048; 1 when stdin is a terminal)")
    p.add_argument("--compile-cache", metavar="DIR",
                   help="persistent XLA compilation cache, so later runs skip compiling (default: "
                   "$AUTEXT_JAX_COMPILE_CACHE, else $XDG_CACHE_HOME/autext-jax/xla or "
                   "~/.cache/autext-jax/xla)")
    p.add_argument("--no-compile-cache", action="store_true",
                   help="do not use the compilation cache (also AUTEXT_JAX_COMPILE_CACHE=off)")
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
    check_paths(args.inputs, args.output)
    detector, cache_dir = _load_detector(args)
    log = logging.getLogger("autext_jax.infer")
    which = "the embedded default model " if args.model is None else ""
    log.info(
        "model: %s%s (dtype %s, threshold %.4f)", which, detector.model_dir, args.dtype, detector.threshold
    )
    total = None if args.quiet or not args.inputs or args.inputs == ["-"] else count_records(args)
    out = _open_output(args.output)
    start = time.perf_counter()
    writer = RecordWriter(out, args.format, output_columns(args), args.output or "<stdout>")
    try:
        writer.begin()
        _score(args, detector, writer, total)
    finally:
        if args.output:
            out.close()
        _report(log, detector, writer.count, time.perf_counter() - start, cache_dir)
    return 0


def _load_detector(args: argparse.Namespace):
    """The detector and the compilation cache directory in use (``None``: none)."""
    from autext_jax import compile_cache, engine
    from autext_jax.api import load
    from autext_jax.config import ConfigError
    from autext_jax.convert import ConversionError

    cache_dir = None
    if not args.no_compile_cache:
        wanted = Path(args.compile_cache) if args.compile_cache else compile_cache.default_cache_dir()
        cache_dir = compile_cache.enable_compile_cache(wanted) if wanted is not None else None
    options = engine.EngineOptions(
        max_length=args.max_length,
        batch_size=args.batch_size,
        long=args.long,
        stride=args.stride,
        **_stream_options(args),
    )
    try:
        return load(args.model, dtype=args.dtype, threshold=args.threshold, options=options), cache_dir
    except FileNotFoundError as err:
        raise UsageError(str(err).strip("'\"")) from None
    except (ConversionError, ConfigError) as err:
        raise InputError(f"model {args.model or '(default)'}: {err}") from None


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
        records = detector.stream_records(items, segments=args.segments, operating_point=args.operating_point)
        for item, scored in records:
            record: dict[str, Any] = {"id": item.id}
            if scored is not None:
                if not math.isfinite(scored["bot_prob"]) or not math.isfinite(scored["english_prob"]):
                    raise InputError(
                        f"record {item.id!r}: the model gave a non-finite score (broken weights or dtype)"
                    )
                record.update(scored)
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


def _report(log: logging.Logger, detector, count: int, seconds: float, cache_dir: Path | None) -> None:
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
        f"; {stats.cache_hits} loaded from the cache in {cache_dir}" if cache_dir else "; no cache",
    )


def exit_fast(code: int) -> None:
    """End the process once every output is flushed, skipping the interpreter's teardown.

    Freeing XLA's client, executables and arrays object by object takes ≈0.2 s, a tenth of a short
    run. If a final flush fails (a closed pipe, a full disk) the ordinary exit reports it as before.
    """
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    except OSError:
        sys.exit(code)
    logging.shutdown()
    os._exit(code)


if __name__ == "__main__":
    exit_fast(main())
