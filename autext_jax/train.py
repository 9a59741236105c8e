"""Multi-task fine-tuning: ``python -m autext_jax.train --config configs/NAME.py --workdir DIR``.

Running the same command again resumes from the newest checkpoint in ``DIR/checkpoints``; the
result is bit-identical (on CPU) to a run that was never interrupted. See ``train_config.py`` for
the configuration, ``steps.py`` for the jitted steps and ``checkpointing.py`` for what is saved.

Exit codes (``errors.py``): 0 done, 1 bad training data or model, 2 bad usage / configuration /
environment, 3 the loss became NaN/inf (last good checkpoint kept).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from autext_jax import cli
from autext_jax import sharding as shd
from autext_jax.checkpointing import (
    Checkpointer,
    CheckpointMismatchError,
    config_digest,
    export_model,
    guard_workdir,
    write_config,
)
from autext_jax.config import ConfigError, ModelConfig
from autext_jax.errors import TrainingDiverged, UsageError
from autext_jax.optim import build_optimizer, current_lr
from autext_jax.steps import ModelLayout, TrainSteps, describe_model, validation_metrics
from autext_jax.train_config import TrainConfig, apply_overrides, load_config_file

log = logging.getLogger("autext_jax.train")

METRICS_FILE = "metrics.jsonl"
# ModelConfig fields that only shape the task heads: taken from the config when --init has no heads.
HEAD_FIELDS = ("hidden_nodes", "pooling", "head_activation", "head_dropout", "threshold")


@dataclass
class _Prepared:
    """What a run needs before its first step."""

    cfg: TrainConfig
    model_cfg: ModelConfig
    tokenizer_dir: Path
    initial: dict[str, Any] | None  # parameter values from --init, or None for a random start
    layout: ModelLayout
    fresh_note: str = ""  # what --init lacked and was initialised randomly (logged on a fresh start)


def _compute_dtype(name: str):
    return jnp.bfloat16 if name == "bfloat16" else None


def prepare_model(cfg: TrainConfig) -> _Prepared:
    """Resolve ``init``/``model``/``tokenizer`` into a model config, a layout and initial values."""
    from autext_jax.model import abstract_model

    dtype = _compute_dtype(cfg.dtype)
    if cfg.init:
        from autext_jax.convert import load_checkpoint
        from autext_jax.hub import resolve_model_dir

        model_dir = resolve_model_dir(cfg.init)
        loaded = load_checkpoint(model_dir, allow_fresh=True, dtype=dtype, seed=cfg.seed)
        if {"bot_head", "lang_head"} & set(loaded.fresh):
            # Fresh heads follow the config's head settings (e.g. mean pooling for an e5 encoder).
            wanted = loaded.config.replace(**{f: getattr(cfg.model, f) for f in HEAD_FIELDS})
            if wanted != loaded.config:
                loaded = load_checkpoint(
                    model_dir, allow_fresh=True, dtype=dtype, seed=cfg.seed, config=wanted
                )
        fresh_note = ""
        if loaded.fresh:
            fresh_note = (
                f"{model_dir} has no {', '.join(loaded.fresh)}: initialised fresh from seed {cfg.seed} "
                "(random weights, trained from scratch)"
            )
        layout, values = describe_model(loaded.model)
        tokenizer_dir = Path(cfg.tokenizer) if cfg.tokenizer else model_dir
        return _Prepared(
            cfg.replace(model=loaded.config), loaded.config, tokenizer_dir, values, layout, fresh_note
        )
    if not cfg.tokenizer:
        raise ConfigError(
            "no model to start from: pass --init MODEL_DIR_OR_HUB_ID, or --set tokenizer=DIR to train "
            "the config's model from random weights"
        )
    layout, _ = describe_model(abstract_model(cfg.model, dtype=dtype))
    return _Prepared(cfg, cfg.model, Path(cfg.tokenizer), None, layout)


def _load_tokenizer(directory: Path, model_cfg: ModelConfig, max_length: int):
    from autext_jax.api import load_tokenizer  # never runs code from the directory

    if not directory.is_dir():
        raise ConfigError(f"tokenizer directory {directory} does not exist")
    try:
        tokenizer = load_tokenizer(directory)
    except FileNotFoundError as err:
        raise ConfigError(str(err)) from None
    if len(tokenizer) > model_cfg.encoder.vocab_size:
        raise ConfigError(
            f"tokenizer in {directory} has {len(tokenizer)} tokens but the model's vocabulary is "
            f"{model_cfg.encoder.vocab_size}; use the tokenizer that belongs to the model"
        )
    if max_length > model_cfg.encoder.max_tokens:
        raise ConfigError(
            f"data.max_length {max_length} exceeds the model's {model_cfg.encoder.max_tokens} positions"
        )
    return tokenizer


class MetricsLog:
    """Appends JSON lines to ``WORKDIR/metrics.jsonl`` (process 0 only)."""

    def __init__(self, path: Path, enabled: bool):
        self.path, self.enabled = path, enabled

    def drop_after(self, step: int) -> None:
        """Forget records past ``step`` (written by a run that died before its next checkpoint)."""
        if not self.enabled or not self.path.is_file():
            return
        kept = [line for line in self.path.read_text().splitlines() if json.loads(line)["step"] <= step]
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text("".join(line + "\n" for line in kept))
        tmp.replace(self.path)

    def write(self, record: dict[str, Any]) -> None:
        if self.enabled:
            with self.path.open("a") as f:
                f.write(json.dumps(record, sort_keys=True) + "\n")


def _check_finite(metrics: dict[str, float], step: int) -> None:
    bad = [k for k in ("loss", "grad_norm") if not math.isfinite(metrics[k])]
    if bad:
        raise TrainingDiverged(
            f"step {step}: {' and '.join(bad)} became {metrics[bad[0]]}; stopped, the last good checkpoint "
            "is kept (lower optimizer.learning_rate or check the data)"
        )


def run(cfg: TrainConfig, workdir: str | Path) -> dict[str, Any]:
    """Train (or resume) in ``workdir``; returns the final validation metrics and the export path."""
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    prepared = prepare_model(cfg)
    checkpointer = Checkpointer(workdir / "checkpoints", prepared.cfg.checkpoint)
    try:
        return _run(prepared, workdir, checkpointer)
    finally:
        checkpointer.wait()  # an in-flight save completes (it holds good parameters) before we leave
        checkpointer.close()


def _run(prepared: _Prepared, workdir: Path, checkpointer: Checkpointer) -> dict[str, Any]:
    from autext_jax.data import BatchStream, build_datasets

    cfg, model_cfg = prepared.cfg, prepared.model_cfg
    lead = jax.process_index() == 0
    resolved = cfg.to_json()
    latest = checkpointer.latest_step()
    guard_workdir(workdir, resolved, latest is not None, cfg.allow_config_change)
    if lead:
        write_config(workdir, resolved)

    mesh = shd.make_mesh(cfg.mesh)
    shd.check_batch_size(cfg.batch_size, mesh)
    shd.check_batch_size(cfg.eval.batch_size, mesh, what="eval.batch_size")
    tokenizer = _load_tokenizer(prepared.tokenizer_dir, model_cfg, cfg.data.max_length)
    pad_id = model_cfg.encoder.pad_token_id
    train_ds, val_ds = build_datasets(cfg.data, tokenizer)
    stream = BatchStream(
        train_ds,
        global_batch_size=cfg.batch_size,
        buckets=cfg.data.buckets,
        seed=cfg.seed,
        pad_id=pad_id,
        process_index=jax.process_index(),
        process_count=jax.process_count(),
    )
    per_epoch = stream.steps_per_epoch
    if per_epoch == 0:
        raise ConfigError(f"{len(train_ds)} training rows do not fill one batch of {cfg.batch_size}")
    total = cfg.max_steps or cfg.epochs * per_epoch
    log.info(
        "%d training rows, %d validation rows, %d batches/epoch, %d steps, mesh %s",
        len(train_ds),
        len(val_ds),
        per_epoch,
        total,
        dict(mesh.shape),
    )

    tx = build_optimizer(cfg.optimizer, prepared.layout.names, model_cfg.encoder.num_layers, total)
    steps = TrainSteps(prepared.layout, tx, mesh, lang_loss_weight=cfg.lang_loss_weight)
    digest = config_digest(resolved)
    if latest is not None:
        state, meta = checkpointer.restore(latest, steps.abstract_state())
        if meta.get("steps_per_epoch") != per_epoch and not cfg.allow_config_change:
            raise CheckpointMismatchError(
                f"the checkpoint was made with {meta.get('steps_per_epoch')} batches per epoch, the data now "
                f"gives {per_epoch}; the data changed: use another --workdir"
            )
        step = int(meta["step"])
        log.info(
            "resumed from step %d (epoch %d, batch %d); the checkpoint's weights replace --init",
            step, meta["epoch"], meta["batch_index"],
        )
    else:
        if prepared.initial is not None:
            if prepared.fresh_note:
                log.warning(prepared.fresh_note)
            params = steps.place_params(prepared.initial)
        else:
            params = steps.init_params(model_cfg, seed=cfg.seed, dtype=_compute_dtype(cfg.dtype))
            log.info("model initialised randomly from seed %d (no init given)", cfg.seed)
        state, step = steps.init_state(params, seed=cfg.seed), 0
    prepared.initial = None

    metrics_log = MetricsLog(workdir / METRICS_FILE, lead)
    metrics_log.drop_after(step)
    export_dir = workdir / "export"
    if step >= total and (export_dir / "config.json").is_file():
        log.info("already complete (%d steps); export in %s", step, export_dir)
        return {"step": step, "export": str(export_dir), "complete": True}

    def save(at: int) -> None:
        epoch, index = divmod(at, per_epoch)
        meta = {
            "step": at,
            "epoch": epoch,
            "batch_index": index,
            "steps_per_epoch": per_epoch,
            "total_steps": total,
            "config_digest": digest,
        }
        checkpointer.save(at, state, meta)

    def run_eval(at: int) -> dict[str, Any]:
        result = (
            validation_metrics(
                steps,
                state["params"],
                val_ds,
                batch_size=cfg.eval.batch_size,
                buckets=cfg.data.buckets,
                pad_id=pad_id,
                lang_loss_weight=cfg.lang_loss_weight,
            )
            if len(val_ds)
            else {"rows": 0}
        )
        metrics_log.write({"split": "val", "step": at, **result})
        log.info("step %d validation: %s", at, _short(result))
        return result

    progress = _progress(total, step, enabled=lead and cfg.progress)
    window: list[dict[str, Any]] = []
    window_start = time.perf_counter()
    while step < total:
        epoch, index = divmod(step, per_epoch)
        for local in stream.batches(epoch, start=index):
            state, metrics = steps.train_step(state, steps.global_batch(local))
            step += 1
            window.append(metrics)
            last = step == total
            save_due = step % cfg.checkpoint.every_steps == 0 or last
            eval_due = bool(cfg.eval.every_steps) and step % cfg.eval.every_steps == 0 and not last
            # Checked before anything is saved or evaluated, so a checkpoint never holds NaNs.
            if step % cfg.log_every == 0 or save_due or eval_due:
                records = [{k: float(v) for k, v in m.items()} for m in jax.device_get(window)]
                for offset, rec in enumerate(records):
                    _check_finite(rec, step - len(records) + offset + 1)
                elapsed = time.perf_counter() - window_start
                summary = _train_summary(records, elapsed, cfg, total, step)
                metrics_log.write({"split": "train", "step": step, "epoch": epoch, **summary})
                progress.set_postfix(loss=f"{summary['loss']:.4f}", ex_s=f"{summary['examples_per_s']:.1f}")
                window, window_start = [], time.perf_counter()
            progress.update(1)
            if save_due:
                save(step)
            if eval_due:
                run_eval(step)
            if last:
                break
    progress.close()
    checkpointer.wait()
    final = run_eval(step)
    threshold = final.get("best_threshold")
    if threshold is None:
        log.warning("no threshold tuned (validation lacks one class): keeping %s", model_cfg.threshold)
        threshold = model_cfg.threshold
    exported = export_model(
        steps.layout,
        state["params"],
        model_cfg.replace(threshold=threshold),
        prepared.tokenizer_dir,
        export_dir,
        lead,
    )
    return {"step": step, "export": str(exported), "validation": final, "complete": True}


def _train_summary(records: list[dict[str, float]], elapsed: float, cfg: TrainConfig, total: int, step: int):
    mean = {
        k: float(np.mean([r[k] for r in records])) for k in ("loss", "bot_loss", "english_loss", "grad_norm")
    }
    tokens = sum(r["tokens"] for r in records)
    return {
        **mean,
        "lr": float(current_lr(cfg.optimizer, total, step)),
        "examples_per_s": len(records) * cfg.batch_size / max(elapsed, 1e-9),
        "tokens_per_s": tokens / max(elapsed, 1e-9),
    }


def _short(result: dict[str, Any]) -> str:
    keys = ("loss", "macro_f1", "best_threshold", "best_macro_f1")
    return json.dumps({k: result[k] for k in keys if k in result})


def _progress(total: int, initial: int, enabled: bool):
    from tqdm import tqdm

    return tqdm(
        total=total, initial=initial, disable=not enabled, desc="train", unit="step", dynamic_ncols=True
    )


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m autext_jax.train", description=__doc__.split("\n")[0])
    p.add_argument("--config", required=True, help="Python file with get_config() (e.g. configs/tiny.py)")
    p.add_argument("--workdir", required=True, help="checkpoints, metrics.jsonl, train_config.json, export/")
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
    p.add_argument("--coordinator", help="multi-process: coordinator host:port (or AUTEXT_COORDINATOR)")
    p.add_argument("--num-processes", type=int, help="multi-process: number of processes")
    p.add_argument("--process-id", type=int, help="multi-process: this process's index")
    p.add_argument(
        "--compile-only",
        action="store_true",
        help="compile the train and eval steps, print HBM per chip and FLOPs, exit 1 if they do not fit; "
        "no weights, data or workdir are touched (autext_jax/aot.py)",
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
    parser = _parser()
    return cli.main(parser.prog, parser, _main, argv)


def _main(args: argparse.Namespace) -> int:
    cli.setup_logging("train", timestamps=True)
    if args.topology and not args.compile_only:
        raise UsageError("--topology only goes with --compile-only (training runs on the attached devices)")
    if args.compile_only:
        from autext_jax import aot

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
    cfg = resolve_config(args)
    if args.batch_per_device is not None:
        total = shd.global_batch_size(args.batch_per_device, cfg.mesh, jax.device_count())
        cfg = cfg.replace(batch_size=total)
    result = run(cfg, args.workdir)
    if jax.process_index() == 0:
        print(json.dumps({k: v for k, v in result.items() if k != "validation"}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
