"""Where records go: JSONL, CSV, RAID predictions and Parquet, each record written whole.

``RecordWriter`` (JSONL/CSV/RAID) writes every record in unbuffered writes, so a reader, a kill or a
full disk never sees half a line; ``ParquetWriter`` buffers records into row groups and writes a
valid file on ``close`` (a stopped run closes it: what was written is readable). ``open_writer``
picks one by format. RAID's leaderboard reads a JSON array of ``{"id", "score"}`` objects, one per
line here, ``score`` being ``bot_prob``.
"""

from __future__ import annotations

import contextlib
import csv
import errno
import io
import json
import os
from typing import IO, Any

FORMATS = ("jsonl", "csv", "parquet", "raid")
_PARQUET_ROWS = 8192  # records per Parquet row group


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
        """The CSV header, RAID's opening bracket (nothing for JSONL)."""
        if self.fmt == "csv":
            self._write(self._csv_line(self.columns))
        elif self.fmt == "raid":
            self._write("[\n")

    def abort(self) -> None:
        """Nothing to undo: every record already written is complete."""

    def close(self) -> None:
        """RAID's closing bracket (a stopped run leaves the array open: its lines are complete)."""
        if self.fmt == "raid":
            self._write("\n]\n")

    @staticmethod
    def _csv_line(values: list[Any]) -> str:
        buffer = io.StringIO()
        csv.writer(buffer, lineterminator="\n").writerow(values)
        return buffer.getvalue()

    def write(self, record: dict[str, Any]) -> None:
        if self.fmt == "csv":
            line = self._csv_line([_csv_value(record.get(c)) for c in self.columns])
        elif self.fmt == "raid":
            fields = {"id": record.get("id"), "score": record.get("bot_prob")}
            text = json.dumps(fields, ensure_ascii=False, allow_nan=False)
            line = ("" if self.count == 0 else ",\n") + text
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


class ParquetWriter:
    """Records as Parquet row groups of ``_PARQUET_ROWS``; ``id`` is int64 when every id is a row
    index (``int_ids``), else a string. Probabilities are float64 (the same values as JSONL)."""

    def __init__(self, stream: IO[bytes], columns: list[str], name: str, int_ids: bool):
        from autext_jax.records import arrow_schema

        self.schema = arrow_schema(columns, int_ids)
        self.stream = stream
        self.columns = columns
        self.name = name
        self.int_ids = int_ids
        self.count = 0
        self._rows: list[dict[str, Any]] = []
        self._writer = None

    def begin(self) -> None:
        import pyarrow.parquet as pq

        self._writer = pq.ParquetWriter(self.stream, self.schema)

    def write(self, record: dict[str, Any]) -> None:
        if not self.int_ids and record.get("id") is not None:
            record = dict(record, id=str(record["id"]))
        self._rows.append(record)
        self.count += 1
        if len(self._rows) >= _PARQUET_ROWS:
            self._flush()

    def _flush(self) -> None:
        import pyarrow as pa

        if self._rows and self._writer is not None:
            rows = [{c: r.get(c) for c in self.columns} for r in self._rows]
            table = pa.Table.from_pylist(rows, self.schema)
            self._writer.write_table(table)
            self._rows = []

    def abort(self) -> None:
        """Drop the buffered rows and the writer without a footer (the caller removes the file)."""
        self._rows = []
        writer, self._writer = self._writer, None
        with contextlib.suppress(Exception):
            if writer is not None:
                writer.close()

    def close(self) -> None:
        self._flush()
        if self._writer is not None:
            self._writer.close()
            self._writer = None


def open_writer(stream: IO[bytes], fmt: str, columns: list[str], name: str, int_ids: bool = False):
    """The writer for ``fmt`` on a binary ``stream`` (``int_ids``: Parquet ids are row indices)."""
    if fmt == "parquet":
        return ParquetWriter(stream, columns, name, int_ids)
    return RecordWriter(stream, fmt, columns, name)
