"""Config schema: the published config.json, encoder resolution order, validation."""

from __future__ import annotations

import json

import pytest
from conftest import tiny_encoder_config, tiny_model_config

from autext_jax.config import (
    KNOWN_ENCODERS,
    PUBLISHED_CONFIG_JSON,
    ConfigError,
    EncoderConfig,
    ModelConfig,
)

PUBLISHED = PUBLISHED_CONFIG_JSON


def test_published_config_reads_as_xlm_roberta_base() -> None:
    cfg = ModelConfig.from_published_json(PUBLISHED)
    assert cfg.encoder == KNOWN_ENCODERS["xlm-roberta-base"] == EncoderConfig()
    assert (cfg.hidden_nodes, cfg.threshold, cfg.pooling, cfg.head_activation) == (64, 0.9919, "cls", "relu")
    enc = cfg.encoder
    assert (enc.hidden_size, enc.num_layers, enc.num_heads, enc.intermediate_size) == (768, 12, 12, 3072)
    assert (enc.vocab_size, enc.max_position_embeddings, enc.pad_token_id, enc.layer_norm_eps) == (
        250_002,
        514,
        1,
        1e-5,
    )
    assert enc.max_tokens == 512 and enc.head_dim == 64


def test_written_config_keeps_the_published_fields_and_round_trips(tmp_path) -> None:
    cfg = tiny_model_config(pooling="mean", head_activation="gelu", threshold=0.25)
    cfg.save(tmp_path)
    data = json.loads((tmp_path / "config.json").read_text())
    for key in ("architectures", "auto_map", "hidden_nodes", "model_type", "threshold", "transformer_name"):
        assert key in data
    assert data["auto_map"] == PUBLISHED["auto_map"]
    assert data["encoder"]["num_hidden_layers"] == 2
    assert ModelConfig.load(tmp_path) == cfg


def test_encoder_resolution_order(tmp_path) -> None:
    local = tmp_path / "my-encoder"
    local.mkdir()
    (local / "config.json").write_text(json.dumps(tiny_encoder_config(num_layers=3).to_hf_config()))
    # 1. the "encoder" object wins over everything
    data = {**PUBLISHED, "transformer_name": "my-encoder", "encoder": tiny_encoder_config().to_hf_config()}
    assert ModelConfig.from_published_json(data, base_dir=tmp_path).encoder.num_layers == 2
    # 2. transformer_name as a local directory (relative to the model dir, or absolute)
    del data["encoder"]
    assert ModelConfig.from_published_json(data, base_dir=tmp_path).encoder.num_layers == 3
    data["transformer_name"] = str(local)
    assert ModelConfig.from_published_json(data).encoder.num_layers == 3
    # 3. the built-in table
    data["transformer_name"] = "FacebookAI/xlm-roberta-large"
    assert ModelConfig.from_published_json(data).encoder.hidden_size == 1024
    # otherwise: a clear error
    data["transformer_name"] = "someone/unknown-encoder"
    with pytest.raises(ConfigError, match="cannot tell the encoder's shape.*add an 'encoder' object"):
        ModelConfig.from_published_json(data)


def test_hf_config_round_trip() -> None:
    enc = tiny_encoder_config(use_pooler=False, hidden_act="gelu_new")
    hf = enc.to_hf_config()
    assert hf["model_type"] == "xlm-roberta" and hf["num_attention_heads"] == 4 and hf["use_pooler"] is False
    assert EncoderConfig.from_hf_config(hf) == enc
    with pytest.raises(ConfigError, match="lacks.*num_attention_heads"):
        EncoderConfig.from_hf_config({"hidden_size": 8, "num_hidden_layers": 1})


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"pooling": "max"}, "pooling 'max'"),
        ({"head_activation": "swish"}, "head_activation 'swish'"),
        ({"threshold": 1.5}, "threshold 1.5"),
        ({"pooling": "pooler", "encoder_changes": {"use_pooler": False}}, "needs an encoder with use_pooler"),
        ({"encoder_changes": {"num_heads": 5}}, "not divisible by num_heads 5"),
        ({"encoder_changes": {"hidden_act": "swish"}}, "hidden_act 'swish'"),
    ],
)
def test_invalid_configs_are_rejected(change: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        tiny_model_config(**change)


def test_load_errors_name_the_file(tmp_path) -> None:
    with pytest.raises(ConfigError, match="no config.json in"):
        ModelConfig.load(tmp_path)
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(ConfigError, match="is not valid JSON"):
        ModelConfig.load(tmp_path)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ({"threshold": "0.5"}, r"threshold must be a number in \[0, 1\], got str '0.5'"),
        ({"threshold": True}, "threshold must be a number"),
        ({"threshold": float("nan")}, r"threshold nan is outside \[0, 1\]"),
        ({"hidden_nodes": "64"}, "hidden_nodes must be a int, got str '64'"),
        ({"encoder": [1, 2]}, "encoder config must be a JSON object, not a list"),
        ([{"threshold": 0.5}], "must hold a JSON object, not a list"),
        ("[" * 200_000 + "]" * 200_000, "nested too deeply"),
    ],
)
def test_hand_edited_config_json_is_one_clear_line(tmp_path, content, message) -> None:
    base = tiny_model_config().to_published_json()
    if isinstance(content, str):
        text = content
    else:
        text = json.dumps(content if isinstance(content, list) else {**base, **content})
    (tmp_path / "config.json").write_text(text)
    with pytest.raises(ConfigError, match=message) as caught:
        ModelConfig.load(tmp_path)
    assert str(tmp_path / "config.json") in str(caught.value) and "\n" not in str(caught.value)


def test_one_threshold_check_and_one_dtype_list() -> None:
    import jax.numpy as jnp

    from autext_jax import cli
    from autext_jax.config import COMPUTE_DTYPES, check_dtype, check_threshold
    from autext_jax.model import compute_dtype
    from autext_jax.train.config import TrainConfig

    assert check_threshold(1) == 1.0 and cli.threshold_arg("0.25") == 0.25
    assert [compute_dtype(name) for name in COMPUTE_DTYPES] == [jnp.float32, jnp.bfloat16]
    for bad in (lambda: check_dtype("float16"), lambda: compute_dtype("float16")):
        with pytest.raises(ConfigError, match="dtype 'float16' is not one of"):
            bad()
    with pytest.raises(ConfigError, match="dtype 'float16' is not one of"):
        TrainConfig(dtype="float16")
    with pytest.raises(ConfigError, match=r"--threshold 2.0 is outside"):
        check_threshold(2.0, "--threshold")
