"""What scoring reads: input specs (files, globs, folders, URLs) → table files → ``Item`` records.

Formats: the text tables of ``data/tables.py`` (TXT/JSONL/CSV/TSV, ``.gz`` too) and Parquet, streamed
one record batch at a time with ``pyarrow.parquet.ParquetFile.iter_batches`` (memory stays flat for
any file size; only the text and id columns are read). Every path goes through ``paths.py``, so local
paths, ``gs://``, ``hf://datasets/OWNER/NAME/...`` and other fsspec URLs work the same. A glob
(``*.parquet``) or a folder stands for the table files it matches or holds, sorted by path so that
every process sees the same list in the same order (corpus mode's parts rely on it).
"""

from __future__ import annotations

import glob as _glob
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from autext_jax import paths
from autext_jax.data import tables
from autext_jax.errors import InputDataError, UsageError

FORMATS = (*tables.FORMATS, "parquet")
_GLOB_CHARS = "*?["
_PARQUET_BATCH = 4096  # rows per record batch read from Parquet


@dataclass
class Item:
    """One input record: its id, its text (``None`` if unreadable) and, if so, why."""

    id: Any
    text: str | None
    error: str | None = None


@dataclass(frozen=True)
class Columns:
    """Which columns hold the text and the id (``id=None``: the record's 0-based index)."""

    text: str = "text"
    id: str | None = "id"


def format_of(path: str, forced: str | None = None) -> str:
    if forced:
        return forced
    if paths.name(path).lower().endswith(".parquet"):
        return "parquet"
    return tables.format_of(path)


def _is_table(path: str) -> bool:
    name = paths.name(path).lower()
    return name.endswith(".parquet") or tables.format_of(path, default=None) is not None


def expand(spec: str) -> list[str]:
    """The files an input spec means: itself, a glob's matches, or a folder's table files (sorted)."""
    if spec == tables.STDIN:
        return [spec]
    if any(c in spec for c in _GLOB_CHARS):
        if paths.is_url(spec):
            prefix = f"{paths.scheme(spec)}://"
            matches = paths.filesystem(spec).glob(spec)
            found = [f if paths.is_url(f) else prefix + f.lstrip("/") for f in matches]
        else:
            found = [str(paths.local(f)) for f in _glob.glob(str(paths.local(spec)), recursive=True)]
        found = sorted(f for f in found if paths.isfile(f))
        if not found:
            raise UsageError(f"input {spec}: matches no file")
        return found
    if paths.isdir(spec):
        hidden = (".", "_")  # temp files, markers, manifests
        found = [f for f in paths.walk_files(spec) if _is_table(f) and not paths.name(f).startswith(hidden)]
        if not found:
            raise UsageError(
                f"input {spec}: a folder with no table files (*.parquet, *.jsonl, *.csv, *.tsv, *.txt)"
            )
        return found
    return [spec]


def parquet_row_counts(path: str) -> list[int]:
    """Rows per row group of a Parquet file (read from its footer only)."""
    import pyarrow.parquet as pq

    with paths.open_binary(path) as stream:
        meta = pq.ParquetFile(stream).metadata
        return [meta.row_group(i).num_rows for i in range(meta.num_row_groups)]


def count(path: str, fmt: str) -> int:
    """Records in one input (Parquet from its footer; others by reading them)."""
    if fmt == "parquet":
        return sum(parquet_row_counts(path))
    return sum(1 for _ in tables.read(path, fmt))


def read_items(
    path: str,
    fmt: str,
    on_error: str,
    first_index: int,
    columns: Columns = Columns(),
    row_groups: list[int] | None = None,
) -> Iterator[Item]:
    """Items of one input; ``first_index`` numbers records without an id; ``row_groups`` (Parquet only)
    restricts the read to those row groups.

    A bad record raises ``InputDataError`` or, with ``on_error="skip"``, becomes an item with ``error``
    that keeps the record's own ``id`` when it has one.
    """
    records = _parquet(path, columns, row_groups) if fmt == "parquet" else _table(path, fmt, columns)
    for index, item in enumerate(records, first_index):
        if item.error is not None and on_error != "skip":
            raise InputDataError(item.error)
        if item.id is None:
            item.id = index
        yield item


def _table(path: str, fmt: str, columns: Columns) -> Iterator[Item]:
    required = (columns.text,) if fmt != "txt" or columns.text == "text" else ()
    if fmt == "txt" and columns.text != "text":
        raise UsageError(f"input {path}: a .txt file has one text per line and no column {columns.text!r}")
    for record in tables.read(path, fmt, required=required):
        if record.values is None:
            yield Item(id=None, text=None, error=record.problem)
            continue
        item_id = record.values.get(columns.id) if columns.id else None
        yield _checked(record.values.get(columns.text), item_id, record.where, columns.text)


def _checked(text: Any, item_id: Any, where: str, column: str) -> Item:
    if not isinstance(text, str):
        kind = "null" if text is None else type(text).__name__
        return Item(id=item_id, text=None, error=f"{where}: field {column!r} must be a string, got {kind}")
    return Item(id=item_id, text=text)


def _parquet(path: str, columns: Columns, row_groups: list[int] | None) -> Iterator[Item]:
    import pyarrow.parquet as pq

    with paths.open_binary(path) as stream:
        try:
            table = pq.ParquetFile(stream)
        except Exception as err:  # noqa: BLE001 - pyarrow raises several kinds for a bad footer
            raise InputDataError(f"{path}: not a readable Parquet file ({err})") from None
        names = table.schema_arrow.names
        if columns.text not in names:
            raise InputDataError(
                f"{path}: no column {columns.text!r} (columns: {', '.join(names)}); "
                "pick one with --text-column"
            )
        wanted = [columns.text] + ([columns.id] if columns.id and columns.id in names else [])
        groups = row_groups if row_groups is not None else list(range(table.metadata.num_row_groups))
        row = sum(table.metadata.row_group(i).num_rows for i in range(groups[0])) if groups else 0
        for batch in table.iter_batches(batch_size=_PARQUET_BATCH, row_groups=groups, columns=wanted):
            texts = batch.column(0).to_pylist()
            ids = batch.column(1).to_pylist() if len(wanted) > 1 else [None] * len(texts)
            for text, item_id in zip(texts, ids, strict=True):
                yield _checked(text, item_id, f"{path}:row {row}", columns.text)
                row += 1
