"""Measure checkpoint conversion on a random full-size (xlm-roberta-base) model in the published layout.

    python benchmarks/bench_convert.py --workdir /tmp/bench_convert [--keep]

Writes a random ``model.safetensors`` (≈1.11 GB) and the published ``config.json`` (no ``encoder``
object: the encoder comes from the built-in ``xlm-roberta-base`` entry), then converts it in a
fresh process and prints wall time and peak RSS of that process as JSON. Each phase runs in its
own process so the writer's memory does not count against the converter.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

from autext_jax import cli
from autext_jax.config import PUBLISHED_CONFIG_JSON


def write_random_checkpoint(directory: Path, config=None, seed: int = 0) -> None:
    """Random float32 tensors with the published names and shapes (pooler included).

    ``config`` (a ``ModelConfig``; default xlm-roberta-base) other than the default is saved with
    its ``encoder`` object, since the published config.json could not describe it.
    """
    import numpy as np
    from safetensors.numpy import save_file

    from autext_jax.config import ModelConfig
    from autext_jax.convert import expected_shapes

    config = config or ModelConfig()
    rng = np.random.default_rng(seed)
    shapes = expected_shapes(config)
    tensors = {key: (rng.standard_normal(shape, dtype=np.float32) * 0.02) for key, shape in shapes.items()}
    directory.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(directory / "model.safetensors"))
    if config == ModelConfig():
        (directory / "config.json").write_text(json.dumps(PUBLISHED_CONFIG_JSON, indent=2))
    else:
        config.save(directory)


def convert_and_measure(directory: Path) -> dict:
    """Load the checkpoint; report time and this process's peak RSS (import baseline included)."""
    import resource

    import jax

    from autext_jax.convert import load_checkpoint
    from autext_jax.model import count_params

    def peak_mib() -> float:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    baseline = peak_mib()
    start = time.perf_counter()
    loaded = load_checkpoint(directory)
    jax.block_until_ready(jax.tree.leaves(loaded.model))
    seconds = time.perf_counter() - start
    return {
        "file_mib": round((directory / "model.safetensors").stat().st_size / 2**20, 1),
        "params": count_params(loaded.model),
        "convert_seconds": round(seconds, 2),
        "peak_rss_mib": round(peak_mib(), 1),
        "rss_after_imports_mib": round(baseline, 1),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/autext_bench_convert"))
    parser.add_argument("--keep", action="store_true", help="keep the 1.1 GB random checkpoint")
    parser.add_argument("--phase", choices=("write", "convert"), help=argparse.SUPPRESS)
    cli.add_debug_flag(parser)
    return cli.main("bench_convert", parser, _main, argv)


def _main(args: argparse.Namespace) -> int:
    if args.phase == "write":
        write_random_checkpoint(args.workdir)
        return 0
    if args.phase == "convert":
        print(json.dumps(convert_and_measure(args.workdir)))
        return 0
    try:
        start = time.perf_counter()
        _child(args.workdir, "write")
        write_seconds = time.perf_counter() - start
        report = json.loads(_child(args.workdir, "convert").strip().splitlines()[-1])
        report["write_seconds"] = round(write_seconds, 2)
        print(json.dumps(report, indent=2))
    except subprocess.CalledProcessError as err:
        print(f"bench_convert: the {err.cmd[-1]} phase failed:\n{err.stderr}", file=sys.stderr)
        return 1
    finally:
        if not args.keep:
            shutil.rmtree(args.workdir, ignore_errors=True)
    return 0


def _child(workdir: Path, phase: str) -> str:
    cmd = [sys.executable, __file__, "--workdir", str(workdir), "--phase", phase]
    return subprocess.run(cmd, check=True, capture_output=True, text=True).stdout


if __name__ == "__main__":
    sys.exit(main())
