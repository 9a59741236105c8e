"""Mesh/rules unit tests, and (in a subprocess with 8 host devices) sharded steps equal one device."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import jax
import numpy as np
import pytest
from jax.sharding import PartitionSpec

from autext_jax.train import sharding as shd

HERE = Path(__file__).resolve()


class _FakeMesh:
    """Just enough of a Mesh for ``logical_to_spec`` (it reads ``mesh.shape``)."""

    def __init__(self, data: int, fsdp: int, tensor: int):
        self.shape = {"data": data, "fsdp": fsdp, "tensor": tensor}


def test_mesh_resolve_fills_the_wildcard_and_rejects_bad_shapes():
    assert shd.MeshConfig().resolve(8) == (8, 1, 1)
    assert shd.MeshConfig(data=-1, fsdp=4).resolve(8) == (2, 4, 1)
    assert shd.MeshConfig(data=4, fsdp=1, tensor=2).resolve(8) == (4, 1, 2)
    with pytest.raises(shd.MeshError, match="does not divide 8 devices"):
        shd.MeshConfig(data=-1, fsdp=3).resolve(8)
    with pytest.raises(shd.MeshError, match="needs 4 devices but 8"):
        shd.MeshConfig(data=2, fsdp=2).resolve(8)
    with pytest.raises(shd.MeshError, match="at most one axis"):
        shd.MeshConfig(data=-1, fsdp=-1).resolve(8)
    with pytest.raises(shd.MeshError, match="positive"):
        shd.MeshConfig(data=0).resolve(8)


def test_logical_rules_map_axes_and_replicate_what_does_not_divide():
    mesh = _FakeMesh(2, 4, 2)
    assert shd.logical_to_spec(("embed", "heads"), (32, 32), mesh) == PartitionSpec("fsdp", "tensor")
    assert shd.logical_to_spec(("heads", "embed"), (32, 32), mesh) == PartitionSpec("tensor", "fsdp")
    # 259 rows do not split 2 ways: the vocabulary dimension is replicated, embed still sharded.
    assert shd.logical_to_spec(("vocab", "embed"), (259, 32), mesh) == PartitionSpec(None, "fsdp")
    assert shd.logical_to_spec(("norm",), (32,), mesh) == PartitionSpec(None)
    assert shd.logical_to_spec((None, "embed"), (514, 32), mesh) == PartitionSpec(None, "fsdp")
    # A mesh axis is used at most once per array.
    assert shd.logical_to_spec(("embed", "embed"), (32, 32), mesh) == PartitionSpec("fsdp", None)
    # Size-1 mesh axes are dropped from specs.
    assert shd.logical_to_spec(("embed", "heads"), (32, 32), _FakeMesh(8, 1, 1)) == PartitionSpec(None, None)
    with pytest.raises(shd.MeshError, match="do not match shape"):
        shd.logical_to_spec(("embed",), (3, 3), mesh)


def test_every_model_logical_axis_has_a_rule(tiny_config):
    from autext_jax.model import abstract_model
    from autext_jax.train.steps import describe_model

    layout, _ = describe_model(abstract_model(tiny_config))
    used = {a for axes in layout.logical_axes.values() for a in axes if a is not None}
    assert used <= {name for name, _ in shd.LOGICAL_AXIS_RULES}


def test_batch_helpers_on_one_device():
    mesh = shd.make_mesh(shd.MeshConfig(), jax.devices()[:1])
    assert mesh.axis_names == shd.MESH_AXES
    assert shd.batch_shards(mesh) == 1
    shd.check_batch_size(3, mesh)
    arrays = shd.global_batch({"x": np.arange(6, dtype=np.int32).reshape(3, 2)}, mesh)
    np.testing.assert_array_equal(np.asarray(arrays["x"]), np.arange(6).reshape(3, 2))
    with pytest.raises(shd.MeshError, match="needs 2 devices"):
        shd.make_mesh(shd.MeshConfig(data=2), jax.devices()[:1])


@dataclass(frozen=True)
class _FakeDevice:
    """What ``device_grid`` reads of a device; CPU-like, so mesh_utils keeps the given order per host."""

    id: int
    process_index: int
    slice_index: int = 0
    platform: str = "cpu"
    device_kind: str = "cpu"


def _pod(hosts: int, per_host: int, slices: int = 1) -> list[_FakeDevice]:
    per_slice = hosts // slices
    return [
        _FakeDevice(h * per_host + i, h, slice_index=h // per_slice)
        for h in range(hosts)
        for i in range(per_host)
    ]


@pytest.mark.parametrize(
    "shape", [(16, 1, 1), (8, 2, 1), (4, 4, 1), (2, 8, 1), (1, 16, 1), (8, 1, 2), (2, 4, 2), (4, 1, 4)]
)
def test_each_host_holds_one_contiguous_block_of_the_batch(shape):
    # Devices listed out of process order, as a pod's jax.devices() may be.
    devices = sorted(_pod(hosts=4, per_host=4), key=lambda d: (d.id % 4, d.process_index))
    grid = shd.device_grid(shape, devices)
    assert grid.shape == shape
    assert sorted(d.id for d in grid.flat) == list(range(16))
    owners = [{d.process_index for d in row} for row in grid.reshape(-1, shape[2])]
    assert all(len(o) == 1 for o in owners)  # tensor groups never leave a host
    per_host = len(owners) // 4
    assert [o.pop() for o in owners] == [p for p in range(4) for _ in range(per_host)]


def test_host_layouts_that_cannot_work_are_one_line_errors():
    with pytest.raises(shd.MeshError, match="tensor-parallel groups must stay inside a host"):
        shd.device_grid((2, 1, 8), _pod(hosts=4, per_host=4))
    with pytest.raises(shd.MeshError, match="neither divides nor is a multiple"):
        shd.device_grid((3, 4, 1), _pod(hosts=2, per_host=6))
    with pytest.raises(shd.MeshError, match="different numbers of devices"):
        shd.device_grid((5, 1, 1), _pod(hosts=2, per_host=2) + [_FakeDevice(9, 2)])
    # Two slices of 8 devices: fsdp groups of 8 stay inside a slice, 16 would cross the DCN.
    two_slices = _pod(hosts=4, per_host=4, slices=2)
    grid = shd.device_grid((2, 8, 1), two_slices)
    assert [{d.slice_index for d in row.flat} for row in grid] == [{0}, {1}]
    with pytest.raises(shd.MeshError, match="spans slices"):
        shd.device_grid((1, 16, 1), two_slices)


def test_batch_per_device_and_the_one_line_batch_check():
    assert shd.global_batch_size(4, shd.MeshConfig(), 8) == 32
    assert shd.global_batch_size(4, shd.MeshConfig(data=-1, fsdp=2, tensor=2), 8) == 16
    with pytest.raises(shd.MeshError, match="must be >= 1"):
        shd.global_batch_size(0, shd.MeshConfig(), 8)


_EIGHT_DEVICE_CHECKS = """
import jax, pytest
from autext_jax.train import sharding as shd
assert jax.device_count() == 8
mesh = shd.make_mesh(shd.MeshConfig(data=-1, fsdp=2, tensor=2))
assert dict(mesh.shape) == {"data": 2, "fsdp": 2, "tensor": 2}
assert sorted(d.id for d in mesh.devices.flat) == list(range(8))
shd.check_batch_size(12, mesh)
with pytest.raises(shd.MeshError) as err:
    shd.check_batch_size(6, mesh)
print(err.value)
with pytest.raises(shd.MeshError) as err:
    shd.check_batch_size(20, shd.make_mesh(shd.MeshConfig()), what="eval.batch_size")
print(err.value)
"""


def test_mesh_and_batch_checks_on_8_devices():
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8", JAX_PLATFORMS="cpu")
    proc = subprocess.run(
        [sys.executable, "-c", _EIGHT_DEVICE_CHECKS], env=env, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    batch, eval_batch = proc.stdout.strip().splitlines()
    assert batch == (
        "batch_size=6 does not split over the 4 batch shards of mesh data×fsdp = 2×2 (8 devices): use a "
        "multiple of 4, e.g. --set batch_size=8 or give it per device with --batch-per-device N"
    )
    assert eval_batch.startswith("eval.batch_size=20 does not split over the 8 batch shards")
    assert eval_batch.endswith("e.g. --set eval.batch_size=24")


def test_distributed_args_from_env():
    assert not shd.DistributedArgs.from_env({}).enabled
    # The undocumented AUTEXT_DISTRIBUTED=auto is gone: --distributed auto replaces it.
    assert not shd.DistributedArgs.from_env({"AUTEXT_DISTRIBUTED": "auto"}).enabled
    args = shd.DistributedArgs.from_env(
        {"AUTEXT_COORDINATOR": "127.0.0.1:1234", "AUTEXT_NUM_PROCESSES": "2", "AUTEXT_PROCESS_ID": "1"}
    )
    assert (args.coordinator, args.num_processes, args.process_id, args.enabled) == (
        "127.0.0.1:1234",
        2,
        1,
        True,
    )
    with pytest.raises(shd.MeshError, match="set all of"):
        shd.DistributedArgs.from_env({"AUTEXT_COORDINATOR": "127.0.0.1:1234"})
    with pytest.raises(shd.MeshError, match="must be integers"):
        shd.DistributedArgs.from_env(
            {"AUTEXT_COORDINATOR": "h:1", "AUTEXT_NUM_PROCESSES": "two", "AUTEXT_PROCESS_ID": "0"}
        )
    with pytest.raises(shd.MeshError, match="outside"):
        shd.initialize_distributed(shd.DistributedArgs("127.0.0.1:1", 2, 5))


def _train_cli(tmp_path: Path, *extra: str) -> subprocess.CompletedProcess:
    cmd = [
        sys.executable,
        "-m",
        "autext_jax.train",
        "--config",
        str(HERE.parent.parent / "configs" / "tiny.py"),
    ]
    cmd += ["--workdir", str(tmp_path / "w"), *extra]
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=str(HERE.parent.parent))
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize(
    "extra, message",
    [
        (
            ["--distributed", "auto"],
            "--distributed auto found no cluster to join (coordinator_address should",
        ),
        (["--distributed", "auto", "--coordinator", "h:1"], "--distributed auto finds the cluster itself"),
        (["--topology", "v5e:2x2"], "--topology only goes with --compile-only"),
    ],
)
def test_train_cli_multi_host_flags_fail_in_one_line(tmp_path, extra, message):
    proc = _train_cli(tmp_path, *extra)
    assert proc.returncode == 2, proc.stderr[-2000:]
    lines = proc.stderr.strip().splitlines()
    assert lines[-1].startswith("python -m autext_jax.train: error: ") and message in lines[-1], lines
    assert "Traceback" not in proc.stderr


MESHES = {"one": (1, 1, 1), "data8": (8, 1, 1), "fsdp4_data2": (2, 4, 1), "tensor2_data4": (4, 1, 2)}


def _worker(out_dir: Path) -> None:
    """3 AdamW steps (dropout on) for every mesh from the same initial params and batches."""
    sys.path.insert(0, str(HERE.parent))
    from conftest import TINY_VOCAB, tiny_model_config

    from autext_jax.model import create_model
    from autext_jax.train import optim, steps

    assert jax.device_count() == 8, jax.devices()
    cfg = tiny_model_config()
    layout, init = steps.describe_model(create_model(cfg, seed=0))
    opt_cfg = optim.OptimizerConfig(learning_rate=1e-3, warmup_steps=1, layer_decay=0.8)
    rng = np.random.default_rng(0)
    batches = []
    for _ in range(3):
        lengths = rng.integers(3, 17, 16)
        mask = (np.arange(16)[None, :] < lengths[:, None]).astype(np.int32)
        batches.append(
            {
                "input_ids": np.where(mask, rng.integers(4, TINY_VOCAB, (16, 16)), 1).astype(np.int32),
                "attention_mask": mask,
                "bot": rng.integers(0, 2, 16).astype(np.float32),
                "english": rng.integers(0, 2, 16).astype(np.float32),
                "bot_mask": (rng.random(16) > 0.2).astype(np.float32),
                "english_mask": np.ones(16, np.float32),
            }
        )
    for name, (data, fsdp, tensor) in MESHES.items():
        devices = jax.devices()[: data * fsdp * tensor]
        mesh = shd.make_mesh(shd.MeshConfig(data, fsdp, tensor), devices)
        tx = optim.build_optimizer(opt_cfg, layout.names, cfg.encoder.num_layers, total_batches=3)
        train = steps.TrainSteps(layout, tx, mesh, lang_loss_weight=0.5)
        state = train.init_state(train.place_params(init))
        losses = []
        for i, batch in enumerate(batches):
            state, metrics = train.train_step(state, train.global_batch(batch), train.dropout_key(7, i))
            losses.append(float(metrics["loss"]))
        qkv = state["params"]["encoder/layers/0/attention/query/kernel"]
        spec = [str(s) for s in qkv.sharding.spec]
        np.savez(out_dir / f"{name}.npz", **steps.host_params(state["params"]))
        (out_dir / f"{name}.json").write_text(json.dumps({"losses": losses, "query_spec": spec}))


def test_sharded_steps_match_one_device(tmp_path):
    env = dict(
        os.environ,
        XLA_FLAGS="--xla_force_host_platform_device_count=8 --xla_backend_optimization_level=0",
        HF_HUB_OFFLINE="1",
        JAX_PLATFORMS="cpu",
    )
    proc = subprocess.run(
        [sys.executable, str(HERE), str(tmp_path)], env=env, capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    reference = json.loads((tmp_path / "one.json").read_text())
    ref_params = np.load(tmp_path / "one.npz")
    specs = {}
    for name in MESHES:
        got = json.loads((tmp_path / f"{name}.json").read_text())
        specs[name] = got["query_spec"]
        np.testing.assert_allclose(got["losses"], reference["losses"], atol=1e-5, rtol=0)
        params = np.load(tmp_path / f"{name}.npz")
        assert set(params.files) == set(ref_params.files)
        for key in ref_params.files:
            np.testing.assert_allclose(
                params[key], ref_params[key], atol=1e-5, rtol=0, err_msg=f"{name}: {key}"
            )
    # The layouts really differ: fsdp shards the embed dim, tensor the heads dim.
    assert specs["fsdp4_data2"] == ["fsdp", "None"]
    assert specs["tensor2_data4"] == ["None", "tensor"]
    assert specs["data8"] == ["None", "None"]
    # Training moved the parameters (a no-op step would also "match").
    assert reference["losses"][0] != reference["losses"][-1]


if __name__ == "__main__":
    _worker(Path(sys.argv[1]))
