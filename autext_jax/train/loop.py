"""The training run: ``train`` = ``setup`` → ``restore_or_init`` → ``train_loop`` (hooks) → ``finish``.

``workdir`` is a local folder or a URL (``gs://BUCKET/RUN``). Running the same command again resumes
from the newest intact checkpoint in ``workdir/checkpoints``; the result is bit-identical (on CPU) to a
run that was never interrupted. ``setup`` probes and leases the workdir and builds data, mesh and
jitted steps into a ``Job``; the log / save / eval / stop hooks (``hooks.py``) own their frequencies;
``finish`` runs the final validation, tunes the threshold and exports the model. Process 0 keeps
``run_status.json`` (``run_status.py``) current throughout. The CLI is ``train/__main__.py``.
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
from autext_jax.signals import StopFlag
from autext_jax.train import calibrate
from autext_jax.train import sharding as shd
from autext_jax.train.checkpointing import Checkpointer, CheckpointMismatchError
from autext_jax.train.config import TrainConfig
from autext_jax.train.hooks import EvalHook, Hook, LogHook, LogSettings, SaveHook, StopHook
from autext_jax.train.metric_writers import MetricWriters
from autext_jax.train.optim import build_optimizer, current_lr
from autext_jax.train.preemption import StopAgreement, training_signals
from autext_jax.train.prepare import Prepared, load_training_tokenizer, prepare_model
from autext_jax.train.run_status import RunStatus, source_commit
from autext_jax.train.rundir import check_digest, claim, config_digest, guard_config, probe, write_config
from autext_jax.train.steps import TrainSteps, host_params, merge_model
from autext_jax.train.validation import validation_metrics

__all__ = ["Job", "finish", "restore_or_init", "setup", "train", "train_loop"]

log = logging.getLogger("autext_jax.train")


@dataclass
class Job:
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
    commit: str | None = None

    @property
    def batching(self) -> dict[str, Any]:
        return batching(self.cfg, self.prepared.model_cfg)

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
            "commit": self.commit,
        }

    def evaluate(self, step: int, state: dict[str, Any]) -> dict[str, Any]:
        """Validation metrics at ``step``, written to the metric writers and the log."""

        result: dict[str, Any] = {"rows": 0}
        if len(self.val_ds):
            batches = eval_batches(
                self.val_ds,
                global_batch_size=self.cfg.eval.batch_size,
                **self.batching,
            )
            outputs = (self.steps.eval_outputs(state["params"], local) for local in batches)
            result = validation_metrics(outputs, self.val_ds, lang_loss_weight=self.cfg.lang_loss_weight)
        self.writers.write({"split": "val", "step": step, **result})
        log.info("step %d validation: %s", step, _short(result))
        return result


def batching(cfg: TrainConfig, model_cfg: Any) -> dict[str, Any]:
    """How batches are cut and shared out among processes: the same for training and validation."""
    return {
        "buckets": cfg.data.buckets,
        "pad_id": model_cfg.encoder.pad_token_id,
        "process_index": jax.process_index(),
        "process_count": jax.process_count(),
    }


def setup(prepared: Prepared, workdir: str, checkpointer: Checkpointer, commit: str | None = None) -> Job:
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
        train_ds, global_batch_size=cfg.batch_size, seed=cfg.seed, **batching(cfg, model_cfg)
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
    return Job(
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
        commit,
    )


def restore_or_init(job: Job) -> tuple[dict[str, Any], int]:
    """The newest intact checkpoint's state and step, or the initial parameters at step 0."""

    cfg, prepared = job.cfg, job.prepared
    restored = job.checkpointer.restore_newest_intact(job.steps.abstract_state())
    prepared_initial, prepared.initial = prepared.initial, None  # dropped either way: the host copy is big
    if restored is not None:
        state, meta = restored
        check_digest(job.workdir, meta.get("config_digest"), job.digest, cfg.allow_config_change)
        if meta.get("steps_per_epoch") != job.per_epoch and not cfg.allow_config_change:
            raise CheckpointMismatchError(
                f"the checkpoint was made with {meta.get('steps_per_epoch')} batches per epoch, the data now "
                f"gives {job.per_epoch}; the data changed: use another --workdir"
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
        params = job.steps.place_params(prepared_initial)
    else:
        params = job.steps.init_params(prepared.model_cfg, seed=cfg.seed, dtype=compute_dtype(cfg.dtype))
        log.info("model initialised randomly from seed %d (no init given)", cfg.seed)
    return job.steps.init_state(params), 0


def train_loop(job: Job, state: dict[str, Any], step: int, hooks: Sequence[Hook], log_hook: LogHook):
    """Step until ``job.total``; after each step the due hooks act (the log flushed first if needed)."""
    cfg, steps = job.cfg, job.steps
    while step < job.total:
        epoch, index = divmod(step, job.per_epoch)
        for local in job.stream.batches(epoch, start=index):
            key = steps.dropout_key(cfg.seed, step)
            state, metrics = steps.train_step(state, steps.global_batch(local), key)
            step += 1
            last = step == job.total
            log_hook.record(metrics, int(local["input_ids"].shape[1]))
            due = [h for h in hooks if h.due(step, last)]
            if any(h.needs_finite for h in due):
                log_hook.flush(step)
            for hook in due:
                hook.act(step, state)
            for hook in hooks:
                hook.after_step(step)
            log_hook.progress.update(1)
            if last:
                break
    return state, step


def finish(job: Job, state: dict[str, Any], step: int) -> dict[str, Any]:
    """Final validation, the tuned threshold, and the export (every process takes part)."""

    job.checkpointer.wait()
    final = job.evaluate(step, state)
    model_cfg = job.prepared.model_cfg
    threshold = final.get("best_threshold")
    if threshold is None:
        log.warning("no threshold tuned (validation lacks one class): keeping %s", model_cfg.threshold)
        threshold = model_cfg.threshold
    values = host_params(state["params"])  # a collective: every process takes part
    calibration = calibrate.fit_on_validation(job, state)  # a collective too
    if job.lead:
        model = merge_model(job.steps.layout, values, train=False)
        export_model(
            model,
            model_cfg.replace(threshold=threshold),
            job.export_dir,
            tokenizer_dir=job.prepared.tokenizer_dir,
        )
        calibrate.save(calibration, job.export_dir)
        log.info("exported to %s (threshold %.4f)", job.export_dir, threshold)
    return {"step": step, "export": job.export_dir, "validation": final, "complete": True}


def train(cfg: TrainConfig, workdir: str | Path) -> dict[str, Any]:
    """Train (or resume) in ``workdir``; returns the final validation metrics and the export path.

    ``run_status.json`` says ``running`` from the start and how the run ended, whatever ends it.
    """

    workdir = str(workdir)
    probe(workdir)
    checkpointer = Checkpointer(paths.join(workdir, "checkpoints"), cfg.checkpoint)
    status = RunStatus(workdir, enabled=jax.process_index() == 0, commit=source_commit())
    lease = None
    try:
        lease = claim(workdir, on_beat=status.heartbeat)
        checkpointer.sweep_uncommitted()
        status.running(checkpointer.latest_step())
        # From here on a SIGTERM/Ctrl-C (even one during compilation) is acted on at the next stop check.
        with training_signals(lease.note_stopping if lease is not None else None) as signals:
            result = _train_in(prepare_model(cfg), workdir, checkpointer, signals, status)
        checkpointer.wait()
        status.ended(None, step=result["step"], export=result["export"])
        return result
    except BaseException as err:
        # An in-flight save still completes (it holds good parameters); its own failure, if any, must
        # not replace the error that is already on its way to the user.
        checkpointer.wait_quietly()
        checkpointer.close()  # joins a save a second Ctrl-C cut off inside save(): the status must count it
        if lease is not None:  # a run refused the workdir's lease must not overwrite its owner's status
            status.ended(err, step=_saved_step(checkpointer))
        raise
    finally:
        checkpointer.close()
        if lease is not None:
            lease.release()


def _train_in(
    prepared: Prepared, workdir: str, checkpointer: Checkpointer, signals: StopFlag, status: RunStatus
) -> dict[str, Any]:
    job = setup(prepared, workdir, checkpointer, commit=status.commit)
    cfg = job.cfg
    try:
        state, step = restore_or_init(job)
        if job.lead:  # only once the checkpoint (if any) was accepted for this config
            write_config(workdir, cfg.to_json())
        job.writers.start_at(step)
        if step >= job.total and paths.isfile(paths.join(job.export_dir, "config.json")):
            log.info("already complete (%d steps); export in %s", step, job.export_dir)
            return {"step": step, "export": job.export_dir, "complete": True}
        progress = _progress(job.total, step, enabled=job.lead and cfg.progress)
        log_hook = LogHook(
            cfg.log_every,
            job.writers,
            progress,
            LogSettings(
                lr=lambda at: float(current_lr(cfg.optimizer, job.total, at)),
                batch_size=cfg.batch_size,
                encoder=prepared.model_cfg.encoder,
                per_epoch=job.per_epoch,
            ),
        )
        save_hook = SaveHook(cfg.checkpoint.every_steps, checkpointer, job.meta, on_saved=status.running)
        hooks = [
            log_hook,
            save_hook,
            EvalHook(cfg.eval.every_steps, job.evaluate),
            StopHook(
                StopAgreement.for_this_run(cfg.checkpoint.stop_check_every),
                signals,
                flush=log_hook.flush,
                save=save_hook.save_now,
            ),
        ]
        state, step = train_loop(job, state, step, hooks, log_hook)
        progress.close()
        return finish(job, state, step)
    finally:
        job.writers.close()


def _saved_step(checkpointer: Checkpointer) -> int | None:
    try:
        return checkpointer.newest_on_storage()
    except Exception:  # noqa: BLE001 - the status is written on the way out of any failure
        return None


def _short(result: dict[str, Any]) -> str:
    keys = ("loss", "macro_f1", "best_threshold", "best_macro_f1")
    return json.dumps({k: result[k] for k in keys if k in result})


def _progress(total: int, initial: int, enabled: bool):
    return tqdm(
        total=total, initial=initial, disable=not enabled, desc="train", unit="step", dynamic_ncols=True
    )
