"""Checkpoint conversion: every accepted layout, every rejection, and byte-identical round trips."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import TINY_MODEL_SEED, discriminative_model, tiny_model_config
from safetensors.numpy import load_file, save_file

from autext_jax.config import ConfigError, ModelConfig
from autext_jax.convert import (
    ConversionError,
    export_checkpoint,
    load_checkpoint,
    to_state_dict,
)
from autext_jax.model import create_model
from tests.helpers.reference_torch import reference_from_model_config

IDS = np.array([[0, 40, 41, 42, 43, 2], [0, 50, 2, 1, 1, 1]], dtype=np.int32)
MASK = (IDS != 1).astype(np.int32)


@pytest.fixture(scope="module")
def reference_state(tiny_model_dir) -> dict[str, np.ndarray]:
    return load_file(str(tiny_model_dir / "model.safetensors"))


def _write(directory: Path, tensors: dict[str, np.ndarray], config: dict | None) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(directory / "model.safetensors"))
    if config is not None:
        (directory / "config.json").write_text(json.dumps(config))
    return directory


def _published_config(tiny_model_dir: Path) -> dict:
    return json.loads((tiny_model_dir / "config.json").read_text())


def _relabel(state: dict[str, np.ndarray], prefix: str, bot: tuple[str, str], lang: tuple[str, str]):
    """The reference state dict under another encoder prefix and other head layer names."""
    names = {"bot_head.0": bot[0], "bot_head.2": bot[1], "lang_head.0": lang[0], "lang_head.2": lang[1]}
    out = {}
    for key, value in state.items():
        if key.startswith("transformer."):
            out[prefix + key[len("transformer.") :]] = value
        else:
            layer, _, param = key.rpartition(".")
            out[f"{names[layer]}.{param}"] = value
    return out


def _assert_same_params(loaded, state: dict[str, np.ndarray]) -> None:
    got = to_state_dict(loaded.model)
    assert sorted(got) == sorted(state)
    for key, value in state.items():
        np.testing.assert_array_equal(got[key], value, err_msg=key)


# ---- loading and exporting ---------------------------------------------------------------------


def test_exported_tiny_model_loads_exactly(tiny_model_dir, tiny_config, reference_state) -> None:
    loaded = load_checkpoint(tiny_model_dir)
    assert loaded.config == tiny_config and loaded.fresh == () and loaded.ignored == ()
    _assert_same_params(loaded, reference_state)
    original = discriminative_model(tiny_config, seed=TINY_MODEL_SEED)
    original.eval()
    for task in ("bot", "english"):  # eval mode: dropout off, so outputs match exactly
        np.testing.assert_array_equal(
            np.asarray(loaded.model(IDS, MASK)[task]), np.asarray(original(IDS, MASK)[task])
        )


def test_export_import_export_is_byte_identical(tiny_model_dir, tmp_path) -> None:
    loaded = load_checkpoint(tiny_model_dir)
    again = export_checkpoint(loaded.model, loaded.config, tmp_path / "again", tokenizer_dir=tiny_model_dir)
    names = sorted(p.name for p in tiny_model_dir.iterdir())
    assert names == sorted(p.name for p in again.iterdir())
    assert {"model.safetensors", "config.json", "tokenizer_config.json"} <= set(names)
    for name in names:
        assert (again / name).read_bytes() == (tiny_model_dir / name).read_bytes(), name


def test_export_loads_strictly_into_the_torch_reference(tiny_model_dir) -> None:
    from safetensors.torch import load_file as load_torch

    config = ModelConfig.load(tiny_model_dir)
    reference = reference_from_model_config(config)
    reference.load_state_dict(load_torch(str(tiny_model_dir / "model.safetensors")), strict=True)
    loaded = load_checkpoint(tiny_model_dir)
    with torch.no_grad():
        want = reference.logits(
            {"input_ids": torch.from_numpy(IDS).long(), "attention_mask": torch.from_numpy(MASK)}
        )
    np.testing.assert_allclose(np.asarray(loaded.model(IDS, MASK)["bot"]), want["bot"].numpy(), atol=1e-5)


def test_compute_dtype_keeps_float32_params(tiny_model_dir) -> None:
    import jax
    import jax.numpy as jnp
    from flax import nnx

    loaded = load_checkpoint(tiny_model_dir, dtype="bfloat16")
    assert {x.dtype for x in jax.tree.leaves(nnx.state(loaded.model, nnx.Param))} == {jnp.dtype("float32")}
    assert loaded.model.encoder.layers[0].attention.query.dtype == jnp.bfloat16


@pytest.mark.parametrize(
    ("prefix", "bot", "lang"),
    [
        ("transformer.", ("bot_head.0", "bot_head.2"), ("lang_head.0", "lang_head.2")),
        (
            "roberta.",
            ("bot_classifier.fc1", "bot_classifier.fc2"),
            ("english_classifier.fc1", "english_classifier.fc2"),
        ),
        ("encoder.", ("heads.bot.0", "heads.bot.3"), ("heads.en_head.0", "heads.en_head.3")),
        ("model.", ("model.bot.2", "model.bot.10"), ("model.language.2", "model.language.10")),
        ("", ("is_bot_mlp.dense", "is_bot_mlp.out_proj"), ("lang_mlp.dense", "lang_mlp.out_proj")),
        ("transformer.", ("bot_fc1", "bot_fc2"), ("english_fc1", "english_fc2")),  # top-level Linears
    ],
)
def test_every_prefix_and_head_naming_loads(
    tmp_path, tiny_model_dir, reference_state, prefix, bot, lang
) -> None:
    # fc1/fc2, dense/out_proj: name order; 2 < 10: index order (not string order).
    tensors = _relabel(reference_state, prefix, bot, lang)
    tensors[prefix + "embeddings.position_ids"] = np.arange(514, dtype=np.int64)[None]
    directory = _write(tmp_path / "m", tensors, _published_config(tiny_model_dir))
    loaded = load_checkpoint(directory)
    _assert_same_params(loaded, reference_state)
    assert loaded.ignored == (prefix + "embeddings.position_ids",)


def test_sharded_safetensors_load(tmp_path, tiny_model_dir, reference_state) -> None:
    keys = sorted(reference_state)
    directory = tmp_path / "sharded"
    directory.mkdir()
    halves = {"a.safetensors": keys[::2], "b.safetensors": keys[1::2]}
    for name, part in halves.items():
        save_file({k: reference_state[k] for k in part}, str(directory / name))
    weight_map = {k: name for name, part in halves.items() for k in part}
    (directory / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    shutil.copy(tiny_model_dir / "config.json", directory)
    _assert_same_params(load_checkpoint(directory), reference_state)


def test_bfloat16_checkpoint_is_read_as_float32(tmp_path, tiny_model_dir, reference_state) -> None:
    from safetensors.torch import save_file as save_torch

    directory = tmp_path / "bf16"
    directory.mkdir()
    save_torch(
        {k: torch.from_numpy(v).bfloat16() for k, v in reference_state.items()},
        str(directory / "model.safetensors"),
    )
    shutil.copy(tiny_model_dir / "config.json", directory)
    got = to_state_dict(load_checkpoint(directory).model)
    want = {k: torch.from_numpy(v).bfloat16().float().numpy() for k, v in reference_state.items()}
    for key in want:
        np.testing.assert_array_equal(got[key], want[key])


def test_unused_stored_pooler_is_accepted(tmp_path, tiny_model_dir, reference_state) -> None:
    config = _published_config(tiny_model_dir)
    config["encoder"]["use_pooler"] = False
    loaded = load_checkpoint(_write(tmp_path / "m", reference_state, config))
    assert loaded.model.encoder.pooler is None
    assert loaded.ignored == ("transformer.pooler.dense.bias", "transformer.pooler.dense.weight")


def test_pickled_bin_needs_opt_in(tmp_path, tiny_model_dir, reference_state) -> None:
    directory = tmp_path / "pickled"
    directory.mkdir()
    torch.save({k: torch.from_numpy(v) for k, v in reference_state.items()}, directory / "pytorch_model.bin")
    shutil.copy(tiny_model_dir / "config.json", directory)
    with pytest.raises(ConversionError, match="allow_pickle=True"):
        load_checkpoint(directory)
    _assert_same_params(load_checkpoint(directory, allow_pickle=True), reference_state)


# ---- key maps ----------------------------------------------------------------------------------


def _custom_head_names(reference_state) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """Heads named so that detection cannot tell them apart, and the key map that fixes it."""
    tensors = _relabel(reference_state, "transformer.", ("clf_a.0", "clf_a.1"), ("clf_b.0", "clf_b.1"))
    key_map = {
        f"clf_{x}.{i}.{p}": f"{head}.{j}.{p}"
        for x, head in (("a", "bot_head"), ("b", "lang_head"))
        for i, j in ((0, 0), (1, 2))
        for p in ("weight", "bias")
    }
    return tensors, key_map


def test_key_map_overrides_detection(tmp_path, tiny_model_dir, reference_state) -> None:
    tensors, key_map = _custom_head_names(reference_state)
    directory = _write(tmp_path / "m", tensors, _published_config(tiny_model_dir))
    with pytest.raises(ConversionError, match=r"unknown tensors.*clf_a\.0\.bias"):
        load_checkpoint(directory)
    _assert_same_params(load_checkpoint(directory, key_map=key_map), reference_state)
    map_file = tmp_path / "key_map.json"
    map_file.write_text(json.dumps(key_map))
    _assert_same_params(load_checkpoint(directory, key_map=str(map_file)), reference_state)


def test_key_map_errors(tmp_path, tiny_model_dir, reference_state) -> None:
    tensors, key_map = _custom_head_names(reference_state)
    directory = _write(tmp_path / "m", tensors, _published_config(tiny_model_dir))
    with pytest.raises(ConversionError, match="not in the checkpoint.*nope"):
        load_checkpoint(directory, key_map={**key_map, "nope.weight": "bot_head.0.weight"})
    with pytest.raises(ConversionError, match="not reference keys.*bot_head.9.weight"):
        load_checkpoint(directory, key_map={**key_map, "clf_a.0.weight": "bot_head.9.weight"})
    with pytest.raises(ConversionError, match="cannot read key map"):
        load_checkpoint(directory, key_map=tmp_path / "missing.json")


# ---- fresh parts -------------------------------------------------------------------------------


def _hf_encoder_config(tiny_config) -> dict:
    hf = tiny_config.encoder.to_hf_config()
    hf["architectures"] = ["XLMRobertaForMaskedLM"]
    return hf


def test_missing_heads_are_an_error_unless_allowed(tmp_path, tiny_model_dir, reference_state) -> None:
    encoder_only = {k: v for k, v in reference_state.items() if k.startswith("transformer.")}
    directory = _write(tmp_path / "m", encoder_only, _published_config(tiny_model_dir))
    with pytest.raises(ConversionError, match=r"missing tensors.*bot_head\.0\.weight"):
        load_checkpoint(directory)
    loaded = load_checkpoint(directory, allow_fresh=True, seed=5)
    assert loaded.fresh == ("bot_head", "lang_head")
    kernel = np.asarray(loaded.model.bot_head.hidden.kernel[...])
    assert 0.005 < kernel.std() < 0.05  # really initialised (std 0.02), not zeros
    assert not np.array_equal(kernel, np.asarray(loaded.model.lang_head.hidden.kernel[...]))


def test_half_present_head_is_rejected_even_with_allow_fresh(
    tmp_path, tiny_model_dir, reference_state
) -> None:
    partial = {k: v for k, v in reference_state.items() if not k.startswith("bot_head.2")}
    directory = _write(tmp_path / "m", partial, _published_config(tiny_model_dir))
    with pytest.raises(ConversionError, match="should be 2 Linear layers"):
        load_checkpoint(directory, allow_fresh=True)


def test_encoder_only_hf_checkpoint_with_mlm_head(tmp_path, tiny_config, reference_state) -> None:
    """As FacebookAI/xlm-roberta-base: ``roberta.`` prefix, an MLM head, no pooler, HF config.json."""
    tensors = {
        "roberta." + k[len("transformer.") :]: v
        for k, v in reference_state.items()
        if k.startswith("transformer.") and ".pooler." not in k
    }
    tensors["lm_head.dense.weight"] = np.zeros((32, 32), np.float32)
    tensors["lm_head.bias"] = np.zeros((259,), np.float32)
    directory = _write(tmp_path / "xlmr", tensors, _hf_encoder_config(tiny_config))
    with pytest.raises(ConversionError, match="encoder-only.*allow_fresh=True"):
        load_checkpoint(directory)
    loaded = load_checkpoint(directory, allow_fresh=True)
    assert loaded.fresh == ("bot_head", "encoder.pooler", "lang_head")
    assert loaded.ignored == ("lm_head.bias", "lm_head.dense.weight")
    assert loaded.config.encoder == tiny_config.encoder
    state = to_state_dict(loaded.model)
    for key, value in tensors.items():
        if key.startswith("roberta."):
            np.testing.assert_array_equal(state["transformer." + key[len("roberta.") :]], value)


def test_encoder_only_without_prefix_keeps_its_pooler(tmp_path, tiny_config, reference_state) -> None:
    """As tools/e5/import_e5.py writes: XLMRobertaModel names without prefix, pooler included."""
    tensors = {
        k[len("transformer.") :]: v for k, v in reference_state.items() if k.startswith("transformer.")
    }
    loaded = load_checkpoint(
        _write(tmp_path / "e5", tensors, _hf_encoder_config(tiny_config)), allow_fresh=True
    )
    assert loaded.fresh == ("bot_head", "lang_head")
    np.testing.assert_array_equal(
        np.asarray(loaded.model.encoder.pooler.dense.kernel[...]),
        reference_state["transformer.pooler.dense.weight"].T,
    )


# ---- rejections --------------------------------------------------------------------------------


def test_missing_directory_and_missing_weights(tmp_path, tiny_model_dir) -> None:
    with pytest.raises(ConversionError, match="does not exist"):
        load_checkpoint(tmp_path / "nowhere")
    empty = tmp_path / "empty"
    empty.mkdir()
    shutil.copy(tiny_model_dir / "config.json", empty)
    with pytest.raises(ConversionError, match="no model.safetensors"):
        load_checkpoint(empty)


def test_non_safetensors_file(tmp_path, tiny_model_dir) -> None:
    directory = tmp_path / "garbage"
    directory.mkdir()
    (directory / "model.safetensors").write_bytes(b"PK\x03\x04 this is a zip, not safetensors" * 10)
    shutil.copy(tiny_model_dir / "config.json", directory)
    with pytest.raises(ConversionError, match="not a readable safetensors file"):
        load_checkpoint(directory)


def test_unknown_missing_and_misshaped_tensors_are_listed(tmp_path, tiny_model_dir, reference_state) -> None:
    config = _published_config(tiny_model_dir)
    unknown = {
        **reference_state,
        "transformer.encoder.layer.0.attention.extra.weight": np.zeros(3, np.float32),
        "decoder.weight": np.zeros(3, np.float32),
    }
    with pytest.raises(
        ConversionError, match=r"unknown tensors.*decoder\.weight.*layer\.0\.attention\.extra"
    ):
        load_checkpoint(_write(tmp_path / "unknown", unknown, config))

    missing = {k: v for k, v in reference_state.items() if "layer.1.output.LayerNorm" not in k}
    with pytest.raises(ConversionError, match=r"missing tensors.*layer\.1\.output\.LayerNorm\.weight"):
        load_checkpoint(_write(tmp_path / "missing", missing, config), allow_fresh=True)

    bad = dict(reference_state)
    bad["transformer.encoder.layer.1.attention.self.key.weight"] = np.zeros((32, 31), np.float32)
    bad["bot_head.2.bias"] = np.zeros((2,), np.float32)
    with pytest.raises(
        ConversionError, match=r"mis-shaped.*bot_head\.2\.bias \(2,\) \(expected \(1,\)\).*key\.weight"
    ):
        load_checkpoint(_write(tmp_path / "bad", bad, config))


def test_config_that_disagrees_with_shapes(tmp_path, tiny_model_dir, reference_state) -> None:
    config = _published_config(tiny_model_dir)
    config["hidden_nodes"] = 16
    config["encoder"]["num_hidden_layers"] = 3
    with pytest.raises(ConversionError, match="num_layers 3 in config vs 2 in tensors.*hidden_nodes 16"):
        load_checkpoint(_write(tmp_path / "m", reference_state, config))


def test_config_without_encoder_information(tmp_path, tiny_model_dir, reference_state) -> None:
    config = _published_config(tiny_model_dir)
    del config["encoder"]
    config["transformer_name"] = "my-private-encoder"
    with pytest.raises(ConfigError, match="cannot tell the encoder's shape"):
        load_checkpoint(_write(tmp_path / "m", reference_state, config))
    # The published config (no encoder object, transformer_name xlm-roberta-base) names a known
    # encoder whose shapes are not the tiny ones: that is a shape disagreement, not a silent load.
    config["transformer_name"] = "xlm-roberta-base"
    with pytest.raises(ConversionError, match="vocab_size 250002 in config vs 259"):
        load_checkpoint(_write(tmp_path / "m2", reference_state, config))


def test_ambiguous_or_malformed_heads(tmp_path, tiny_model_dir, reference_state) -> None:
    config = _published_config(tiny_model_dir)
    twice = {
        **reference_state,
        **{"other_bot.0." + p: reference_state["bot_head.0." + p] for p in ("weight", "bias")},
    }
    with pytest.raises(ConversionError, match="several modules look like the bot_head"):
        load_checkpoint(_write(tmp_path / "twice", twice, config))
    three = {**reference_state, "lang_head.4.weight": np.zeros((1, 1), np.float32)}
    with pytest.raises(ConversionError, match=r"lang_head should be 2 Linear layers.*lang_head\.4\.weight"):
        load_checkpoint(_write(tmp_path / "three", three, config))


def test_config_override(tiny_model_dir) -> None:
    loaded = load_checkpoint(tiny_model_dir, config=tiny_model_config(pooling="mean"))
    assert loaded.config.pooling == "mean" and loaded.model.cfg.pooling == "mean"
    with pytest.raises(ConversionError, match="intermediate_size 48 in config vs 64"):
        load_checkpoint(tiny_model_dir, config=tiny_model_config(encoder_changes={"intermediate_size": 48}))


def test_export_rejects_a_config_of_another_model(tmp_path, tiny_config) -> None:
    model = create_model(tiny_config)
    with pytest.raises(ConversionError, match=r"differs in \['hidden_nodes', 'pooling'\]"):
        export_checkpoint(model, tiny_model_config(hidden_nodes=4, pooling="mean"), tmp_path)
    # A tuned threshold is a legitimate change.
    export_checkpoint(model, tiny_config.replace(threshold=0.8), tmp_path / "tuned")
    assert ModelConfig.load(tmp_path / "tuned").threshold == 0.8
    with pytest.raises(ConversionError, match="no tokenizer files"):
        export_checkpoint(model, tiny_config, tmp_path / "x", tokenizer_dir=tmp_path)


def test_package_never_imports_torch() -> None:
    import subprocess
    import sys

    code = "import sys, autext_jax.convert, autext_jax.hub; print('torch' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.stdout.strip() == "False", done.stderr


def test_non_finite_weights_are_refused(tmp_path, tiny_model_dir, reference_state) -> None:
    broken = dict(reference_state)
    key = "bot_head.2.weight"
    broken[key] = broken[key].copy()
    broken[key][0, 0] = np.nan
    other = "transformer.embeddings.LayerNorm.bias"
    broken[other] = broken[other].copy()
    broken[other][-1] = -np.inf
    directory = _write(tmp_path / "nan", broken, _published_config(tiny_model_dir))
    message = r"2 tensors .* hold NaN or infinite values, e\.g\. bot_head\.2\.weight, transformer\.embeddings"
    with pytest.raises(ConversionError, match=message):
        load_checkpoint(directory)


def test_integer_weights_are_refused_naming_the_dtype(tmp_path, tiny_model_dir, reference_state) -> None:
    quantised = dict(reference_state)
    key = "transformer.encoder.layer.0.output.dense.weight"
    quantised[key] = np.clip(np.round(quantised[key] * 100), -127, 127).astype(np.int8)
    directory = _write(tmp_path / "int8", quantised, _published_config(tiny_model_dir))
    with pytest.raises(ConversionError, match=rf"not floating point, e\.g\. {key} \(I8\)"):
        load_checkpoint(directory)
