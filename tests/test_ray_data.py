"""Ray Data for real: a local Ray (2 CPUs) scores a Parquet file with ``autext_jax.ray_data.Scorer``,
row for row and column for column equal to the CLI's Parquet output (``--on-error skip``)."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tests.helpers.corpus import run, texts

ray = pytest.importorskip("ray")


def test_ray_map_batches_equals_the_cli(tmp_path, tiny_model_dir, monkeypatch):
    body: list[str | None] = texts(60, seed=0)
    body[7] = None  # a null text keeps its place, with null scores and an error
    body[8] = " ".join(["the cat sat on the mat"] * 20)  # truncated at 32 tokens
    source = tmp_path / "in.parquet"
    table = pa.table({"doc_id": [f"d{i}" for i in range(60)], "body": body})
    pq.write_table(table, source, row_group_size=20)
    cli = run("-i", source, "--text-column", "body", "--id-column", "doc_id", "--model", tiny_model_dir,
              "--max-length", 32, "--on-error", "skip", "-o", tmp_path / "cli.parquet", "-q")
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
    got_table, want_table = pq.read_table(tmp_path / "ray"), pq.read_table(tmp_path / "cli.parquet")
    assert got_table.schema == want_table.schema  # the same columns, in order, with the same types
    got = sorted(got_table.to_pylist(), key=lambda r: int(r["id"][1:]))
    want = want_table.to_pylist()
    assert [r["id"] for r in got] == [r["id"] for r in want] == [f"d{i}" for i in range(60)]
    # Error messages say where in their own terms (the CLI: file and row; Ray: the id).
    for a, b in zip(got, want, strict=True):
        assert (a.pop("error") is None) == (b.pop("error") is None)
    assert got == want
    assert got[7]["bot_prob"] is None and got[8]["truncated"] and any(r["short"] for r in got)
