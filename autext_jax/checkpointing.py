"""Orbax checkpoints of the training state, and the guard against resuming another config's run.

A checkpoint holds two items: ``state`` (params, optimizer state, step, RNG key data; restored
into an abstract target so arrays land directly in their shardings) and ``meta`` (JSON: data
position and the run's config digest). Orbax writes each step to a temporary directory and renames
it when complete, so a process killed mid-save leaves the previous checkpoint intact.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orbax.checkpoint as ocp

from autext_jax.errors import AutextError

if TYPE_CHECKING:
    from autext_jax.config import ModelConfig
    from autext_jax.steps import ModelLayout

log = logging.getLogger(__name__)

CONFIG_FILE = "train_config.json"
# Fields that may change between a run and its resumption without changing the trajectory.
RESUMABLE_FIELDS = (
    "allow_config_change",
    "checkpoint.every_steps",
    "checkpoint.keep",
    "checkpoint.async_save",
    "eval.every_steps",
    "eval.batch_size",
    "log_every",
    "progress",
)


class CheckpointMismatchError(AutextError, ValueError):
    """The workdir belongs to a run with a different configuration (or different data)."""


@dataclass(frozen=True)
class CheckpointConfig:
    """Save every ``every_steps`` batches and at the end; keep the newest ``keep``."""

    every_steps: int = 500
    keep: int = 3
    async_save: bool = True

    def __post_init__(self) -> None:
        if self.every_steps < 1:
            raise ValueError(f"checkpoint.every_steps must be >= 1, got {self.every_steps}")
        if self.keep < 1:
            raise ValueError(f"checkpoint.keep must be >= 1, got {self.keep}")


class Checkpointer:
    """Thin wrapper over ``ocp.CheckpointManager`` with the two items above."""

    def __init__(self, directory: str | Path, cfg: CheckpointConfig):
        self.directory = Path(directory).absolute()
        options = ocp.CheckpointManagerOptions(
            max_to_keep=cfg.keep,
            enable_async_checkpointing=cfg.async_save,
            create=True,
            cleanup_tmp_directories=True,
        )
        self.manager = ocp.CheckpointManager(self.directory, options=options, item_names=("state", "meta"))

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def all_steps(self) -> list[int]:
        return sorted(self.manager.all_steps())

    def save(self, step: int, state: Any, meta: dict[str, Any]) -> None:
        self.manager.save(
            step,
            args=ocp.args.Composite(state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)),
            force=True,
        )

    def restore(self, step: int, abstract_state: Any) -> tuple[Any, dict[str, Any]]:
        restored = self.manager.restore(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardRestore(abstract_state), meta=ocp.args.JsonRestore()
            ),
        )
        return restored["state"], dict(restored["meta"])

    def wait(self) -> None:
        """Block until an asynchronous save has been committed."""
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.close()


def config_digest(resolved: dict[str, Any]) -> str:
    """A short hash of the trajectory-defining part of a resolved config."""
    kept = _without(resolved, RESUMABLE_FIELDS)
    return hashlib.sha256(json.dumps(kept, sort_keys=True).encode()).hexdigest()[:16]


def _without(tree: dict[str, Any], dotted: tuple[str, ...]) -> dict[str, Any]:
    out = json.loads(json.dumps(tree))
    for key in dotted:
        node = out
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.get(part, {})
        node.pop(leaf, None)
    return out


def _flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(tree, dict):
        out: dict[str, Any] = {}
        for key, value in tree.items():
            out.update(_flatten(value, f"{prefix}{key}."))
        return out
    return {prefix[:-1]: tree}


def config_differences(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """``key: old → new`` for every trajectory-defining field that differs."""
    a, b = _flatten(_without(old, RESUMABLE_FIELDS)), _flatten(_without(new, RESUMABLE_FIELDS))
    return [f"{k}: {a.get(k)!r} → {b.get(k)!r}" for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]


def guard_workdir(workdir: Path, resolved: dict[str, Any], has_checkpoint: bool, allow_change: bool) -> None:
    """Refuse to resume a checkpoint written under another configuration unless explicitly allowed."""
    path = workdir / CONFIG_FILE
    if not has_checkpoint or not path.is_file():
        return
    try:
        old = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise CheckpointMismatchError(f"{path} is not valid JSON ({err}); move the workdir away") from None
    diffs = config_differences(old, json.loads(json.dumps(resolved)))
    if not diffs:
        return
    shown = "; ".join(diffs[:6]) + (f"; and {len(diffs) - 6} more" if len(diffs) > 6 else "")
    if allow_change:
        log.warning("resuming %s under a changed config (allow_config_change=true): %s", workdir, shown)
        return
    raise CheckpointMismatchError(
        f"{workdir} holds a checkpoint of a different config ({shown}); use another --workdir, or "
        "pass --set allow_config_change=true to resume it anyway"
    )


def write_config(workdir: Path, resolved: dict[str, Any]) -> Path:
    path = workdir / CONFIG_FILE
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(resolved, indent=2, sort_keys=True) + "\n")
    tmp.replace(path)
    return path


def export_model(
    layout: ModelLayout,
    params: dict[str, Any],
    model_cfg: ModelConfig,
    tokenizer_dir: Path,
    out: Path,
    lead: bool,
) -> Path:
    """Write the HF-layout export (``convert.export_checkpoint``) atomically: a temporary directory, renamed.

    Every process must call this (gathering sharded parameters is a collective); only ``lead`` writes.
    """
    from autext_jax.convert import export_checkpoint
    from autext_jax.steps import host_params, merge_model

    values = host_params(params)  # a collective: every process takes part
    if lead:
        tmp = out.with_name(out.name + ".partial")
        shutil.rmtree(tmp, ignore_errors=True)
        model = merge_model(layout, values, train=False)
        export_checkpoint(model, model_cfg, tmp, tokenizer_dir=tokenizer_dir)
        shutil.rmtree(out, ignore_errors=True)
        tmp.rename(out)
        log.info("exported to %s (threshold %.4f)", out, model_cfg.threshold)
    return out
