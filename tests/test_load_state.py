"""Loading without compiling the initialiser gives the model the compiled path gave, bit for bit."""

from __future__ import annotations

import json

import jax
import numpy as np
import pytest
from flax import nnx
from safetensors.numpy import load_file, save_file

from autext_jax.convert import _materialise_rest, _rng_state, load_checkpoint
from autext_jax.model import abstract_model


def _flat(state: nnx.State) -> dict[tuple, tuple[str, str, dict, np.ndarray]]:
    """path → (variable type, dtype, metadata, raw bits): keys compared by their key data."""
    out = {}
    for path, var in nnx.to_flat_state(state):
        value = var.get_value()
        assert isinstance(value, jax.Array), (path, type(value))
        dtype = str(value.dtype)
        if jax.dtypes.issubdtype(value.dtype, jax.dtypes.prng_key):
            value = jax.random.key_data(value)
        out[path] = (type(var).__name__, dtype, var.get_metadata(), np.asarray(value))
    return out


def _assert_same(got: nnx.State, want: nnx.State) -> None:
    got, want = _flat(got), _flat(want)
    assert list(got) == list(want)
    for path, (kind, dtype, metadata, value) in want.items():
        assert got[path][:3] == (kind, dtype, metadata), path
        np.testing.assert_array_equal(got[path][3], value, err_msg=str(path))


def _modules(model) -> list[tuple[tuple, str]]:
    return [(path, type(node).__name__) for path, node in nnx.iter_graph(model)]


def _compiled_rest(config, seed: int, dtype=None) -> nnx.State:
    """The RNG state as it was made before: the whole initialiser under ``jit``."""
    rest, chosen = _materialise_rest(config, dtype, seed, ())
    assert chosen == {}
    return rest


@pytest.mark.parametrize(("seed", "dtype"), [(0, None), (7, "bfloat16")])
def test_rng_state_equals_the_compiled_initialisers(tiny_config, seed, dtype) -> None:
    dtype = dtype and jax.numpy.dtype(dtype)
    graphdef, params, rest = _rng_state(tiny_config, dtype, seed)
    _assert_same(rest, _compiled_rest(tiny_config, seed, dtype))
    assert len(nnx.to_flat_state(rest)) > 4  # every dropout's key and count, not an empty state
    old = nnx.state(abstract_model(tiny_config, dtype=dtype), nnx.Param)
    shapes = jax.tree.map(lambda v: (v.shape, v.dtype), params)
    assert shapes == jax.tree.map(lambda v: (v.shape, v.dtype), old)
    assert _modules(nnx.merge(graphdef, params, rest)) == _modules(abstract_model(tiny_config, dtype=dtype))


def test_checkpoint_with_heads_loads_the_same_model(tiny_model_dir, tiny_config) -> None:
    loaded = load_checkpoint(tiny_model_dir, seed=3)
    assert loaded.fresh == ()
    graphdef, params, _ = nnx.split(abstract_model(tiny_config), nnx.Param, ...)
    old = nnx.merge(graphdef, nnx.state(loaded.model, nnx.Param), _compiled_rest(tiny_config, 3))
    old.eval()
    _assert_same(nnx.state(loaded.model), nnx.state(old))
    assert _modules(loaded.model) == _modules(old)
    assert loaded.model.bot_head.dropout.deterministic and old.bot_head.dropout.deterministic
    # A different seed changes the dropout keys only (the weights come from the file).
    other = load_checkpoint(tiny_model_dir, seed=4).model
    _assert_same(nnx.state(other, nnx.Param), nnx.state(loaded.model, nnx.Param))
    keys = [k for k, (kind, *_) in _flat(nnx.state(other)).items() if kind == "RngKey"]
    assert keys and all(
        not np.array_equal(_flat(nnx.state(other))[k][3], _flat(nnx.state(loaded.model))[k][3]) for k in keys
    )


def test_checkpoint_without_heads_keeps_its_state(tmp_path, tiny_model_dir, tiny_config) -> None:
    """Encoder-only inits still take the compiled path; their RNG state is the one a full load gets."""
    state = load_file(str(tiny_model_dir / "model.safetensors"))
    directory = tmp_path / "encoder_only"
    directory.mkdir()
    encoder_only = {k: v for k, v in state.items() if k.startswith("transformer.")}
    save_file(encoder_only, str(directory / "model.safetensors"))
    (directory / "config.json").write_text((tiny_model_dir / "config.json").read_text())
    loaded = load_checkpoint(directory, allow_fresh=True, seed=5)
    assert loaded.fresh == ("bot_head", "lang_head")
    _assert_same(nnx.state(loaded.model, nnx.Not(nnx.Param)), _compiled_rest(tiny_config, 5))
    _assert_same(nnx.state(loaded.model, nnx.Not(nnx.Param)), _rng_state(tiny_config, None, 5)[2])
    full = load_checkpoint(tiny_model_dir, seed=5).model
    encoder = nnx.state(loaded.model.encoder, nnx.Param)
    _assert_same(encoder, nnx.state(full.encoder, nnx.Param))


def test_scoring_command_imports_no_training_stack_and_flushes(tiny_model_dir) -> None:
    """The README's command in a fresh process: records complete on a pipe, no training modules."""
    import subprocess
    import sys

    command = [sys.executable, "-X", "importtime", "-m", "autext_jax.infer", "--model", str(tiny_model_dir)]
    done = subprocess.run(command + ["One text.", "Otro texto."], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert [json.loads(line)["id"] for line in done.stdout.splitlines()] == [0, 1]
    imported = {line.rsplit("|", 1)[-1].strip() for line in done.stderr.splitlines() if "|" in line}
    assert "autext_jax.engine" in imported  # the log really lists imports
    heavy = {"orbax", "datasets", "matplotlib", "torch", "tensorflow", "pandas", "autext_jax.train"}
    assert not heavy & imported
