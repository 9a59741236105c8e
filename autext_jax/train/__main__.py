"""``python -m autext_jax.train --config configs/NAME.py --workdir DIR``: the training CLI.

Parses the flags, joins a multi-process run (``--distributed auto`` or explicit coordinator flags),
enables the compile cache, resolves the config and hands it to ``loop.train``; ``--compile-only``
goes to ``aot`` instead and touches no weights, data or workdir.

Exit codes (``errors.py``): 0 done, 1 bad training data or model, 2 bad usage / configuration /
environment (also: the workdir is in use, or not shared by all processes), 3 the loss became
NaN/inf (last good checkpoint kept), 143 / 130 stopped by SIGTERM / Ctrl-C after saving a checkpoint.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence

import jax

from autext_jax import cli
from autext_jax.compile_cache import enable_compile_cache, train_cache_dir
from autext_jax.errors import UsageError
from autext_jax.train import aot
from autext_jax.train import sharding as shd
from autext_jax.train.config import TrainConfig, apply_overrides, load_config_file
from autext_jax.train.loop import train

log = logging.getLogger("autext_jax.train")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m autext_jax.train", description=__doc__.split("\n")[0])
    p.add_argument("--config", required=True, help="Python file with get_config() (e.g. configs/tiny.py)")
    p.add_argument(
        "--workdir",
        required=True,
        help="local folder or URL (gs://BUCKET/RUN): checkpoints, metrics.jsonl, tensorboard/, export/",
    )
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config field, e.g. --set optimizer.learning_rate=3e-5 (repeatable)",
    )
    p.add_argument("--max-steps", type=int, help="stop after N batches (sets max_steps)")
    p.add_argument("--checkpoint-every", type=int, help="save every N batches (sets checkpoint.every_steps)")
    p.add_argument("--init", help="model directory, Hub id, or encoder-only HF checkpoint to start from")
    p.add_argument(
        "--batch-per-device",
        type=int,
        metavar="N",
        help="rows per device and step: sets batch_size to N × the mesh's data×fsdp devices",
    )
    p.add_argument(
        "--distributed",
        choices=["auto"],
        help="auto: join the multi-host run the platform describes (jax.distributed.initialize() with no "
        "arguments; Cloud TPU VMs with the same command on every worker, SLURM, ...)",
    )
    p.add_argument(
        "--compile-cache",
        metavar="DIR",
        help="persistent XLA compilation cache (local or gs://; default WORKDIR/compile_cache, 'off': "
        "none); a relaunch or resume skips compiling",
    )
    p.add_argument("--coordinator", help="multi-process: coordinator host:port (or AUTEXT_COORDINATOR)")
    p.add_argument("--num-processes", type=int, help="multi-process: number of processes")
    p.add_argument("--process-id", type=int, help="multi-process: this process's index")
    p.add_argument(
        "--compile-only",
        action="store_true",
        help="compile the train and eval steps, print HBM per chip and FLOPs, exit 1 if they do not fit; "
        "no weights, data or workdir are touched (autext_jax/train/aot.py)",
    )
    p.add_argument(
        "--topology",
        help="with --compile-only: a TPU slice to compile for without having one, e.g. v5e:2x4, v5e-16, "
        "v4-32, 2xv5e-16 (needs the tpu extra); default: the attached devices",
    )
    cli.add_debug_flag(p)
    return p


def resolve_config(args: argparse.Namespace) -> TrainConfig:
    """The config file, then ``--set`` overrides, then the dedicated flags."""
    overrides = list(args.overrides)
    if args.max_steps is not None:
        overrides.append(f"max_steps={args.max_steps}")
    if args.checkpoint_every is not None:
        overrides.append(f"checkpoint.every_steps={args.checkpoint_every}")
    if args.init is not None:
        overrides.append(f"init={args.init}")
    return apply_overrides(load_config_file(args.config), overrides)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    return cli.main(parser.prog, parser, _main, argv)


def _main(args: argparse.Namespace) -> int:
    cli.setup_logging("train", timestamps=True)
    if not args.debug:
        # Orbax reports a failed save through absl and asyncio, with tracebacks, from several threads;
        # CheckpointError says it in one line (``--debug`` shows them all).
        for name in ("absl", "asyncio"):
            logging.getLogger(name).setLevel(logging.CRITICAL)
    if args.topology and not args.compile_only:
        raise UsageError("--topology only goes with --compile-only (training runs on the attached devices)")
    if args.compile_only:
        print(json.dumps(aot.run(resolve_config(args), args.topology, args.batch_per_device)))
        return 0
    explicit = args.coordinator or args.num_processes is not None or args.process_id is not None
    if args.distributed and explicit:
        raise UsageError(
            "--distributed auto finds the cluster itself: drop --coordinator/--num-processes/--process-id"
        )
    if args.distributed:
        dist = shd.DistributedArgs(auto=True)
    elif explicit:
        dist = shd.DistributedArgs(args.coordinator, args.num_processes, args.process_id)
    else:
        dist = shd.DistributedArgs.from_env()
    shd.initialize_distributed(dist)
    # Other processes of a multi-process run keep to warnings: a pod's log is not repeated per host.
    cli.setup_logging("train", timestamps=True, primary=jax.process_index() == 0)
    cfg = resolve_config(args)
    if args.batch_per_device is not None:
        total = shd.global_batch_size(args.batch_per_device, cfg.mesh, jax.device_count())
        cfg = cfg.replace(batch_size=total)
    cache = train_cache_dir(args.compile_cache, args.workdir)  # after the config: a bad one changes nothing
    if cache is not None:
        log.debug("compile cache: %s", cache)
        enable_compile_cache(cache)
    result = train(cfg, args.workdir)
    if jax.process_index() == 0:
        print(json.dumps({k: v for k, v in result.items() if k != "validation"}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
