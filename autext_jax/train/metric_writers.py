"""Where training metrics go (process 0 only): ``metrics.jsonl`` and TensorBoard event files.

Both live in the workdir, local or a URL (through ``paths``, so any fsspec scheme works). Object
stores cannot append, so at a URL both files are rewritten whole at each flush (a few kB per
thousand steps).
"""

from __future__ import annotations

import json
import logging
import math
import os
import socket
import struct
import time
from typing import Any

from autext_jax import paths

log = logging.getLogger(__name__)

METRICS_FILE = "metrics.jsonl"
TENSORBOARD_DIR = "tensorboard"


def read_records(path: str) -> list[dict[str, Any]]:
    """The JSON records of a metrics file; a line that does not parse (a run killed mid-write) is skipped."""
    if not paths.isfile(path):
        return []
    records, bad = [], 0
    for line in paths.read_text(path).splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            bad += 1
    if bad:
        log.warning("%s: skipped %d unreadable line(s) (written by a run that was killed)", path, bad)
    return records


def _line(record: dict[str, Any]) -> str:
    """Strict JSON: a NaN or infinite value (a diverging step's metric) is written as ``null``."""
    return json.dumps(_finite(record), sort_keys=True, allow_nan=False) + "\n"


def _finite(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value


class JsonlLog:
    """``metrics.jsonl``: one JSON object per line, appended locally, rewritten whole at a URL."""

    def __init__(self, workdir: str):
        self.path = paths.join(workdir, METRICS_FILE)
        self._lines: list[str] = []  # at a URL: every line, rewritten at each flush
        self._pending: list[str] = []

    def start_at(self, step: int) -> None:
        """Keep only records up to ``step`` (a killed run's later records are redone, not duplicated)."""
        kept = [r for r in read_records(self.path) if isinstance(r, dict) and r.get("step", 0) <= step]
        lines = [_line(r) for r in kept]
        self._lines = lines if paths.is_url(self.path) else []
        if kept or paths.exists(self.path):
            paths.write_text(self.path, "".join(lines))

    def write(self, record: dict[str, Any]) -> None:
        line = _line(record)
        if paths.is_url(self.path):
            self._lines.append(line)
        self._pending.append(line)

    def flush(self) -> None:
        if not self._pending:
            return
        if paths.is_url(self.path):
            paths.write_text(self.path, "".join(self._lines))
        else:
            with open(paths.local(self.path), "a", encoding="utf-8") as f:
                f.write("".join(self._pending))
        self._pending = []


def _crc32c(data: bytes) -> int:
    crc = 0xFFFFFFFF
    for byte in data:
        crc = _CRC_TABLE[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


def _crc_table() -> list[int]:
    table = []
    for n in range(256):
        c = n
        for _ in range(8):
            c = (c >> 1) ^ 0x82F63B78 if c & 1 else c >> 1
        table.append(c)
    return table


_CRC_TABLE = _crc_table()


def _masked_crc(data: bytes) -> int:
    crc = _crc32c(data)
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def _record(payload: bytes) -> bytes:
    """One TFRecord: length, its masked CRC-32C, the payload, its masked CRC-32C."""
    header = struct.pack("<Q", len(payload))
    return header + struct.pack("<I", _masked_crc(header)) + payload + struct.pack("<I", _masked_crc(payload))


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def _field(number: int, wire: int, body: bytes) -> bytes:
    if wire == 2:
        body = _varint(len(body)) + body
    return _varint(number << 3 | wire) + body


def event_bytes(
    wall_time: float, step: int, *, scalars: dict[str, float] | None = None, file_version: str | None = None
) -> bytes:
    """A serialised ``tensorboard.Event`` (wall_time=1, step=2, file_version=3, summary=5) holding
    ``Summary.Value``s (tag=1, simple_value=2): the few protobuf fields TensorBoard reads for scalars."""
    body = _field(1, 1, struct.pack("<d", wall_time)) + _field(2, 0, _varint(step & (2**64 - 1)))
    if file_version is not None:
        body += _field(3, 2, file_version.encode())
    if scalars:
        values = b"".join(
            _field(1, 2, _field(1, 2, tag.encode()) + _field(2, 5, struct.pack("<f", value)))
            for tag, value in scalars.items()
        )
        body += _field(5, 2, values)
    return body


class TensorBoard:
    """Scalars as a TensorBoard event file in ``WORKDIR/tensorboard`` (written directly: no TensorFlow,
    no torch). Appended locally; at a URL the whole file is uploaded at each flush."""

    def __init__(self, workdir: str):
        name = f"events.out.tfevents.{int(time.time())}.{socket.gethostname()}.{os.getpid()}"
        logdir = paths.join(workdir, TENSORBOARD_DIR)
        if not paths.is_url(logdir):
            paths.makedirs(logdir)
        self.path = paths.join(logdir, name)
        self._written = bytearray()
        self._pending = bytearray(_record(event_bytes(time.time(), 0, file_version="brain.Event:2")))

    def write(self, record: dict[str, Any]) -> None:
        split = record.get("split", "train")
        scalars = {f"{split}/{key}": value for key, value in _scalars(record)}
        self._pending += _record(event_bytes(time.time(), int(record["step"]), scalars=scalars))

    def flush(self) -> None:
        if not self._pending:
            return
        if paths.is_url(self.path):
            self._written += self._pending
            paths.filesystem(self.path).pipe(self.path, bytes(self._written))
        else:
            with open(paths.local(self.path), "ab") as f:
                f.write(self._pending)
        self._pending = bytearray()

    def close(self) -> None:
        self.flush()


def _scalars(record: dict[str, Any], prefix: str = ""):
    for key, value in record.items():
        if key in ("step", "split", "epoch") and not prefix:
            continue
        if isinstance(value, dict):
            yield from _scalars(value, f"{prefix}{key}/")
        elif isinstance(value, int | float) and not isinstance(value, bool) and value is not None:
            yield f"{prefix}{key}", float(value)


class MetricWriters:
    """All metric destinations of a run; does nothing on processes other than 0."""

    def __init__(self, workdir: str, *, enabled: bool, tensorboard: bool):
        self.enabled = enabled
        self.jsonl = JsonlLog(workdir) if enabled else None
        self.tensorboard = TensorBoard(workdir) if enabled and tensorboard else None

    def start_at(self, step: int) -> None:
        if self.jsonl is not None:
            self.jsonl.start_at(step)

    def write(self, record: dict[str, Any], *, flush: bool = True) -> None:
        for writer in (self.jsonl, self.tensorboard):
            if writer is not None:
                writer.write(record)
        if flush:
            for writer in (self.jsonl, self.tensorboard):
                if writer is not None:
                    writer.flush()

    def close(self) -> None:
        for writer in (self.jsonl, self.tensorboard):
            if writer is not None:
                writer.flush()
