"""benchmarks/bench_train.py: the FLOP model, and one real bf16 run of the tiny shape (the GPU code path)."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

from autext_jax.config import EncoderConfig, ModelConfig

TOOL = Path(__file__).resolve().parent.parent / "benchmarks" / "bench_train.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_train", TOOL)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    yield module
    sys.modules.pop(spec.name, None)


def test_model_flops_count_dense_and_attention_work(bench):
    enc = EncoderConfig(
        vocab_size=10, hidden_size=4, num_layers=1, num_heads=2, intermediate_size=8, use_pooler=False
    )
    cfg = ModelConfig(encoder=enc, hidden_nodes=2)
    dense = 4 * 4 * 4 + 2 * 4 * 8 + 2 * (4 * 2 + 2)  # q,k,v,o + FFN + two heads; embeddings excluded
    attention = 12 * 1 * 4 * 3 * 3 * 2
    assert bench.model_flops_per_step(cfg, batch=2, length=3) == 6 * dense * 2 * 3 + attention
    base = bench.model_flops_per_step(ModelConfig(), batch=1, length=128)
    assert 6 * 85e6 * 128 < base < 6 * 90e6 * 128 * 1.2  # XLM-R base: ~86M non-embedding parameters


def test_bench_runs_the_real_train_step_in_bfloat16(bench, tmp_path, capsys):
    out = tmp_path / "bench.jsonl"
    args = ["--models", "tiny", "--dtype", "bfloat16", "--batch", "4", "--length", "16", "--steps", "1"]
    assert bench.main([*args, "--matmul-size", "256", "--json", str(out)]) == 0
    (row,) = [json.loads(line) for line in out.read_text().splitlines()]
    assert row["model"] == "tiny" and row["dtype"] == "bfloat16" and row["batch"] == 4
    assert row["examples_per_s"] > 0 and row["tokens_per_s"] == pytest.approx(16 * row["examples_per_s"])
    assert row["peak_tflops"] > 0 and 0 < row["mfu"]
    assert "tiny" in capsys.readouterr().out
    assert bench.main(["--models", "huge"]) == 2
