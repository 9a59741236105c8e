"""Helpers for the corpus, signal and Ray tests: a small Parquet corpus and the CLI in a subprocess."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

WORDS = "the cat sat on a mat while el perro come pan y la casa es grande near river under sky".split()


def texts(n: int, seed: int) -> list[str]:
    """Deterministic texts of 3..40 words."""
    out = []
    for i in range(n):
        k = 3 + (i * 7 + seed) % 38
        out.append(" ".join(WORDS[(i * 3 + j * 5 + seed) % len(WORDS)] for j in range(k)))
    return out


def write_parquet_corpus(folder: Path, files: int, groups: int, rows: int) -> list[Path]:
    """``files`` Parquet files of ``groups`` row groups of ``rows`` rows: columns ``doc_id``, ``body``."""
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for f in range(files):
        body = texts(groups * rows, seed=f)
        table = pa.table({"doc_id": [f"f{f}-{i}" for i in range(len(body))], "body": body})
        path = folder / f"shard-{f:03d}.parquet"
        pq.write_table(table, path, row_group_size=rows)
        out.append(path)
    return out


def env(**extra: str) -> dict[str, str]:
    return dict(os.environ, HF_HUB_OFFLINE="1", JAX_PLATFORMS="cpu", AUTEXT_JAX_COMPILE_CACHE="off", **extra)


def cli(*argv: object) -> list[str]:
    return [sys.executable, "-m", "autext_jax.infer", *(str(a) for a in argv)]


def run(*argv: object, timeout: float = 300, **extra: str) -> subprocess.CompletedProcess:
    return subprocess.run(cli(*argv), capture_output=True, text=True, env=env(**extra), timeout=timeout)


def tree(folder: Path) -> dict[str, bytes]:
    """Every file below ``folder`` by relative path, with its bytes."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}

