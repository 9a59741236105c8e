"""Inference benchmark: the PyTorch reference pipeline vs autext_jax's engine, side by side in one run.

Both score the same texts with the same random xlm-roberta-base-size weights:
(a) as the model card does it: tokenizer ``padding=True, truncation=True, max_length=512``,
    batches of 32 in input order, eager PyTorch under ``torch.inference_mode()``;
(b) ``autext_jax.engine.InferenceEngine`` (length buckets, fixed shapes, jitted forward),
    timed cold (compilations included) and warm (shapes already compiled).

Texts: ``<shared>/data/autextification/subtask_1/{en,es}/train.tsv.gz`` when present, else
generated sentences. Tokenizer: ``<shared>/xlmr-tokenizer`` when present, else the tiny test one.

    python tools/bench_infer.py --texts 256
"""

from __future__ import annotations

import argparse
import os
import random
import resource
import sys
import time
from pathlib import Path

import numpy as np

from autext_jax import cli, tables

REPO = Path(__file__).resolve().parents[1]
DEFAULT_SHARED = REPO.parent / "shared"
NAMES = {"a": "(a) PyTorch reference", "cold": "(b) autext_jax cold", "warm": "(b) autext_jax warm"}


def load_texts(shared: Path, count: int, seed: int) -> tuple[list[str], str]:
    """``count`` real texts (English and Spanish mixed, shuffled) or generated ones."""
    paths = [shared / f"data/autextification/subtask_1/{lang}/train.tsv.gz" for lang in ("en", "es")]
    rng = random.Random(seed)
    if all(p.is_file() for p in paths):
        texts = []
        for path in paths:  # the reader scoring and training use (each TSV line one row)
            texts += [r.values["text"] for r in tables.read(str(path), "tsv", required=("text",)) if r.values]
        rng.shuffle(texts)
        return texts[:count], f"AuTexTification subtask 1 train (en+es, {len(texts)} texts, shuffled)"
    words = "the of and model text language de la que el en un por written generated human".split()
    texts = [" ".join(rng.choice(words) for _ in range(rng.randint(5, 250))) for _ in range(count)]
    return texts, "generated (no shared data found)"


def load_tokenizer(shared: Path):
    from autext_jax.api import load_tokenizer

    directory = shared / "xlmr-tokenizer"
    if (directory / "tokenizer.json").is_file():
        return load_tokenizer(directory), str(directory)
    sys.path.insert(0, str(REPO / "tests"))
    from conftest import build_tiny_tokenizer

    tiny = build_tiny_tokenizer(Path(os.environ.get("TMPDIR", "/tmp")) / "autext_bench_tokenizer")
    return load_tokenizer(tiny), "tiny test tokenizer (no shared xlmr-tokenizer found)"


def flops_per_sequence(cfg, length: int) -> float:
    """Forward FLOPs of the encoder for one sequence of ``length`` tokens (matmuls only)."""
    h, f, n = cfg.hidden_size, cfg.intermediate_size, cfg.num_layers
    dense = 2 * length * (4 * h * h + 2 * h * f)
    attention = 2 * 2 * length * length * h
    return n * (dense + attention)


def matmul_peak_gflops(size: int = 2048, repeats: int = 5) -> float:
    """Best jitted fp32 matmul rate of this machine (the roofline for both pipelines)."""
    import jax
    import jax.numpy as jnp

    a = jnp.asarray(np.random.default_rng(0).standard_normal((size, size), dtype=np.float32))
    matmul = jax.jit(lambda x: x @ x)
    matmul(a).block_until_ready()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        matmul(a).block_until_ready()
        best = min(best, time.perf_counter() - start)
    return 2 * size**3 / best / 1e9


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def build_torch_reference(cfg, state_dict):
    """XLM-R encoder + the two ``Sequential(Linear, ReLU, Linear)`` heads, with the JAX model's weights."""
    import torch
    from torch import nn
    from transformers import XLMRobertaConfig, XLMRobertaModel

    class Reference(nn.Module):
        def __init__(self):
            super().__init__()
            hf = {k: v for k, v in cfg.encoder.to_hf_config().items() if k != "use_pooler"}
            pooler = cfg.encoder.use_pooler
            self.transformer = XLMRobertaModel(XLMRobertaConfig(**hf), add_pooling_layer=pooler)
            h, k = cfg.encoder.hidden_size, cfg.hidden_nodes
            self.bot_head = nn.Sequential(nn.Linear(h, k), nn.ReLU(), nn.Linear(k, 1))
            self.lang_head = nn.Sequential(nn.Linear(h, k), nn.ReLU(), nn.Linear(k, 1))

        def forward(self, batch):
            pooled = self.transformer(**batch).last_hidden_state[:, 0]
            return torch.sigmoid(self.bot_head(pooled)[:, 0]), torch.sigmoid(self.lang_head(pooled)[:, 0])

    model = Reference().eval()
    model.load_state_dict({k: torch.from_numpy(v) for k, v in state_dict.items()}, strict=True)
    return model


def run_reference(model, tokenizer, texts: list[str], batch_size: int = 32) -> dict:
    import torch

    probs, real, padded, shapes = [], 0, 0, []
    start = time.perf_counter()
    with torch.inference_mode():
        for i in range(0, len(texts), batch_size):
            batch = tokenizer(
                texts[i : i + batch_size], padding=True, truncation=True, max_length=512, return_tensors="pt"
            )
            real += int(batch["attention_mask"].sum())
            padded += batch["attention_mask"].numel()
            shapes.append(tuple(batch["attention_mask"].shape))
            bot, _ = model({"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]})
            probs.append(bot.numpy())
    seconds = time.perf_counter() - start
    return {
        "seconds": seconds,
        "real_tokens": real,
        "padded_tokens": padded,
        "shapes": shapes,
        "bot_prob": np.concatenate(probs),
    }


def run_engine(engine, texts: list[str]) -> dict:
    from autext_jax.scores import sigmoid

    stats = engine.stats
    before = (stats.real_tokens, stats.padded_tokens, stats.compilations, stats.shapes.copy())
    start = time.perf_counter()
    logits = engine.logits(texts)
    seconds = time.perf_counter() - start
    return {
        "seconds": seconds,
        "real_tokens": stats.real_tokens - before[0],
        "padded_tokens": stats.padded_tokens - before[1],
        "compilations": stats.compilations - before[2],
        "shapes": list((stats.shapes - before[3]).elements()),
        "bot_prob": sigmoid(logits["bot"]),
    }


def describe(name: str, result: dict, n_texts: int, cfg, useful: float, peak: float) -> str:
    """One line per run; the share of the matmul peak can pass 100% when the peak was measured
    while other processes loaded the machine more than during the run."""
    s = result["seconds"]
    padding = 1 - result["real_tokens"] / result["padded_tokens"]
    computed = sum(rows * flops_per_sequence(cfg, length) for rows, length in result["shapes"]) / s / 1e9
    line = (
        f"{name:<22} {n_texts / s:6.2f} texts/s {result['real_tokens'] / s:7.0f} real tok/s "
        f"{padding:5.1%} padding | GFLOP/s computed {computed:5.1f} ({computed / peak:4.0%} of peak), "
        f"useful {useful / s / 1e9:5.1f}"
    )
    if "compilations" in result:
        line += f"  compilations {result['compilations']}"
    return line


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--texts", type=int, default=256, help="number of texts (default 256)")
    parser.add_argument("--batch-size", type=int, default=None, help="engine rows at max length")
    parser.add_argument("--shared", type=Path, default=DEFAULT_SHARED, help="the shared data/tokenizer dir")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--rounds", type=int, default=1, help="(a, b warm) pairs to average (default 1)")
    parser.add_argument("--skip-reference", action="store_true", help="time the engine only")
    cli.add_debug_flag(parser)
    return cli.main("bench_infer", parser, _main, argv)


def _main(args: argparse.Namespace) -> int:

    import jax

    from autext_jax.config import ModelConfig
    from autext_jax.convert import to_state_dict
    from autext_jax.engine import InferenceEngine
    from autext_jax.model import create_model

    texts, source = load_texts(args.shared, args.texts, args.seed)
    tokenizer, tokenizer_source = load_tokenizer(args.shared)
    cfg = ModelConfig()
    load = os.getloadavg()[0]
    print(f"machine: {os.cpu_count()} CPUs, JAX devices {jax.devices()}, load average {load:.1f}")
    print(f"texts: {len(texts)} from {source}; tokenizer: {tokenizer_source}")
    peak = matmul_peak_gflops()
    print(f"jitted fp32 matmul peak: {peak:.0f} GFLOP/s")

    model = create_model(cfg, seed=args.seed)
    reference = None
    if not args.skip_reference:
        import torch

        reference = build_torch_reference(cfg, to_state_dict(model))
        print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    options = {} if args.batch_size is None else {"batch_size": args.batch_size}
    engine = InferenceEngine(model, tokenizer, max_length=512, **options)
    print(f"engine: buckets {engine.buckets}, rows {engine.rows}")

    # Order a, b cold, b warm, then (a, b warm) x (rounds - 1): neighbours in time share the load.
    lengths = [len(ids) for ids in tokenizer(texts, truncation=True, max_length=512)["input_ids"]]
    useful = sum(flops_per_sequence(cfg.encoder, n) for n in lengths)
    runs: dict[str, list[dict]] = {"a": [], "cold": [], "warm": []}

    def measure(kind: str) -> None:
        result = run_reference(reference, tokenizer, texts) if kind == "a" else run_engine(engine, texts)
        runs[kind].append(result)
        name = NAMES[kind]
        print(describe(name, result, len(texts), cfg.encoder, useful, peak), f"[RSS {peak_rss_mb():.0f} MB]")

    order = (["a"] if reference is not None else []) + ["cold", "warm"]
    order += (["a", "warm"] if reference is not None else ["warm"]) * (args.rounds - 1)
    for kind in order:
        measure(kind)
    peak = max(peak, matmul_peak_gflops())
    print(f"compilations: {engine.stats.compilations} ({len(engine.stats.shapes)} shapes); "
          f"matmul peak re-measured, best {peak:.0f} GFLOP/s")
    if reference is not None:
        seconds = {kind: [r["seconds"] for r in rs] for kind, rs in runs.items()}
        pairs = [a / b for a, b in zip(seconds["a"], seconds["warm"], strict=True)]
        print(f"ratio (b) cold/(a): {seconds['a'][0] / seconds['cold'][0]:.2f}x (compilations included)")
        print(f"ratio (b) warm/(a): {sum(seconds['a']) / sum(seconds['warm']):.2f}x over {len(pairs)} "
              f"pairs run back to back ({', '.join(f'{p:.2f}x' for p in pairs)})")
        diff = np.abs(runs["a"][0]["bot_prob"] - runs["warm"][0]["bot_prob"]).max()
        print(f"max |bot_prob (a) - (b)|: {diff:.2e}")
    print(f"peak RSS of the process: {peak_rss_mb():.0f} MB")
    print(f"load average at the end: {os.getloadavg()[0]:.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
