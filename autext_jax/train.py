"""Multi-task fine-tuning: ``python -m autext_jax.train --config configs/NAME.py --workdir DIR``.

``DIR`` is a local folder or a URL (``gs://BUCKET/RUN``). Running the same command again resumes
from the newest intact checkpoint in ``DIR/checkpoints``; the result is bit-identical (on CPU) to a
run that was never interrupted. A run is four parts: ``setup`` (storage probed, workdir leased,
data, mesh, jitted steps), ``restore_or_init``, ``train_loop`` (with the log / save / eval / stop
hooks of ``hooks.py``) and ``finish`` (final validation, threshold, export). See ``train_config.py``
for the configuration, ``steps.py`` for the jitted steps and ``checkpointing.py`` for what is saved.

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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp

from autext_jax import cli, engine, paths
from autext_jax import sharding as shd
from autext_jax.checkpointing import Checkpointer, CheckpointMismatchError
from autext_jax.config import ConfigError, ModelConfig
from autext_jax.errors import UsageError
from autext_jax.hooks import EvalHook, Hook, LogHook, SaveHook, StopHook
from autext_jax.metric_writers import METRICS_FILE, MetricWriters
from autext_jax.optim import build_optimizer, current_lr
from autext_jax.preemption import StopSignals
from autext_jax.steps import ModelLayout, TrainSteps, describe_model
from autext_jax.train_config import TrainConfig, apply_overrides, load_config_file

__all__ = ["METRICS_FILE", "main", "prepare_model", "resolve_config", "run"]

log = logging.getLogger("autext_jax.train")

# ModelConfig fields that only shape the task heads: taken from the config when --init has no heads.
HEAD_FIELDS = ("hidden_nodes", "pooling", "head_activation", "head_dropout", "threshold")


@dataclass
class _Prepared:
    """The model a run starts from, before any data or devices are touched."""

    cfg: TrainConfig
    model_cfg: ModelConfig
    tokenizer_dir: Path
    initial: dict[str, Any] | None  # parameter values from --init, or None for a random start
    layout: ModelLayout
    fresh_note: str = ""  # what --init lacked and was initialised randomly (logged on a fresh start)


def _compute_dtype(name: str):
    return jnp.bfloat16 if name == "bfloat16" else None


def _local_dir(location: str) -> Path:
    """A model or tokenizer folder as a local path (a URL is copied once into the local cache)."""
    from autext_jax.hub import fetch_dir

    return fetch_dir(location) if paths.is_url(location) else Path(location)


def prepare_model(cfg: TrainConfig) -> _Prepared:
    """Resolve ``init``/``model``/``tokenizer`` into a model config, a layout and initial values.

    ``--init`` is read once; an encoder-only checkpoint gets heads shaped by the config's head fields.
    """
    from autext_jax.model import abstract_model

    dtype = _compute_dtype(cfg.dtype)
    if cfg.init:
        from autext_jax.convert import load_checkpoint
        from autext_jax.hub import resolve_model_dir

        model_dir = resolve_model_dir(cfg.init)
        heads = {f: getattr(cfg.model, f) for f in HEAD_FIELDS}
        loaded = load_checkpoint(model_dir, allow_fresh=True, dtype=dtype, seed=cfg.seed, head_settings=heads)
        fresh_note = ""
        if loaded.fresh:
            fresh_note = (
                f"{model_dir} has no {', '.join(loaded.fresh)}: initialised fresh from seed {cfg.seed} "
                "(random weights, trained from scratch)"
            )
        layout, values = describe_model(loaded.model)
        tokenizer_dir = _local_dir(cfg.tokenizer) if cfg.tokenizer else model_dir
        return _Prepared(
            cfg.replace(model=loaded.config), loaded.config, tokenizer_dir, values, layout, fresh_note
        )
    if not cfg.tokenizer:
        raise ConfigError(
            "no model to start from: pass --init MODEL_DIR_OR_HUB_ID, or --set tokenizer=DIR to train "
            "the config's model from random weights"
        )
    layout, _ = describe_model(abstract_model(cfg.model, dtype=dtype))
    return _Prepared(cfg, cfg.model, _local_dir(cfg.tokenizer), None, layout)


def _load_tokenizer(directory: Path, model_cfg: ModelConfig, max_length: int):
    from autext_jax.hub import load_tokenizer  # never runs code from the directory

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


@dataclass
class Run:
    """Everything ``setup`` resolved: what the loop, its hooks and the finish work with."""

    cfg: TrainConfig
    prepared: _Prepared
    workdir: str
    checkpointer: Checkpointer
    steps: TrainSteps
    stream: Any
    val_ds: Any
    per_epoch: int
    total: int
    digest: str
    writers: MetricWriters
    lead: bool = field(default_factory=lambda: jax.process_index() == 0)

    @property
    def export_dir(self) -> str:
        return paths.join(self.workdir, "export")

    def meta(self, step: int) -> dict[str, Any]:
        epoch, index = divmod(step, self.per_epoch)
        return {
            "step": step,
            "epoch": epoch,
            "batch_index": index,
            "steps_per_epoch": self.per_epoch,
            "total_steps": self.total,
            "config_digest": self.digest,
        }

    def evaluate(self, step: int, state: dict[str, Any]) -> dict[str, Any]:
        """Validation metrics at ``step``, written to the metric writers and the log."""
        from autext_jax.data import eval_batches
        from autext_jax.evaluate import validation_metrics

        result: dict[str, Any] = {"rows": 0}
        if len(self.val_ds):
            batches = eval_batches(
                self.val_ds,
                global_batch_size=self.cfg.eval.batch_size,
                buckets=self.cfg.data.buckets,
                pad_id=self.prepared.model_cfg.encoder.pad_token_id,
                process_index=jax.process_index(),
                process_count=jax.process_count(),
            )
            outputs = (self.steps.eval_outputs(state["params"], local) for local in batches)
            result = validation_metrics(outputs, self.val_ds, lang_loss_weight=self.cfg.lang_loss_weight)
        self.writers.write({"split": "val", "step": step, **result})
        log.info("step %d validation: %s", step, _short(result))
        return result


def setup(prepared: _Prepared, workdir: str, checkpointer: Checkpointer) -> Run:
    """Config guard, data, mesh and jitted steps (the workdir is already probed and leased)."""
    from autext_jax.data import BatchStream, build_datasets
    from autext_jax.rundir import config_digest, guard_config

    cfg, model_cfg = prepared.cfg, prepared.model_cfg
    lead = jax.process_index() == 0
    resolved = cfg.to_json()
    guard_config(workdir, resolved, bool(checkpointer.all_steps()), cfg.allow_config_change)

    mesh = shd.make_mesh(cfg.mesh)
    shd.check_batch_size(cfg.batch_size, mesh)
    shd.check_batch_size(cfg.eval.batch_size, mesh, what="eval.batch_size")
    tokenizer = _load_tokenizer(prepared.tokenizer_dir, model_cfg, cfg.data.max_length)
    train_ds, val_ds = build_datasets(cfg.data, tokenizer)
    stream = BatchStream(
        train_ds,
        global_batch_size=cfg.batch_size,
        buckets=cfg.data.buckets,
        seed=cfg.seed,
        pad_id=model_cfg.encoder.pad_token_id,
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
    writers = MetricWriters(workdir, enabled=lead, tensorboard=cfg.tensorboard)
    return Run(
        cfg,
        prepared,
        workdir,
        checkpointer,
        steps,
        stream,
        val_ds,
        per_epoch,
        total,
        config_digest(resolved),
        writers,
        lead,
    )


def restore_or_init(run: Run) -> tuple[dict[str, Any], int]:
    """The newest intact checkpoint's state and step, or the initial parameters at step 0."""
    from autext_jax.rundir import check_digest

    cfg, prepared = run.cfg, run.prepared
    restored = run.checkpointer.restore_newest_intact(run.steps.abstract_state())
    prepared_initial, prepared.initial = prepared.initial, None  # dropped either way: the host copy is big
    if restored is not None:
        state, meta = restored
        check_digest(run.workdir, meta.get("config_digest"), run.digest, cfg.allow_config_change)
        if meta.get("steps_per_epoch") != run.per_epoch and not cfg.allow_config_change:
            raise CheckpointMismatchError(
                f"the checkpoint was made with {meta.get('steps_per_epoch')} batches per epoch, the data now "
                f"gives {run.per_epoch}; the data changed: use another --workdir"
            )
        step = int(meta["step"])
        log.info(
            "resumed from step %d (epoch %d, batch %d); the checkpoint's weights replace --init",
            step,
            meta["epoch"],
            meta["batch_index"],
        )
        return state, step
    if prepared_initial is not None:
        if prepared.fresh_note:
            log.warning(prepared.fresh_note)
        params = run.steps.place_params(prepared_initial)
    else:
        params = run.steps.init_params(prepared.model_cfg, seed=cfg.seed, dtype=_compute_dtype(cfg.dtype))
        log.info("model initialised randomly from seed %d (no init given)", cfg.seed)
    return run.steps.init_state(params), 0


def train_loop(run: Run, state: dict[str, Any], step: int, hooks: Sequence[Hook], log_hook: LogHook):
    """Step until ``run.total``; after each step the due hooks run (the log flushed first if needed)."""
    cfg, steps = run.cfg, run.steps
    while step < run.total:
        epoch, index = divmod(step, run.per_epoch)
        for local in run.stream.batches(epoch, start=index):
            key = steps.dropout_key(cfg.seed, step)
            state, metrics = steps.train_step(state, steps.global_batch(local), key)
            step += 1
            last = step == run.total
            log_hook.record(metrics, int(local["input_ids"].shape[1]))
            due = [h for h in hooks if h.due(step, last)]
            if any(h.needs_finite for h in due):
                log_hook.flush(step)
            for hook in due:
                hook.run(step, state)
            for hook in hooks:
                hook.after_step(step)
            log_hook.progress.update(1)
            if last:
                break
    return state, step


def finish(run: Run, state: dict[str, Any], step: int) -> dict[str, Any]:
    """Final validation, the tuned threshold, and the export (every process takes part)."""
    from autext_jax.convert import export_model
    from autext_jax.steps import host_params, merge_model

    run.checkpointer.wait()
    final = run.evaluate(step, state)
    model_cfg = run.prepared.model_cfg
    threshold = final.get("best_threshold")
    if threshold is None:
        log.warning("no threshold tuned (validation lacks one class): keeping %s", model_cfg.threshold)
        threshold = model_cfg.threshold
    values = host_params(state["params"])  # a collective: every process takes part
    if run.lead:
        model = merge_model(run.steps.layout, values, train=False)
        export_model(
            model,
            model_cfg.replace(threshold=threshold),
            run.export_dir,
            tokenizer_dir=run.prepared.tokenizer_dir,
        )
        log.info("exported to %s (threshold %.4f)", run.export_dir, threshold)
    return {"step": step, "export": run.export_dir, "validation": final, "complete": True}


def run(cfg: TrainConfig, workdir: str | Path) -> dict[str, Any]:
    """Train (or resume) in ``workdir``; returns the final validation metrics and the export path."""
    from autext_jax.rundir import claim, probe

    workdir = str(workdir)
    probe(workdir)
    checkpointer = Checkpointer(paths.join(workdir, "checkpoints"), cfg.checkpoint)
    lease = None
    try:
        lease = claim(workdir)
        # From here on a SIGTERM/Ctrl-C (even one during compilation) is acted on at the next stop check.
        with StopSignals() as signals:
            result = _run(prepare_model(cfg), workdir, checkpointer, signals)
        checkpointer.wait()
        return result
    except BaseException:
        # An in-flight save still completes (it holds good parameters); its own failure, if any, must
        # not replace the error that is already on its way to the user.
        checkpointer.wait_quietly()
        raise
    finally:
        checkpointer.close()
        if lease is not None:
            lease.release()


def _run(
    prepared: _Prepared, workdir: str, checkpointer: Checkpointer, signals: StopSignals
) -> dict[str, Any]:
    from autext_jax.rundir import write_config

    run_ = setup(prepared, workdir, checkpointer)
    cfg = run_.cfg
    try:
        state, step = restore_or_init(run_)
        if run_.lead:  # only once the checkpoint (if any) was accepted for this config
            write_config(workdir, cfg.to_json())
        run_.writers.start_at(step)
        if step >= run_.total and paths.isfile(paths.join(run_.export_dir, "config.json")):
            log.info("already complete (%d steps); export in %s", step, run_.export_dir)
            return {"step": step, "export": run_.export_dir, "complete": True}
        progress = _progress(run_.total, step, enabled=run_.lead and cfg.progress)
        log_hook = LogHook(
            cfg.log_every,
            run_.writers,
            progress,
            lr=lambda at: float(current_lr(cfg.optimizer, run_.total, at)),
            batch_size=cfg.batch_size,
            encoder=prepared.model_cfg.encoder,
            per_epoch=run_.per_epoch,
        )
        save_hook = SaveHook(cfg.checkpoint.every_steps, checkpointer, run_.meta)
        hooks = [
            log_hook,
            save_hook,
            EvalHook(cfg.eval.every_steps, run_.evaluate),
            StopHook(cfg.checkpoint.stop_check_every, signals, log_hook, save_hook),
        ]
        state, step = train_loop(run_, state, step, hooks, log_hook)
        progress.close()
        return finish(run_, state, step)
    finally:
        run_.writers.close()


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
        help="persistent XLA compilation cache (local or gs://); a rerun or resume skips compiling",
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
    if not args.debug:
        # Orbax reports a failed save through absl and asyncio, with tracebacks, from several threads;
        # CheckpointError says it in one line (``--debug`` shows them all).
        for name in ("absl", "asyncio"):
            logging.getLogger(name).setLevel(logging.CRITICAL)
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
    # Other processes of a multi-process run keep to warnings: a pod's log is not repeated per host.
    cli.setup_logging("train", timestamps=True, primary=jax.process_index() == 0)
    if args.compile_cache:
        engine.enable_compile_cache(args.compile_cache)
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
