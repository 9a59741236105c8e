"""Inference benchmark: the PyTorch reference pipeline vs autext_jax's engine, side by side in one run.

Both score the same texts with the same random xlm-roberta-base-size weights:
(a) as the model card does it: tokenizer ``padding=True, truncation=True, max_length=512``,
    batches of 32 in input order, eager PyTorch under ``torch.inference_mode()``;
(b) ``autext_jax.engine.InferenceEngine`` (packed rows, fixed shapes, scanned jitted forward),
    timed on its first call (compilations included) and warm (shapes already compiled).
Per side: texts/s, real tokens/s, padding share, compilations, and % of roofline: the real
tokens' FLOPs ÷ time ÷ a matmul peak measured in the same run (the best of XLA's and torch's).

``--fresh``: whole fresh processes instead, as a user meets them: a PyTorch script (imports, the
model built on the meta device and the safetensors weights assigned, the model-card pipeline) vs
``python -m autext_jax.infer -m DIR -i texts.jsonl`` without a compilation cache, then twice with a
new cache (the second run is the "second run" figure). ``--model DIR`` times that model's CLI alone
(e.g. the embedded one). ``--normalize-overhead``: one model (``--model``, default the embedded one)
on the same clean texts with normalization on and off, in alternating warm rounds.

Texts: ``<shared>/data/autextification/subtask_1/{en,es}/train.tsv.gz`` when present, else
generated sentences. Tokenizer: ``<shared>/xlmr-tokenizer`` when present, else the tiny test one.

    nice python benchmarks/bench_infer.py --texts 160 --rounds 2
    nice python benchmarks/bench_infer.py --texts 160 --fresh
    python benchmarks/bench_infer.py --texts 1000 --rounds 6 --normalize-overhead   # the embedded model
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from autext_jax import cli
from autext_jax.data import tables

REPO = Path(__file__).resolve().parents[1]
DEFAULT_SHARED = REPO.parent / "shared"
NAMES = {"a": "(a) PyTorch reference", "cold": "(b) autext_jax 1st call", "warm": "(b) autext_jax warm"}


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


def matmul_peak_gflops(size: int = 2048, repeats: int = 5, dtype: str = "float32") -> float:
    """Best jitted matmul rate of XLA on this machine's first device."""
    import jax
    import jax.numpy as jnp

    a = jnp.asarray(np.random.default_rng(0).standard_normal((size, size), dtype=np.float32), dtype=dtype)
    matmul = jax.jit(lambda x: x @ x)
    matmul(a).block_until_ready()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        matmul(a).block_until_ready()
        best = min(best, time.perf_counter() - start)
    return 2 * size**3 / best / 1e9


def torch_matmul_peak_gflops(size: int = 2048, repeats: int = 5, dtype: str = "float32") -> float:
    """The same for torch (the reference's own roofline)."""
    import torch

    device = "cuda" if torch.cuda.is_available() else "cpu"
    a = torch.randn(size, size, device=device, dtype=getattr(torch, dtype))
    best = float("inf")
    for _ in range(repeats + 1):
        start = time.perf_counter()
        a @ a
        if device == "cuda":
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - start)
    return 2 * size**3 / best / 1e9


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def build_torch_reference(cfg, state_dict, device: str = "cpu", dtype: str = "float32"):
    """XLM-R encoder + the two ``Sequential(Linear, ReLU, Linear)`` heads, with the JAX model's weights.

    Built on the meta device and the weights assigned, as ``from_pretrained`` does (no random init).
    """
    import torch
    from torch import nn
    from transformers import XLMRobertaConfig, XLMRobertaModel

    class Reference(nn.Module):
        def __init__(self):
            super().__init__()
            hf = {k: v for k, v in cfg.encoder.to_hf_config().items() if k != "use_pooler"}
            pooler = cfg.encoder.use_pooler
            hf_config = XLMRobertaConfig(**hf, attn_implementation="sdpa")
            self.transformer = XLMRobertaModel(hf_config, add_pooling_layer=pooler)
            h, k = cfg.encoder.hidden_size, cfg.hidden_nodes
            self.bot_head = nn.Sequential(nn.Linear(h, k), nn.ReLU(), nn.Linear(k, 1))
            self.lang_head = nn.Sequential(nn.Linear(h, k), nn.ReLU(), nn.Linear(k, 1))

        def forward(self, batch):
            pooled = self.transformer(**batch).last_hidden_state[:, 0]
            return torch.sigmoid(self.bot_head(pooled)[:, 0]), torch.sigmoid(self.lang_head(pooled)[:, 0])

    with torch.device("meta"):
        model = Reference()
    tensors = {k: torch.as_tensor(np.asarray(v)) for k, v in state_dict.items()}
    model.load_state_dict(tensors, strict=True, assign=True)
    embeddings = model.transformer.embeddings  # its non-persistent buffers, as from_pretrained rebuilds them
    width = embeddings.position_ids.shape[1]
    embeddings.register_buffer("position_ids", torch.arange(width).expand((1, -1)), persistent=False)
    embeddings.register_buffer("token_type_ids", torch.zeros((1, width), dtype=torch.long), persistent=False)
    return model.to(device=device, dtype=getattr(torch, dtype)).eval()


def run_reference(model, tokenizer, texts: list[str], batch_size: int = 32) -> dict:
    import torch

    device = next(model.parameters()).device
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
            inputs = {k: batch[k].to(device) for k in ("input_ids", "attention_mask")}
            bot, _ = model(inputs)
            probs.append(bot.float().cpu().numpy())
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
    attention = (stats.attention_real, stats.attention_computed)
    start = time.perf_counter()
    logits = engine.logits(texts)
    seconds = time.perf_counter() - start
    return {
        "seconds": seconds,
        "real_tokens": stats.real_tokens - before[0],
        "padded_tokens": stats.padded_tokens - before[1],
        "compilations": stats.compilations - before[2],
        "shapes": list((stats.shapes - before[3]).elements()),
        "attention": (stats.attention_computed - attention[1]) / max(1, stats.attention_real - attention[0]),
        "bot_prob": sigmoid(logits["bot"]),
    }


def describe(name: str, result: dict, n_texts: int, cfg, useful: float, peak: float) -> str:
    """One line per run. ``roofline``: the real tokens' FLOPs per second ÷ the matmul peak; it can
    pass 100% when the peak was measured while other processes loaded the machine more."""
    s = result["seconds"]
    padding = 1 - result["real_tokens"] / result["padded_tokens"]
    computed = sum(rows * flops_per_sequence(cfg, length) for rows, length in result["shapes"]) / s / 1e9
    line = (
        f"{name:<22} {s:6.2f} s {n_texts / s:6.2f} texts/s {result['real_tokens'] / s:7.0f} tok/s "
        f"{padding:5.1%} padding | GFLOP/s computed {computed:6.1f}, real tokens {useful / s / 1e9:6.1f} "
        f"= {useful / s / 1e9 / peak:4.0%} of roofline"
    )
    if "compilations" in result:
        line += f" | compilations {result['compilations']}, attention work {result['attention']:.2f}x needed"
    return line


# ---- fresh processes ---------------------------------------------------------------------------


TORCH_SCRIPT = """
import json, sys, time
t0 = time.perf_counter()
import numpy as np, torch
from safetensors.numpy import load_file
from transformers import XLMRobertaTokenizer
sys.path.insert(0, sys.argv[3])
from bench_infer import build_torch_reference, run_reference
from autext_jax.config import ModelConfig
model_dir, texts_path = sys.argv[1], sys.argv[2]
cfg = ModelConfig.load(model_dir)
model = build_torch_reference(cfg, load_file(f"{model_dir}/model.safetensors"))
tokenizer = XLMRobertaTokenizer.from_pretrained(model_dir)
texts = [json.loads(line)["text"] for line in open(texts_path)]
out = run_reference(model, tokenizer, texts)
print(json.dumps({"bot_prob": out["bot_prob"].tolist()}))
"""


def timed(command: list[str], env: dict) -> tuple[float, str]:
    start = time.perf_counter()
    proc = subprocess.run(command, capture_output=True, text=True, env=env)
    seconds = time.perf_counter() - start
    if proc.returncode:
        raise SystemExit(f"{command[:4]} failed ({proc.returncode}): {proc.stderr[-2000:]}")
    return seconds, proc.stdout + proc.stderr


def fresh(args, texts: list[str], work: Path) -> None:
    """Cold and second-run wall times of whole processes, PyTorch script vs the CLI."""
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONPATH=str(REPO))
    texts_path = work / "texts.jsonl"
    texts_path.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    model_dir = args.model
    if model_dir is None:
        from autext_jax.config import ModelConfig
        from autext_jax.convert import export_checkpoint
        from autext_jax.model import create_model

        tokenizer_dir = args.shared / "xlmr-tokenizer"
        model_dir = export_checkpoint(
            create_model(ModelConfig(), seed=args.seed),
            ModelConfig(),
            work / "model",
            tokenizer_dir=tokenizer_dir if tokenizer_dir.is_dir() else None,
        )
    cli = [
        sys.executable,
        "-m",
        "autext_jax.infer",
        "-m",
        str(model_dir),
        "-i",
        str(texts_path),
        "-q",
        "-v",
        "-o",
        str(work / "out.jsonl"),
    ]
    torch_cmd = [sys.executable, "-c", TORCH_SCRIPT, str(model_dir), str(texts_path), str(REPO / "tools")]
    rows = []
    for round_ in range(args.rounds):
        if not args.skip_reference:
            rows.append(("PyTorch script (load + model-card pipeline)", *timed(torch_cmd, env)[:1]))
        rows.append(("CLI, no cache", timed(cli + ["--no-compile-cache"], env)[0]))
        cache = work / f"cache{round_}"
        rows.append(("CLI, first run, new cache", timed(cli + ["--compile-cache", str(cache)], env)[0]))
        seconds, log = timed(cli + ["--compile-cache", str(cache)], env)
        rows.append(("CLI, second run (cache)", seconds))
    print(log.strip().splitlines()[-1])
    reference = [s for name, s in rows if name.startswith("PyTorch")]
    for name, seconds in rows:
        ratio = f"  ({sum(reference) / len(reference) / seconds:.2f}x PyTorch)" if reference else ""
        print(f"{name:<46} {seconds:6.1f} s{ratio}")


def normalize_overhead(args: argparse.Namespace, texts: list[str]) -> int:
    """Scoring speed on clean text with ``normalize=True`` vs ``False``: the same model and texts,
    warm, rounds alternating (off, on, off, on, ...) so both sides share the machine's load."""
    import autext_jax

    detectors = {flag: autext_jax.load(args.model, normalize=flag) for flag in (False, True)}
    for detector in detectors.values():
        detector.logits(texts)  # compile every shape first
    seconds: dict[bool, list[float]] = {False: [], True: []}
    for _ in range(args.rounds):
        for flag in (False, True):
            start = time.perf_counter()
            detectors[flag].logits(texts)
            seconds[flag].append(time.perf_counter() - start)
    for flag, label in ((False, "normalize=False"), (True, "normalize=True ")):
        total = sum(seconds[flag])
        print(f"{label}: {len(texts) * args.rounds / total:.1f} texts/s over {args.rounds} rounds "
              f"({', '.join(f'{s:.2f}' for s in seconds[flag])} s)")  # fmt: skip
    from autext_jax.normalize import normalize

    start = time.perf_counter()
    changed = sum(1 for text in texts if normalize(text).changed)
    alone = time.perf_counter() - start
    share = 100 * alone * args.rounds / sum(seconds[False])
    print(f"normalize() alone: {1e6 * alone / len(texts):.0f} µs per text ({changed} of {len(texts)} "
          f"changed), {share:.2f}% of the scoring time without it")  # fmt: skip
    ratio = sum(seconds[True]) / sum(seconds[False])
    pairs = ", ".join(f"{on / off:.3f}" for off, on in zip(seconds[False], seconds[True], strict=True))
    print(f"time with / without normalization: {ratio:.3f} (per round: {pairs})")
    print(f"load average at the end: {os.getloadavg()[0]:.1f}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--texts", type=int, default=160, help="number of texts (default 160)")
    parser.add_argument("--batch-size", type=int, default=None, help="engine rows at max length")
    parser.add_argument("--shared", type=Path, default=DEFAULT_SHARED, help="the shared data/tokenizer dir")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--rounds", type=int, default=1, help="(a, b warm) pairs to average (default 1)")
    parser.add_argument("--skip-reference", action="store_true", help="time the engine only")
    parser.add_argument("--no-pack", action="store_true", help="engine: one text per row (length buckets)")
    parser.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32", help="both sides")
    parser.add_argument("--fresh", action="store_true", help="whole fresh processes (cold / second run)")
    parser.add_argument("--model", type=Path, help="--fresh / --normalize-overhead: this model directory")
    parser.add_argument(
        "--normalize-overhead",
        action="store_true",
        help="time one model (--model, default the embedded one) on the clean texts with normalization "
        "on and off, alternating warm rounds",
    )
    cli.add_debug_flag(parser)
    return cli.main("bench_infer", parser, _main, argv)


def _main(args: argparse.Namespace) -> int:

    import jax

    texts, source = load_texts(args.shared, args.texts, args.seed)
    print(
        f"machine: {os.cpu_count()} CPUs, JAX devices {jax.devices()}, load average {os.getloadavg()[0]:.1f}"
    )
    print(f"texts: {len(texts)} from {source}")
    if args.normalize_overhead:
        return normalize_overhead(args, texts)
    if args.fresh:
        with tempfile.TemporaryDirectory(prefix="autext-bench-") as work:
            fresh(args, texts, Path(work))
        print(f"load average at the end: {os.getloadavg()[0]:.1f}")
        return 0

    from autext_jax.config import ModelConfig
    from autext_jax.convert import to_state_dict
    from autext_jax.engine import EngineOptions, InferenceEngine
    from autext_jax.model import create_model

    tokenizer, tokenizer_source = load_tokenizer(args.shared)
    cfg = ModelConfig()
    print(f"tokenizer: {tokenizer_source}")
    size = 2048 if jax.devices()[0].platform == "cpu" else 8192
    peak = matmul_peak_gflops(size, dtype=args.dtype)
    torch_peak = 0.0 if args.skip_reference else torch_matmul_peak_gflops(size, dtype=args.dtype)
    print(f"{args.dtype} matmul peak: XLA {peak:.0f} GFLOP/s, torch {torch_peak:.0f} GFLOP/s")

    dtype = None if args.dtype == "float32" else jax.numpy.bfloat16
    model = create_model(cfg, seed=args.seed, dtype=dtype)
    reference = None
    if not args.skip_reference:
        import torch

        device = "cuda" if torch.cuda.is_available() else "cpu"
        reference = build_torch_reference(cfg, to_state_dict(model), device, args.dtype)
        print(f"torch {torch.__version__} on {device}, {torch.get_num_threads()} threads")
    options = EngineOptions(batch_size=args.batch_size, pack=not args.no_pack)
    engine = InferenceEngine(model, tokenizer, options)
    print(f"engine: shapes (rows, length) {engine.policy.shapes()}")

    # Order a, b first call, b warm, then (a, b warm) x (rounds - 1): neighbours in time share the load.
    lengths = [len(ids) for ids in tokenizer(texts, truncation=True, max_length=512)["input_ids"]]
    useful = sum(flops_per_sequence(cfg.encoder, n) for n in lengths)
    runs: dict[str, list[dict]] = {"a": [], "cold": [], "warm": []}
    roofline = max(peak, torch_peak)

    def measure(kind: str) -> None:
        result = run_reference(reference, tokenizer, texts) if kind == "a" else run_engine(engine, texts)
        runs[kind].append(result)
        line = describe(NAMES[kind], result, len(texts), cfg.encoder, useful, roofline)
        print(line, f"[RSS {peak_rss_mb():.0f} MB]", flush=True)

    order = (["a"] if reference is not None else []) + ["cold", "warm"]
    order += (["a", "warm"] if reference is not None else ["warm"]) * (args.rounds - 1)
    for kind in order:
        measure(kind)
    peak = max(peak, matmul_peak_gflops(size, dtype=args.dtype))
    print(
        f"compilations: {engine.stats.compilations} ({len(engine.stats.shapes)} shapes); "
        f"XLA matmul peak re-measured, best {peak:.0f} GFLOP/s"
    )
    if reference is not None:
        seconds = {kind: [r["seconds"] for r in rs] for kind, rs in runs.items()}
        pairs = [a / b for a, b in zip(seconds["a"], seconds["warm"], strict=True)]
        print(
            f"ratio (b) first call/(a): {seconds['a'][0] / seconds['cold'][0]:.2f}x (compilations included)"
        )
        print(
            f"ratio (b) warm/(a): {sum(seconds['a']) / sum(seconds['warm']):.2f}x over {len(pairs)} "
            f"pairs run back to back ({', '.join(f'{p:.2f}x' for p in pairs)})"
        )
        diff = np.abs(runs["a"][0]["bot_prob"] - runs["warm"][0]["bot_prob"]).max()
        print(f"max |bot_prob (a) - (b)|: {diff:.2e}")
    print(f"peak RSS of the process: {peak_rss_mb():.0f} MB")
    print(f"load average at the end: {os.getloadavg()[0]:.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
