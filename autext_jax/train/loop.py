"""The training run: ``setup`` → ``restore_or_init`` → ``train_loop`` (with hooks) → ``finish``.

``workdir`` is a local folder or a URL (``gs://BUCKET/RUN``). Running the same command again resumes
from the newest intact checkpoint in ``workdir/checkpoints``; the result is bit-identical (on CPU) to a
run that was never interrupted. ``setup`` probes and leases the workdir and builds data, mesh and
jitted steps; the log / save / eval / stop hooks (``hooks.py``) own their frequencies; ``finish`` runs
the final validation, tunes the threshold and exports the model. The CLI is ``train/__main__.py``.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jax
from tqdm import tqdm

from autext_jax import paths
from autext_jax.config import ConfigError
from autext_jax.convert import export_model
from autext_jax.data.dataset import build_datasets
from autext_jax.data.stream import BatchStream, eval_batches
from autext_jax.model import compute_dtype
from autext_jax.train import calibrate
from autext_jax.train import sharding as shd
from autext_jax.train.checkpointing import Checkpointer, CheckpointMismatchError
from autext_jax.train.config import TrainConfig
from autext_jax.train.hooks import EvalHook, Hook, LogHook, SaveHook, StopHook
from autext_jax.train.metric_writers import MetricWriters
from autext_jax.train.optim import build_optimizer, current_lr
from autext_jax.train.preemption import StopSignals
from autext_jax.train.prepare import Prepared, load_training_tokenizer, prepare_model
from autext_jax.train.rundir import check_digest, claim, config_digest, guard_config, probe, write_config
from autext_jax.train.steps import TrainSteps, host_params, merge_model
from autext_jax.train.validation import validation_metrics

__all__ = ["Run", "finish", "restore_or_init", "run", "setup", "train_loop"]

log = logging.getLogger("autext_jax.train")


@dataclass
class Run:
    """Everything ``setup`` resolved: what the loop, its hooks and the finish work with."""

    cfg: TrainConfig
    prepared: Prepared
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


def setup(prepared: Prepared, workdir: str, checkpointer: Checkpointer) -> Run:
    """Config guard, data, mesh and jitted steps (the workdir is already probed and leased)."""

    cfg, model_cfg = prepared.cfg, prepared.model_cfg
    lead = jax.process_index() == 0
    resolved = cfg.to_json()
    guard_config(workdir, resolved, bool(checkpointer.all_steps()), cfg.allow_config_change)

    mesh = shd.make_mesh(cfg.mesh)
    shd.check_batch_size(cfg.batch_size, mesh)
    shd.check_batch_size(cfg.eval.batch_size, mesh, what="eval.batch_size")
    tokenizer = load_training_tokenizer(prepared.tokenizer_dir, model_cfg, cfg.data.max_length)
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
        params = run.steps.init_params(prepared.model_cfg, seed=cfg.seed, dtype=compute_dtype(cfg.dtype))
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

    run.checkpointer.wait()
    final = run.evaluate(step, state)
    model_cfg = run.prepared.model_cfg
    threshold = final.get("best_threshold")
    if threshold is None:
        log.warning("no threshold tuned (validation lacks one class): keeping %s", model_cfg.threshold)
        threshold = model_cfg.threshold
    values = host_params(state["params"])  # a collective: every process takes part
    calibration = calibrate.fit_on_validation(run, state)  # a collective too
    if run.lead:
        model = merge_model(run.steps.layout, values, train=False)
        export_model(
            model,
            model_cfg.replace(threshold=threshold),
            run.export_dir,
            tokenizer_dir=run.prepared.tokenizer_dir,
        )
        calibrate.save(calibration, run.export_dir)
        log.info("exported to %s (threshold %.4f)", run.export_dir, threshold)
    return {"step": step, "export": run.export_dir, "validation": final, "complete": True}


def run(cfg: TrainConfig, workdir: str | Path) -> dict[str, Any]:
    """Train (or resume) in ``workdir``; returns the final validation metrics and the export path."""

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
    prepared: Prepared, workdir: str, checkpointer: Checkpointer, signals: StopSignals
) -> dict[str, Any]:

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
    return tqdm(
        total=total, initial=initial, disable=not enabled, desc="train", unit="step", dynamic_ncols=True
    )

