"""``--compile-only --topology``: the real steps compiled for TPU slices on this CPU machine.

Needs libtpu (``pip install -e ".[tpu]"``); ``.ci/run`` runs this file in its own venv. Everything
compiles the tiny config, so each topology takes seconds.
"""

from __future__ import annotations

import functools
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("libtpu", reason="libtpu is not installed (pip install -e '.[tpu]'); .ci/run has a venv")

from autext_jax.train import aot, sharding  # noqa: E402
from autext_jax.train.config import apply_overrides, load_config_file  # noqa: E402

REPO = Path(__file__).resolve().parent.parent


def _tiny(*overrides: str):
    return apply_overrides(load_config_file(REPO / "configs" / "tiny.py"), list(overrides))


def test_cli_compiles_for_a_v5e_slice(tmp_path):
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONPATH=str(REPO))
    cmd = [sys.executable, "-m", "autext_jax.train", "--config", str(REPO / "configs" / "tiny.py")]
    cmd += ["--workdir", str(tmp_path / "never"), "--compile-only", "--topology", "v5e:2x2"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout)
    assert (out["topology"], out["devices"], out["hbm_gib_per_chip"], out["batch_size"]) == (
        "v5e:2x2",
        4,
        16,
        8,
    )
    assert [s["step"] for s in out["steps"]] == ["train", "eval"]
    assert all(s["bytes_per_chip"] > 0 and s["flops_per_chip"] > 0 for s in out["steps"])
    assert "TPU v5e: 16.0 GiB HBM per chip" in proc.stderr
    assert "TPU_ACCELERATOR_TYPE" not in proc.stderr  # libtpu's environment warnings are silenced
    assert not (tmp_path / "never").exists()


@functools.cache
def _compiled(topology: str) -> dict:
    return aot.run(_tiny("batch_size=32", "eval.batch_size=32"), topology)


@pytest.mark.parametrize(
    "topology, devices, hosts, slices, hbm",
    [("v4:2x2x1", 4, 1, 1, 32), ("v5e-16", 16, 4, 1, 16), ("2xv5e:2x2", 8, 2, 2, 16)],
)
def test_topologies_single_host_pod_and_multislice(topology, devices, hosts, slices, hbm):
    out = _compiled(topology)
    assert (out["devices"], out["hbm_gib_per_chip"], out["num_slices"]) == (devices, hbm, slices)
    found = aot.topology_devices(aot.parse_topology(topology))
    assert len({d.process_index for d in found}) == hosts
    mesh = sharding.make_mesh(sharding.MeshConfig(), found)
    sharding.check_host_layout(mesh.devices)  # each host's batch rows are one contiguous block


def test_eval_flops_per_step_do_not_depend_on_the_slice():
    """Data parallelism splits the forward pass: per-chip FLOPs × chips is one number on 4, 8, 16 chips.
    (to 0.5%: a few small ops are replicated). The train step also runs the optimizer update on
    every chip, so its total grows with the chips."""
    totals = [
        _compiled(t)["steps"][1]["flops_per_chip"] * _compiled(t)["devices"]
        for t in ("v5e:2x2", "2xv5e:2x2", "v5e-16")
    ]
    assert totals[1:] == pytest.approx([totals[0]] * 2, rel=5e-3)


def test_a_step_that_does_not_fit_exits_1():
    cfg = _tiny("batch_size=16384", "data.max_length=512")
    # libtpu's compiler refuses it itself ("Ran out of memory on HBM"): exit 1 all the same.
    with pytest.raises(
        aot.DoesNotFit, match=r"the train step does not fit: RESOURCE_EXHAUSTED: Ran out of memory"
    ):
        aot.run(cfg, "v5e:2x2")
    assert aot.DoesNotFit.exit_code == 1
