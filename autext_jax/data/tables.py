"""The one reader of text tables, for scoring (``infer``) and for training data (``data``).

Formats (``.gz`` of any of them is decompressed on the fly; local paths, ``-`` for stdin, or any URL
that ``paths.py`` opens, such as ``gs://`` and ``memory://``):

- ``txt``: each line is one text (column ``text``); blank lines are (empty) texts.
- ``jsonl``: each non-blank line is one JSON object; blank lines hold no record.
- ``tsv``: each line is one row, fields split on tabs, the first line names the columns. TSV is not
  quoted CSV: a ``"`` is an ordinary character, so a text starting with an unmatched quote can never
  swallow the rows after it. Blank lines hold no row.
- ``csv``: RFC 4180 quoting (a quoted field may span lines); the first record names the columns.

Every line is decoded as UTF-8 on its own, so a problem names ``file:line`` (for CSV, the line the
record starts on). A UTF-8 byte-order mark on the first line and Windows line ends (CRLF) are
accepted everywhere. A bad record is yielded with its ``problem`` so callers can stop or skip it; a
file that cannot be read at all (no header, a corrupt ``.gz``) raises ``InputDataError``.
"""

from __future__ import annotations

import csv
import json
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import IO, Any

from autext_jax import paths
from autext_jax.errors import InputDataError

FORMATS = ("txt", "jsonl", "csv", "tsv")
_SUFFIXES = {"txt": "txt", "text": "txt", "jsonl": "jsonl", "ndjson": "jsonl", "json": "jsonl",
             "csv": "csv", "tsv": "tsv"}
STDIN = "-"


@dataclass
class Record:
    """One row: where it is (``file:line``), its values by column name, or why it cannot be read."""

    where: str
    values: dict[str, Any] | None
    problem: str | None = None


def format_of(path: str, default: str | None = "txt") -> str | None:
    """``txt``/``jsonl``/``csv``/``tsv`` from the file name (``.gz`` ignored); ``default`` otherwise."""
    if path == STDIN:
        return "txt"
    name = paths.name(path).lower().removesuffix(".gz")
    suffix = name.rsplit(".", 1)[-1] if "." in name else ""
    return _SUFFIXES.get(suffix, default)


def read(path: str, fmt: str, *, required: Sequence[str] = ()) -> Iterator[Record]:
    """The records of one table, in file order.

    ``required`` columns must be in a CSV/TSV header (else ``InputDataError``, naming the columns
    found); a JSONL record lacking one of them is a record with a ``problem``.
    """
    if fmt not in FORMATS:
        raise ValueError(f"table format {fmt!r} is not one of {FORMATS}")
    stream = sys.stdin.buffer if path == STDIN else paths.open_binary(path)
    try:
        lines = _decoded_lines(path, stream)
        if fmt == "txt":
            for where, line, problem in lines:
                yield Record(where, None, problem) if problem else Record(where, {"text": _chomp(line)})
        elif fmt == "jsonl":
            yield from _jsonl(lines, required)
        elif fmt == "tsv":
            yield from _tsv(path, lines, required)
        else:
            yield from _csv(path, lines, required)
    finally:
        if stream is not sys.stdin.buffer:
            stream.close()


def _chomp(line: str) -> str:
    return line[:-2] if line.endswith("\r\n") else line.removesuffix("\n")


def _decoded_lines(path: str, stream: IO[bytes]) -> Iterator[tuple[str, str, str | None]]:
    """``(file:line, text, problem)``; an undecodable line comes with a problem (text with U+FFFD)."""
    label = "<stdin>" if path == STDIN else path
    try:
        for lineno, raw in enumerate(stream, 1):
            where, problem = f"{label}:{lineno}", None
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as err:
                problem = f"{where}: not valid UTF-8 ({err.reason} at byte {err.start})"
                line = raw.decode("utf-8", errors="replace")
            yield where, line.removeprefix("\ufeff") if lineno == 1 else line, problem
    except (OSError, EOFError) as err:  # e.g. a truncated or corrupt .gz
        raise InputDataError(f"{label}: cannot read ({err})") from None


def _jsonl(lines: Iterator[tuple[str, str, str | None]], required: Sequence[str]) -> Iterator[Record]:
    for where, line, problem in lines:
        if problem:
            yield Record(where, None, problem)
            continue
        if not line.strip():
            continue  # a blank line holds no record in JSONL
        try:
            obj = json.loads(line, parse_constant=_no_constant)
        except json.JSONDecodeError as err:
            yield Record(where, None, f"{where}: malformed JSON ({err.msg} at column {err.colno})")
            continue
        except ValueError as err:  # NaN/Infinity from _no_constant
            yield Record(where, None, f"{where}: {err}")
            continue
        except RecursionError:
            yield Record(where, None, f"{where}: JSON nested too deeply to read")
            continue
        missing = [c for c in required if not isinstance(obj, dict) or c not in obj]
        if not isinstance(obj, dict) or missing:
            fields = " and ".join(repr(c) for c in missing)
            yield Record(where, None, f"{where}: expected a JSON object with field {fields}")
        else:
            yield Record(where, obj)


def _no_constant(name: str) -> None:
    raise ValueError(f"non-standard JSON constant {name} (JSON has no NaN or Infinity)")


def _check_header(path: str, header: list[str], required: Sequence[str], problem: str | None) -> None:
    if problem:
        raise InputDataError(problem)
    missing = [c for c in required if c not in header]
    if missing:
        found = ", ".join(header) or "(none)"
        names = ", ".join(repr(c) for c in missing)
        raise InputDataError(f"{path}: no {names} column; columns found: {found}")


def _tsv(path: str, lines, required: Sequence[str]) -> Iterator[Record]:
    first = next(lines, None)
    if first is None:
        return
    _, line, problem = first
    header = _chomp(line).split("\t")
    _check_header(path, header, required, problem)
    for where, line, problem in lines:
        text = _chomp(line)
        fields = text.split("\t")
        if problem:
            yield Record(where, None, problem)
        elif not text:
            continue  # a blank line holds no row
        elif len(fields) != len(header):
            yield Record(where, None, f"{where}: {len(fields)} fields, the header has {len(header)}")
        else:
            yield Record(where, dict(zip(header, fields, strict=True)))


def _csv(path: str, lines, required: Sequence[str]) -> Iterator[Record]:
    state: dict[str, Any] = {"where": f"{path}:0", "start": None, "problem": None}

    def numbered() -> Iterator[str]:
        for where, line, problem in lines:
            state["where"] = where
            state["start"] = state["start"] or where
            state["problem"] = state["problem"] or problem
            yield line

    csv.field_size_limit(2**31 - 1)  # a 1 MB text is a valid field
    reader = csv.reader(numbered(), strict=True)

    def next_row() -> tuple[str, list[str] | None, str | None]:
        """The next record (``StopIteration`` at the end), where it starts, and any problem."""
        state["start"], state["problem"] = None, None
        try:
            row = next(reader)
        except csv.Error as err:
            where = state["start"] or state["where"]
            return where, None, f"{where}: malformed CSV ({err})"
        return state["start"], row, state["problem"]

    try:
        _, header, problem = next_row()
    except StopIteration:
        return
    if header is None:
        raise InputDataError(problem)
    _check_header(path, header, required, problem)
    while True:
        try:
            where, row, problem = next_row()
        except StopIteration:
            return
        if problem or row is None:
            yield Record(where, None, problem)
        elif len(row) != len(header):
            if row:  # a blank line holds no record
                yield Record(where, None, f"{where}: {len(row)} fields, the header has {len(header)}")
        else:
            yield Record(where, dict(zip(header, row, strict=True)))
