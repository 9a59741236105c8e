"""The host path alone: Parquet → read → tokenize → pack → (no-op model) → records → Parquet, in texts/s.

The model's jitted forward is replaced by one that returns zeros, so what is measured is everything a
fast accelerator would wait on. Beside it: FLOPs per text of xlm-roberta-base at the texts' measured
token count (2 × non-embedding parameters per token plus attention), and how many texts/s one
accelerator would consume at a given sustained FLOP rate, i.e. whether the host keeps up.

    python benchmarks/bench_host.py --texts 20000 [--model DIR] [--real]   # --real: the model too
    python benchmarks/bench_host.py --texts 2000 --real --base   # random xlm-roberta-base-size weights
"""

from __future__ import annotations

import argparse
import gzip
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

_REPO = Path(__file__).resolve().parents[1]
# ../shared beside the checkout (or beside the folder of worktrees).
SHARED = next((p for p in (_REPO.parent / "shared", _REPO.parent.parent / "shared") if p.is_dir()),
              _REPO.parent / "shared")
BASE = {"layers": 12, "hidden": 768, "intermediate": 3072}


def real_texts(n: int) -> list[str]:
    out: list[str] = []
    for lang in ("en", "es"):
        path = SHARED / "data/autextification/subtask_1" / lang / "train.tsv.gz"
        with gzip.open(path, "rt", encoding="utf-8") as f:
            next(f)
            for line in f:
                out.append(line.split("\t")[1])
                if len(out) >= n * (1 if lang == "es" else 0.5):
                    break
    return (out * (n // max(len(out), 1) + 1))[:n]


def base_flops_per_text(tokens: float) -> float:
    d, f, layers = BASE["hidden"], BASE["intermediate"], BASE["layers"]
    per_layer = 4 * d * d + 2 * d * f  # attention projections + MLP weights
    return 2 * layers * per_layer * tokens + 4 * layers * tokens * tokens * d


def base_size_model(directory: Path) -> Path:
    """A model directory with random weights of the published model's size (what the speed depends on)."""
    from autext_jax.config import ModelConfig
    from autext_jax.convert import export_checkpoint
    from autext_jax.model import create_model

    cfg = ModelConfig()
    return export_checkpoint(create_model(cfg, seed=0), cfg, directory,
                             tokenizer_dir=SHARED / "xlmr-tokenizer")


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--texts", type=int, default=20000)
    p.add_argument("--model", default=None)
    p.add_argument("--real", action="store_true", help="run the model too (end-to-end texts/s)")
    p.add_argument("--base", action="store_true",
                   help="score with random xlm-roberta-base-size weights and the shared XLM-R tokenizer")
    p.add_argument("--peak-tflops", type=float, default=197.0, help="accelerator bf16 peak (v5e: 197)")
    p.add_argument("--mfu", type=float, default=0.4)
    args = p.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import autext_jax
    from autext_jax import infer

    texts = real_texts(args.texts)
    with tempfile.TemporaryDirectory() as tmp:
        source = Path(tmp) / "in.parquet"
        pq.write_table(pa.table({"text": texts}), source, row_group_size=10000)
        model = base_size_model(Path(tmp) / "base") if args.base else args.model
        detector = autext_jax.load(model)
        if not args.real:
            def no_op(state, stacked, ids, segments, starts):
                zeros = np.zeros(starts.shape, np.float32)
                return {"bot": zeros, "english": zeros}

            detector.engine._packed = no_op
        original = autext_jax.api.load
        autext_jax.api.load = lambda *a, **k: detector  # the CLI path, with this (patched) detector
        try:
            start = time.perf_counter()
            code = infer.main(["-i", str(source), "-o", f"{tmp}/out/", "-q", "--format", "parquet"])
            seconds = time.perf_counter() - start
        finally:
            autext_jax.api.load = original
        assert code == 0
    stats = detector.stats
    tokens = stats.real_tokens / max(stats.texts, 1)
    flops = base_flops_per_text(tokens)
    rate = args.texts / seconds
    consume = args.peak_tflops * 1e12 * args.mfu / flops
    what = "end to end" if args.real else "host path (no-op model)"
    print(f"{what}: {args.texts} texts in {seconds:.1f} s "
          f"= {rate:.0f} texts/s on {os.cpu_count()} CPUs; {tokens:.1f} tokens/text")
    print(f"xlm-roberta-base: {flops / 1e9:.2f} GFLOP/text; one accelerator at {args.peak_tflops:.0f} "
          f"TFLOP/s x {args.mfu:.0%} MFU consumes {consume:.0f} texts/s")


if __name__ == "__main__":
    main()
