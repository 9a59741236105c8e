"""Training-step throughput: examples/s, tokens/s and MFU for tiny, mini (e5-small) and XLM-R-base shapes.

    python benchmarks/bench_train.py                                  # CPU defaults: small batch, few steps
    python benchmarks/bench_train.py --dtype bfloat16 --batch 32 --length 128 --steps 20   # GPU/TPU

The step timed is the real jitted, sharded ``TrainSteps.train_step`` (AdamW, clipping, dropout) on
random weights and full-length synthetic batches. MFU = model FLOP/s ÷ a matmul peak measured here
in the same dtype (not a datasheet number). Model FLOPs per step: 6 × (non-embedding parameters) ×
tokens + the attention score/context matmuls (12 × layers × hidden × length² × batch), the usual
forward+backward estimate; XLA's own count of the compiled step is reported alongside.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np

from autext_jax import cli
from autext_jax.config import COMPUTE_DTYPES, EncoderConfig, ModelConfig
from autext_jax.errors import UsageError
from autext_jax.model import abstract_model
from autext_jax.train import sharding as shd
from autext_jax.train.optim import OptimizerConfig, build_optimizer
from autext_jax.train.steps import TrainSteps, describe_model

SHAPES: dict[str, EncoderConfig] = {
    "tiny": EncoderConfig(vocab_size=259, hidden_size=32, num_layers=2, num_heads=4, intermediate_size=64),
    # multilingual-e5-small as imported by tools/e5/import_e5.py (full vocabulary; pruning only shrinks it)
    "mini": EncoderConfig(
        vocab_size=250_037, hidden_size=384, num_layers=12, num_heads=12, intermediate_size=1536
    ),
    "xlm-roberta-base": EncoderConfig(),
}


@dataclass
class Result:
    model: str
    dtype: str
    batch: int
    length: int
    devices: int
    step_s: float
    examples_per_s: float
    tokens_per_s: float
    model_tflops_per_step: float
    xla_tflops_per_step: float | None
    achieved_tflops: float
    peak_tflops: float
    mfu: float
    compile_s: float


def measure_matmul_peak(dtype, size: int, repeats: int = 5) -> float:
    """FLOP/s of the best of ``repeats`` timed square matmuls on one device (after a warm-up)."""
    key = jax.random.key(0)
    a = jax.random.normal(key, (size, size), dtype)
    b = jax.random.normal(jax.random.fold_in(key, 1), (size, size), dtype)
    matmul = jax.jit(lambda x, y: x @ y)
    matmul(a, b).block_until_ready()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        matmul(a, b).block_until_ready()
        best = min(best, time.perf_counter() - start)
    return 2.0 * size**3 / best


def model_flops_per_step(cfg: ModelConfig, batch: int, length: int) -> float:
    """Forward+backward FLOPs: 6·N·tokens for the dense layers plus the attention matmuls."""
    enc = cfg.encoder
    h, ffn, layers = enc.hidden_size, enc.intermediate_size, enc.num_layers
    per_layer = 4 * h * h + 2 * h * ffn
    heads = 2 * (h * cfg.hidden_nodes + cfg.hidden_nodes) + (h * h if enc.use_pooler else 0)
    dense = layers * per_layer + heads
    tokens = batch * length
    attention = 12 * layers * h * length * length * batch
    return 6.0 * dense * tokens + attention


def synthetic_batch(batch: int, length: int, vocab: int, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "input_ids": rng.integers(4, vocab, (batch, length)).astype(np.int32),
        "attention_mask": np.ones((batch, length), np.int32),
        "bot": rng.integers(0, 2, batch).astype(np.float32),
        "english": rng.integers(0, 2, batch).astype(np.float32),
        "bot_mask": np.ones(batch, np.float32),
        "english_mask": np.ones(batch, np.float32),
    }


def bench(name: str, args: argparse.Namespace, peak: float) -> Result:
    cfg = ModelConfig(encoder=SHAPES[name])
    dtype = jnp.bfloat16 if args.dtype == "bfloat16" else None
    layout, _ = describe_model(abstract_model(cfg, dtype=dtype))
    mesh = shd.make_mesh(shd.MeshConfig(data=-1, fsdp=args.fsdp, tensor=args.tensor))
    shd.check_batch_size(args.batch, mesh)
    tx = build_optimizer(
        OptimizerConfig(learning_rate=1e-5, warmup_steps=0), layout.names, cfg.encoder.num_layers, 1000
    )
    steps = TrainSteps(layout, tx, mesh)
    state = steps.init_state(steps.init_params(cfg, seed=0, dtype=dtype))
    key = steps.dropout_key(0, 0)  # one dropout key for every timed step: the shapes are what matter
    batch = steps.global_batch(synthetic_batch(args.batch, args.length, cfg.encoder.vocab_size))

    start = time.perf_counter()
    compiled = steps.train_step.lower(state, batch, key).compile()
    compile_s = time.perf_counter() - start
    xla_flops = None
    try:
        analysis = compiled.cost_analysis()
        analysis = analysis[0] if isinstance(analysis, list) else analysis
        xla_flops = float(analysis["flops"]) if analysis and "flops" in analysis else None
    except Exception:  # cost analysis is optional on some backends
        xla_flops = None
    for _ in range(args.warmup):
        state, metrics = steps.train_step(state, batch, key)
    jax.block_until_ready(metrics["loss"]) if args.warmup else None
    times = []
    for _ in range(args.steps):
        start = time.perf_counter()
        state, metrics = steps.train_step(state, batch, key)
        jax.block_until_ready(metrics["loss"])
        times.append(time.perf_counter() - start)
    if not np.isfinite(float(metrics["loss"])):
        raise RuntimeError(f"{name}: non-finite loss in the benchmark")
    step_s = float(np.median(times))
    flops = model_flops_per_step(cfg, args.batch, args.length)
    achieved = flops / step_s
    devices = mesh.size
    return Result(
        model=name,
        dtype=args.dtype,
        batch=args.batch,
        length=args.length,
        devices=devices,
        step_s=step_s,
        examples_per_s=args.batch / step_s,
        tokens_per_s=args.batch * args.length / step_s,
        model_tflops_per_step=flops / 1e12,
        xla_tflops_per_step=None if xla_flops is None else xla_flops * devices / 1e12,
        achieved_tflops=achieved / 1e12,
        peak_tflops=peak * devices / 1e12,
        mfu=achieved / (peak * devices),
        compile_s=compile_s,
    )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--models", default="tiny,mini,xlm-roberta-base", help=f"comma list of {list(SHAPES)}")
    p.add_argument("--dtype", choices=COMPUTE_DTYPES, default="float32", help="compute dtype")
    p.add_argument("--batch", type=int, default=8, help="global batch (examples per step)")
    p.add_argument("--length", type=int, default=128, help="tokens per example")
    p.add_argument("--steps", type=int, default=3, help="timed steps (median reported)")
    p.add_argument("--warmup", type=int, default=1, help="untimed steps after compiling")
    p.add_argument("--fsdp", type=int, default=1)
    p.add_argument("--tensor", type=int, default=1)
    p.add_argument(
        "--matmul-size", type=int, default=0, help="peak matmul size (0: 8192 on GPU/TPU, 2048 on CPU)"
    )
    p.add_argument("--json", help="also write the results as JSON lines here")
    cli.add_debug_flag(p)
    return cli.main("bench_train", p, _main, argv)


def _main(args: argparse.Namespace) -> int:
    unknown = [m for m in args.models.split(",") if m not in SHAPES]
    if unknown:
        raise UsageError(f"unknown model shapes {unknown}; choose from {list(SHAPES)}")
    platform = jax.devices()[0].platform
    size = args.matmul_size or (2048 if platform == "cpu" else 8192)
    dtype = jnp.bfloat16 if args.dtype == "bfloat16" else jnp.float32
    peak = measure_matmul_peak(dtype, size)
    print(
        f"# {jax.device_count()} × {jax.devices()[0].device_kind} ({platform}); "
        f"measured {args.dtype} matmul peak {peak / 1e12:.3f} TFLOP/s per device ({size}³)"
    )
    header = (
        f"{'model':<18}{'ex/s':>10}{'tok/s':>12}{'step ms':>10}{'TFLOP/s':>10}{'MFU':>8}{'compile s':>11}"
    )
    print(header)
    results = []
    for name in args.models.split(","):
        r = bench(name, args, peak)
        results.append(r)
        print(
            f"{r.model:<18}{r.examples_per_s:>10.1f}{r.tokens_per_s:>12.0f}{r.step_s * 1e3:>10.1f}"
            f"{r.achieved_tflops:>10.4f}{r.mfu:>8.1%}{r.compile_s:>11.1f}",
            flush=True,
        )
    if args.json:
        with open(args.json, "w") as f:
            for r in results:
                f.write(json.dumps(r.__dict__) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
