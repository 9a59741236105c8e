"""``--init``: our HF-layout directory, an encoder-only HF checkpoint (fresh heads, logged), a Hub id."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import jax
import numpy as np
import pytest

from autext_jax import errors
from autext_jax.config import ConfigError
from autext_jax.train import __main__ as train_cli
from autext_jax.train import prepare
from autext_jax.train.config import load_config_file

CONFIGS = Path(__file__).resolve().parent.parent / "configs"


class _Records(logging.Handler):
    def __init__(self):
        super().__init__(logging.INFO)
        self.messages: list[str] = []

    def emit(self, record):
        self.messages.append(record.getMessage())


@pytest.fixture
def train_log():
    handler = _Records()
    logger = logging.getLogger("autext_jax.train")
    logger.addHandler(handler)
    yield handler.messages
    logger.removeHandler(handler)


def _encoder_only_dir(model_dir: Path, out: Path) -> Path:
    """What tools/e5/import_e5.py writes: XLMRobertaModel key names (no prefix), an HF XLM-R config.json."""
    from safetensors.numpy import load_file, save_file

    from autext_jax.config import ModelConfig

    out.mkdir()
    tensors = load_file(str(model_dir / "model.safetensors"))
    encoder = {k.removeprefix("transformer."): v for k, v in tensors.items() if k.startswith("transformer.")}
    save_file(encoder, str(out / "model.safetensors"))
    hf = ModelConfig.load(model_dir).encoder.to_hf_config()
    (out / "config.json").write_text(json.dumps(hf))
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        if (model_dir / name).is_file():
            shutil.copy(model_dir / name, out / name)
    return out


def _tiny(**changes):
    return load_config_file(CONFIGS / "tiny.py").replace(**changes)


def test_init_from_our_layout_keeps_every_weight(tiny_model_dir, train_log):
    from autext_jax.convert import load_checkpoint
    from autext_jax.train.steps import describe_model

    prepared = prepare.prepare_model(_tiny(init=str(tiny_model_dir)))
    assert prepared.tokenizer_dir == tiny_model_dir
    assert prepared.fresh_note == "" and not any("initialised fresh" in m for m in train_log)
    _, expected = describe_model(load_checkpoint(tiny_model_dir).model)
    assert prepared.initial.keys() == expected.keys()
    for name, value in expected.items():
        np.testing.assert_array_equal(np.asarray(prepared.initial[name]), np.asarray(value))
    # The published-layout config.json (auto_map → remote code) must not stop the tokenizer loading.
    tokenizer = prepare.load_training_tokenizer(prepared.tokenizer_dir, prepared.model_cfg, 16)
    assert tokenizer("the cat")["input_ids"][0] == 0
    with pytest.raises(ConfigError, match="exceeds the model's"):
        prepare.load_training_tokenizer(prepared.tokenizer_dir, prepared.model_cfg, 600)
    # The resolved config records the checkpoint's model, not the config file's.
    assert prepared.cfg.model == prepared.model_cfg == load_checkpoint(tiny_model_dir).config


def test_init_from_encoder_only_checkpoint_starts_fresh_heads(
    tiny_model_dir, tmp_path, train_log, monkeypatch
):
    from safetensors.numpy import load_file

    from autext_jax import convert

    enc_dir = _encoder_only_dir(tiny_model_dir, tmp_path / "encoder_only")
    cfg = _tiny(init=str(enc_dir))
    cfg = cfg.replace(model=cfg.model.replace(pooling="mean", hidden_nodes=5))
    loads = []
    real_load = convert.load_checkpoint
    monkeypatch.setattr(prepare, "load_checkpoint", lambda *a, **k: loads.append(a) or real_load(*a, **k))
    prepared = prepare.prepare_model(cfg)
    assert len(loads) == 1  # the checkpoint is read once, heads shaped by the config from the start
    note = prepared.fresh_note  # logged as a warning when the run starts (not when it resumes)
    assert "bot_head" in note and "lang_head" in note and "initialised fresh" in note
    assert prepared.model_cfg.pooling == "mean" and prepared.model_cfg.hidden_nodes == 5
    assert prepared.initial["bot_head/hidden/kernel"].shape == (32, 5)
    assert len(prepare.load_training_tokenizer(prepared.tokenizer_dir, prepared.model_cfg, 16)) <= 259
    word = load_file(str(enc_dir / "model.safetensors"))["embeddings.word_embeddings.weight"]
    np.testing.assert_array_equal(np.asarray(prepared.initial["encoder/embeddings/word/embedding"]), word)
    # The loaded values are placed into the mesh's shardings unchanged.
    from autext_jax.train import sharding as shd
    from autext_jax.train.optim import OptimizerConfig, build_optimizer
    from autext_jax.train.steps import TrainSteps

    mesh = shd.make_mesh(shd.MeshConfig(), jax.devices()[:1])
    tx = build_optimizer(OptimizerConfig(), prepared.layout.names, 2, 10)
    placed = TrainSteps(prepared.layout, tx, mesh).place_params(prepared.initial)
    np.testing.assert_array_equal(np.asarray(placed["encoder/embeddings/word/embedding"]), word)


def test_init_with_an_unreachable_hub_id_is_one_clear_line(tmp_path, capsys):
    code = train_cli.main(
        ["--config", str(CONFIGS / "tiny.py"), "--workdir", str(tmp_path), "--init", "nobody/no-such-model"]
    )
    err = capsys.readouterr().err.strip()
    assert code == errors.EXIT_USAGE
    assert err.startswith("python -m autext_jax.train: error: ")
    assert "nobody/no-such-model" in err and "\n" not in err
