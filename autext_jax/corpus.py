"""Corpus mode: many inputs → one output part per input shard, each written exactly once.

The plan: the sorted input files, each one part, except that a Parquet file with several row groups
is cut into parts of about ``rows_per_part`` rows along its row groups. Part ``k`` is written as
``OUT/_tmp/part-0000k.EXT.HOST-PID`` and renamed to ``OUT/part-0000k.EXT`` when complete; then its
manifest ``OUT/_manifests/part-0000k.json`` (input, rows, records, malformed records) marks it done.
A rerun of the same command skips parts with a manifest and redoes the rest from scratch, so after a
kill -9, a full disk or a preempted VM the output is byte-identical to an uninterrupted run. When every
part has its manifest, ``OUT/_SUCCESS`` is written (totals over all parts).

``--shard I/N`` takes the parts with ``k % N == I``: N processes or machines cover the corpus exactly
once without talking to each other. ``OUT/_corpus.json`` records what the run is (inputs, model,
options); a rerun into the same folder with a different command is refused. Files whose names start
with ``_`` are what readers of ``OUT/*.parquet`` (pyarrow, Spark, Ray) skip.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from typing import Any

from autext_jax import inputs, paths, writers
from autext_jax.errors import UsageError

log = logging.getLogger(__name__)

SUCCESS = "_SUCCESS"
SHARD_ENV = "AUTEXT_JAX_SHARD"


@dataclass(frozen=True)
class Part:
    """One unit of output: an input file, or a run of row groups of a Parquet file."""

    index: int
    path: str
    fmt: str
    first_row: int = 0
    row_groups: tuple[int, ...] | None = None

    @property
    def name(self) -> str:
        return f"part-{self.index:05d}"


def plan(files: list[str], forced_fmt: str | None, rows_per_part: int) -> list[Part]:
    """Parts in a fixed order (the sorted files, row groups in file order)."""
    parts: list[Part] = []
    for path in files:
        fmt = inputs.format_of(path, forced_fmt)
        if fmt != "parquet":
            parts.append(Part(len(parts), path, fmt))
            continue
        counts = inputs.parquet_row_counts(path)
        group: list[int] = []
        first = row = 0
        for i, n in enumerate(counts):
            group.append(i)
            row += n
            if row - first >= rows_per_part or i == len(counts) - 1:
                parts.append(Part(len(parts), path, fmt, first, tuple(group)))
                group, first = [], row
        if not counts:
            parts.append(Part(len(parts), path, fmt, 0, ()))
    return parts


def parse_shard(spec: str, env: dict[str, str] | None = None) -> tuple[int, int]:
    """``"I/N"`` → ``(I, N)``; ``"auto"`` from ``AUTEXT_JAX_SHARD``, a Cloud TPU slice or SLURM."""
    env = os.environ if env is None else env
    if spec == "auto":
        if env.get(SHARD_ENV):
            return parse_shard(env[SHARD_ENV], env)
        if env.get("TPU_WORKER_ID") is not None and env.get("TPU_WORKER_HOSTNAMES"):
            hosts = [h for h in env["TPU_WORKER_HOSTNAMES"].split(",") if h.strip()]
            return parse_shard(f"{env['TPU_WORKER_ID']}/{len(hosts)}", env)
        if env.get("SLURM_PROCID") is not None and env.get("SLURM_NTASKS"):
            return parse_shard(f"{env['SLURM_PROCID']}/{env['SLURM_NTASKS']}", env)
        raise UsageError(
            f"--shard auto: no {SHARD_ENV}, TPU_WORKER_ID/TPU_WORKER_HOSTNAMES or SLURM_PROCID/SLURM_NTASKS "
            "in the environment; pass --shard I/N"
        )
    try:
        index, count = (int(x) for x in spec.split("/"))
    except ValueError:
        raise UsageError(f"--shard must be I/N (e.g. 0/4) or auto, got {spec!r}") from None
    if not 0 <= index < count:
        raise UsageError(f"--shard {spec}: need 0 <= I < N")
    return index, count


@dataclass
class Result:
    records: int = 0
    errors: int = 0


class CorpusRun:
    """Writes the parts of one shard of a plan into ``out`` (see the module docstring)."""

    def __init__(self, out: str, parts: list[Part], fmt: str, identity: dict[str, Any],
                 shard: tuple[int, int] = (0, 1)):
        self.out = out.rstrip("/") if paths.is_url(out) else str(paths.local(out))
        self.parts = parts
        self.fmt = fmt
        self.identity = identity
        self.shard = shard
        self.mine = [p for p in parts if p.index % shard[1] == shard[0]]
        self.token = f"{socket.gethostname()}-{os.getpid()}"

    def output_name(self, part: Part) -> str:
        return f"{part.name}.{self.fmt if self.fmt != 'raid' else 'json'}"

    def _manifest(self, part: Part) -> str:
        return paths.join(self.out, "_manifests", f"{part.name}.json")

    def prepare(self) -> None:
        """Create the folder, check or record what run it holds, drop this shard's stale temp files."""
        paths.makedirs(self.out)
        marker = paths.join(self.out, "_corpus.json")
        wanted = json.dumps(self.identity, sort_keys=True, indent=1) + "\n"
        if paths.exists(marker):
            if paths.read_text(marker) != wanted:
                raise UsageError(
                    f"{self.out} holds the output of a different command (inputs, model or options "
                    f"differ from {marker}); write to a new folder"
                )
        else:
            paths.write_text(marker, wanted)
        tmp = paths.join(self.out, "_tmp")
        if paths.isdir(tmp):
            names = {self.output_name(p) for p in self.mine}
            for entry in paths.listdir(tmp):
                if any(paths.name(entry).startswith(f"{n}.") for n in names):
                    paths.remove(entry)

    def done(self, part: Part) -> bool:
        output = paths.join(self.out, self.output_name(part))
        return paths.exists(self._manifest(part)) and paths.exists(output)

    def run(
        self,
        score: Callable[[Part, Any], Result],
        open_part: Callable[[Part, Any], Any],
        stop: Callable[[], None],
        quiet: bool = False,
    ) -> dict[str, int]:
        """Write every unfinished part of this shard; ``score(part, writer)`` fills one writer."""
        todo = [p for p in self.mine if not self.done(p)]
        log.info("%d parts in all, %d in this shard, %d already done", len(self.parts), len(self.mine),
                 len(self.mine) - len(todo))
        start, texts = time.perf_counter(), 0
        for k, part in enumerate(todo, 1):
            stop()
            began = time.perf_counter()
            result = self._write_part(part, score, open_part)
            texts += result.records
            elapsed = time.perf_counter() - start
            log.info("%s: %s%s → %d records, %d malformed, %.1f s", part.name, part.path,
                     f" (row groups {part.row_groups[0]}..{part.row_groups[-1]})" if part.row_groups else "",
                     result.records, result.errors, time.perf_counter() - began)
            if not quiet:
                rate = texts / elapsed if elapsed else 0.0
                eta = elapsed / k * (len(todo) - k)
                print(f"autext-jax: parts {len(self.mine) - len(todo) + k}/{len(self.mine)} of this shard "
                      f"({len(self.parts)} in all), {rate:.1f} texts/s, ETA {_clock(eta)}", file=sys.stderr)
        self._remove_empty_tmp()
        return self.finish()

    def _write_part(self, part: Part, score, open_part) -> Result:
        tmp = paths.join(self.out, "_tmp", f"{self.output_name(part)}.{self.token}")
        final = paths.join(self.out, self.output_name(part))
        if not paths.is_url(tmp):
            paths.makedirs(paths.join(self.out, "_tmp"))
        try:
            with paths.open_binary(tmp, "wb") as stream:
                writer = open_part(part, stream)
                writer.begin()
                try:
                    result = score(part, writer)
                except BaseException:
                    writer.abort()  # the part is dropped: no footer, no complaint at exit
                    raise
                writer.close()
        except BaseException:
            if paths.exists(tmp):
                paths.remove(tmp)
            raise
        _rename(tmp, final)
        manifest = {"part": part.name, "output": self.output_name(part), **asdict(part),
                    "records": result.records, "malformed": result.errors}
        paths.makedirs(paths.join(self.out, "_manifests"))
        paths.write_text(self._manifest(part), json.dumps(manifest, indent=1) + "\n")
        return result

    def _remove_empty_tmp(self) -> None:
        tmp = paths.join(self.out, "_tmp")
        if not paths.is_url(tmp) and paths.isdir(tmp) and not paths.listdir(tmp):
            os.rmdir(tmp)

    def finish(self) -> dict[str, int]:
        """Totals over all parts; ``_SUCCESS`` once every part (of every shard) is done."""
        done = [p for p in self.parts if paths.exists(self._manifest(p))]
        totals = {"parts": len(self.parts), "parts_done": len(done), "records": 0, "malformed": 0}
        if len(done) < len(self.parts):
            return totals
        for part in done:
            manifest = json.loads(paths.read_text(self._manifest(part)))
            totals["records"] += manifest["records"]
            totals["malformed"] += manifest["malformed"]
        paths.write_text(paths.join(self.out, SUCCESS), json.dumps(totals, indent=1) + "\n")
        return totals


def _rename(source: str, target: str) -> None:
    """Move a finished part into place. On object stores a server-side copy then a delete: the copy
    appears whole or not at all, and gcsfs's ``mv`` would first try an object-move API that buckets
    without a hierarchical namespace (and the emulator) refuse, after a long retry."""
    if paths.is_url(source):
        fs = paths.filesystem(source)
        fs.copy(source, target)
        fs.rm(source)
    else:
        os.replace(paths.local(source), paths.local(target))


def _clock(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


def part_items(part: Part, on_error: str, columns: inputs.Columns) -> Iterator[inputs.Item]:
    """The records of one part, numbered by their row in the input file."""
    groups = list(part.row_groups) if part.row_groups is not None else None
    return inputs.read_items(part.path, part.fmt, on_error, part.first_row, columns, groups)


def writer_for(fmt: str, columns: list[str], id_column: str | None):
    """``open_part(part, stream)`` for ``CorpusRun.run``: Parquet ids stay integers when they are."""

    def open_part(part: Part, stream):
        return writers.open_writer(stream, fmt, columns, part.name, int_ids=_int_ids(part, id_column))

    return open_part


def _int_ids(part: Part, id_column: str | None) -> bool:
    if id_column is None or part.fmt == "txt":  # row numbers (as the CLI writes a file of .txt inputs)
        return True
    if part.fmt != "parquet":
        return False
    import pyarrow as pa
    import pyarrow.parquet as pq

    with paths.open_binary(part.path) as stream:
        schema = pq.ParquetFile(stream).schema_arrow
    return id_column not in schema.names or pa.types.is_integer(schema.field(id_column).type)
