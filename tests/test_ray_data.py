"""Ray Data for real: a local Ray (2 CPUs) scores a Parquet file with ``autext_jax.ray_data.Scorer``,
row for row equal to the CLI's Parquet output."""

from __future__ import annotations

import pyarrow.parquet as pq
import pytest
from corpus_helpers import run, write_parquet_corpus

ray = pytest.importorskip("ray")


def test_ray_map_batches_equals_the_cli(tmp_path, tiny_model_dir, monkeypatch):
    write_parquet_corpus(tmp_path / "in", 1, 3, 20)
    source = tmp_path / "in" / "shard-000.parquet"
    cli = run("-i", source, "--text-column", "body", "--id-column", "doc_id", "--model", tiny_model_dir,
              "--max-length", 32, "-o", tmp_path / "cli.parquet", "-q")
    assert cli.returncode == 0, cli.stderr[-2000:]
    monkeypatch.setenv("JAX_PLATFORMS", "cpu")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        from autext_jax.ray_data import Scorer

        ds = ray.data.read_parquet(str(source))
        scored = ds.map_batches(
            Scorer,
            fn_constructor_kwargs={"model": str(tiny_model_dir), "text_column": "body",
                                   "id_column": "doc_id", "max_length": 32},
            batch_size=16, batch_format="numpy", concurrency=1,
        )
        scored.write_parquet(str(tmp_path / "ray"))
    finally:
        ray.shutdown()
    got = sorted(pq.read_table(tmp_path / "ray").drop(["error"]).to_pylist(), key=lambda r: r["id"])
    want = sorted(pq.read_table(tmp_path / "cli.parquet").to_pylist(), key=lambda r: r["id"])
    assert len(got) == 60 and [r["id"] for r in got] == [r["id"] for r in want]
    for a, b in zip(got, want, strict=True):
        assert (a["is_bot"], a["n_tokens"], a["truncated"]) == (b["is_bot"], b["n_tokens"], b["truncated"])
        assert abs(a["bot_prob"] - b["bot_prob"]) < 1e-6 and abs(a["english_prob"] - b["english_prob"]) < 1e-6
