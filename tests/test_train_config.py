"""Config files, typed ``--set`` overrides, the workdir guard, and the multi-task loss (no compilation)."""

from __future__ import annotations

import json
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pytest

from autext_jax.config import ConfigError
from autext_jax.train.checkpointing import CheckpointMismatchError
from autext_jax.train.config import TrainConfig, apply_overrides, load_config_file
from autext_jax.train.rundir import config_differences, guard_config, write_config
from autext_jax.train.steps import bce_with_logits, multitask_loss

CONFIGS = Path(__file__).resolve().parent.parent / "configs"


@pytest.mark.parametrize("name", ["tiny", "mini", "upb_mtl"])
def test_shipped_configs_load(name):
    cfg = load_config_file(CONFIGS / f"{name}.py")
    assert isinstance(cfg, TrainConfig)
    assert cfg.data.paths and cfg.data.paths[0].endswith("autextification/subtask_1")
    assert json.loads(json.dumps(cfg.to_json())) == cfg.to_json()


def test_mini_recipe_is_the_e5_fine_tuning_recipe():
    cfg = load_config_file(CONFIGS / "mini.py")
    assert (cfg.data.max_length, cfg.batch_size, cfg.epochs, cfg.max_steps) == (128, 32, 1, 1000)
    assert cfg.optimizer.learning_rate == 1e-4 and cfg.optimizer.warmup_fraction == 0.06
    assert cfg.init is None  # the e5 import is given with --init
    upb = load_config_file(CONFIGS / "upb_mtl.py")
    assert upb.dtype == "bfloat16" and upb.init == "FacebookAI/xlm-roberta-base"


def test_overrides_parse_by_field_type():
    cfg = load_config_file(CONFIGS / "tiny.py")
    cfg = apply_overrides(
        cfg,
        [
            "optimizer.learning_rate=3e-5",
            "batch_size=16",
            "progress=false",
            "max_steps=7",
            "init=some/model",
            "data.languages=en",
            'data.paths=["a.tsv", "b.tsv"]',
            "model.encoder.num_layers=3",
            "optimizer.max_grad_norm=none",
            "optimizer.warmup_steps=null",
        ],
    )
    assert cfg.optimizer.learning_rate == 3e-5 and cfg.batch_size == 16 and cfg.progress is False
    assert cfg.max_steps == 7 and cfg.init == "some/model"
    assert cfg.data.languages == ("en",) and cfg.data.paths == ("a.tsv", "b.tsv")
    assert cfg.model.encoder.num_layers == 3
    assert cfg.optimizer.max_grad_norm is None and cfg.optimizer.warmup_steps is None


@pytest.mark.parametrize(
    "item, message",
    [
        ("batch_size=1.5", "expected an integer"),
        ("progress=maybe", "expected a boolean"),
        ("optimizer.learning_rate=-1", "learning_rate must be > 0"),
        ("data.val_fraction=1.5", "val_fraction"),
        ("model.pooling=max", "pooling"),
        ("model.encoder.num_heads=5", "not divisible"),
        ("eval.nope=1", "unknown field 'nope'"),
        ("batch_size.x=1", "below a plain value"),
        ("=3", "expected key=value"),
    ],
)
def test_bad_overrides_name_the_field(item, message):
    with pytest.raises(ConfigError, match=message):
        apply_overrides(load_config_file(CONFIGS / "tiny.py"), [item])


def test_config_file_errors(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config_file(tmp_path / "missing.py")
    (tmp_path / "none.py").write_text("x = 1\n")
    with pytest.raises(ConfigError, match="no get_config"):
        load_config_file(tmp_path / "none.py")
    (tmp_path / "wrong.py").write_text("def get_config():\n    return {}\n")
    with pytest.raises(ConfigError, match="expected TrainConfig"):
        load_config_file(tmp_path / "wrong.py")


def test_workdir_guard(tmp_path):
    old = load_config_file(CONFIGS / "tiny.py").to_json()
    write_config(str(tmp_path), old)
    new = apply_overrides(load_config_file(CONFIGS / "tiny.py"), ["seed=1", "checkpoint.every_steps=3"])
    assert config_differences(old, new.to_json()) == ["seed: 0 → 1"]  # checkpoint cadence is resumable
    with pytest.raises(CheckpointMismatchError, match="seed: 0 → 1.*allow_config_change=true"):
        guard_config(str(tmp_path), new.to_json(), has_checkpoint=True, allow_change=False)
    guard_config(str(tmp_path), new.to_json(), has_checkpoint=True, allow_change=True)
    guard_config(str(tmp_path), new.to_json(), has_checkpoint=False, allow_change=False)  # nothing to resume


def test_config_modules_do_not_import_orbax():
    import subprocess
    import sys

    code = "import sys, autext_jax.train.config; print('orbax' in ' '.join(sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


def test_loss_is_masked_bce_per_task():
    logits = {"bot": jnp.array([2.0, -1.0, 0.5, 30.0]), "english": jnp.array([0.0, 1.0, -3.0, -40.0])}
    batch = {
        "bot": jnp.array([1.0, 0.0, 1.0, 0.0]),
        "bot_mask": jnp.array([1.0, 1.0, 0.0, 1.0]),
        "english": jnp.array([1.0, 1.0, 0.0, 0.0]),
        "english_mask": jnp.array([1.0, 1.0, 1.0, 0.0]),
    }

    def reference(x, y):  # -[y·log σ(x) + (1-y)·log(1-σ(x))], written stably in float64
        return np.logaddexp(0.0, np.float64(x)) - y * x

    bot = np.mean([reference(2.0, 1), reference(-1.0, 0), reference(30.0, 0)])
    english = np.mean([reference(0.0, 1), reference(1.0, 1), reference(-3.0, 0)])
    total, parts = multitask_loss(logits, batch, lang_loss_weight=0.5)
    assert float(parts["bot_loss"]) == pytest.approx(bot, rel=1e-5)
    assert float(parts["english_loss"]) == pytest.approx(english, rel=1e-5)
    assert float(total) == pytest.approx(bot + 0.5 * english, rel=1e-5)
    # A task without any labelled row contributes 0, not NaN.
    empty = dict(batch, english_mask=jnp.zeros(4))
    _, parts = multitask_loss(logits, empty, 1.0)
    assert float(parts["english_loss"]) == 0.0
    assert np.isfinite(np.asarray(bce_with_logits(jnp.array([-100.0, 100.0]), jnp.array([1.0, 0.0])))).all()


@pytest.mark.parametrize(
    "source, message",
    [
        ("def get_config(:\n", ":1: syntax error"),
        ("from nowhere_at_all import x\n", "failed to run: ModuleNotFoundError"),
    ],
)
def test_a_broken_config_file_is_one_line(tmp_path, source, message):
    path = tmp_path / "broken.py"
    path.write_text(source)
    with pytest.raises(ConfigError, match=message):
        load_config_file(path)
