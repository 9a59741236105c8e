"""Ahead-of-time compilation without libtpu: topology names, the model's shape, the fit check, and
``--compile-only`` on the attached (8 fake CPU) devices. TPU topologies: ``test_aot_tpu.py``."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from autext_jax.config import KNOWN_ENCODERS, ConfigError, EncoderConfig
from autext_jax.train import aot
from autext_jax.train.config import load_config_file

REPO = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize(
    "text, name, accelerator, chips, hosts_bounds, slices",
    [
        ("v5e:2x4", "v5e:2x4", "v5litepod-8", 8, (2, 4, 1), 1),
        ("v5e-8", "v5e:2x4", "v5litepod-8", 8, (2, 4, 1), 1),
        ("v5litepod-16", "v5e:4x4", "v5litepod-16", 16, (2, 2, 1), 1),
        ("v5e-64", "v5e:8x8", "v5litepod-64", 64, (2, 2, 1), 1),
        ("v4-8", "v4:2x2x1", "v4-8", 4, (2, 2, 1), 1),
        ("v4-32", "v4:2x2x4", "v4-32", 16, (2, 2, 1), 1),
        ("v4-64", "v4:2x4x4", "v4-64", 32, (2, 2, 1), 1),
        ("V4:2X2X4", "v4:2x2x4", "v4-32", 16, (2, 2, 1), 1),
        ("2xv5e-16", "v5e:4x4", "v5litepod-16", 32, (2, 2, 1), 2),
        ("v6e-4", "v6e:2x2", "v6e-4", 4, (2, 2, 1), 1),
    ],
)
def test_topology_names(text, name, accelerator, chips, hosts_bounds, slices):
    topology = aot.parse_topology(text)
    assert (topology.name, topology.accelerator_type, topology.chips) == (name, accelerator, chips)
    assert (topology.chips_per_host_bounds, topology.num_slices) == (hosts_bounds, slices)


def test_libtpu_calls_v5p_v5():
    topology = aot.parse_topology("v5p-32")
    assert (topology.name, topology.libtpu_name, topology.accelerator_type) == (
        "v5p:2x2x4",
        "v5:2x2x4",
        "v5p-32",
    )


@pytest.mark.parametrize(
    "text, message",
    [
        ("v3-8", "expected e.g. v5e:2x4"),
        ("tpu", "expected e.g. v5e:2x4"),
        ("v4-12", "needs N = 2×(a power of two ≥ 4)"),
        ("v4-4", "needs N = 2×(a power of two ≥ 4)"),
        ("v5e:2x2x2", "v5e slices have 2 axes"),
        ("0xv5e-16", "number of slices must be at least 1"),
    ],
)
def test_bad_topology_names_are_usage_errors(text, message):
    with pytest.raises(aot.UsageError, match=message.replace("(", r"\(").replace(")", r"\)")):
        aot.parse_topology(text)


def test_model_shape_comes_without_weights(tmp_path):
    cfg = load_config_file(REPO / "configs" / "upb_mtl.py")
    assert cfg.init == "FacebookAI/xlm-roberta-base"
    assert aot.model_config_for(cfg).encoder == KNOWN_ENCODERS["xlm-roberta-base"]
    assert aot.model_config_for(cfg).hidden_nodes == 64
    published = aot.model_config_for(cfg.replace(init=aot.PUBLISHED_MODEL))
    assert (published.encoder, published.threshold) == (EncoderConfig(), 0.9919)
    (tmp_path / "config.json").write_text(
        json.dumps(
            {"model_type": "xlm-roberta", "hidden_size": 64, "num_hidden_layers": 3, "num_attention_heads": 4}
        )
    )
    local = aot.model_config_for(cfg.replace(init=str(tmp_path)))
    assert (local.encoder.hidden_size, local.encoder.num_layers, local.hidden_nodes) == (64, 3, 64)
    assert aot.model_config_for(cfg.replace(init=None)) == cfg.model
    with pytest.raises(ConfigError, match="neither a local directory"):
        aot.model_config_for(cfg.replace(init="someone/some-model"))


def _report(name: str, temp: int) -> aot.StepReport:
    return aot.StepReport(name, 8, 128, 3 * aot.GIB, 3 * aot.GIB, 3 * aot.GIB, temp, 1024, 2e12, 4)


def test_fit_check_and_exit_code():
    fits, too_big = _report("eval", aot.GIB), _report("train", 14 * aot.GIB)
    assert too_big.bytes_per_chip == 17 * aot.GIB + 1024  # arguments + outputs - aliased + temp + code
    assert too_big.flops == 8e12
    aot.check_fits([fits, too_big], None, "cpu")  # no known limit: nothing to refuse
    aot.check_fits([fits], 16 * aot.GIB, "TPU v5e")
    with pytest.raises(
        aot.DoesNotFit, match=r"the train step needs 17.00 GiB per chip but a TPU v5e chip has 16"
    ):
        aot.check_fits([fits, too_big], 16 * aot.GIB, "TPU v5e")
    assert aot.DoesNotFit.exit_code == 1


def _compile_only(tmp_path: Path, *extra: str) -> subprocess.CompletedProcess:
    env = dict(
        os.environ,
        XLA_FLAGS="--xla_force_host_platform_device_count=8",
        JAX_PLATFORMS="cpu",
        HF_HUB_OFFLINE="1",
        PYTHONPATH=str(REPO),
    )
    cmd = [sys.executable, "-m", "autext_jax.train", "--config", str(REPO / "configs" / "tiny.py")]
    cmd += ["--workdir", str(tmp_path / "never"), "--compile-only", *extra]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)


def test_compile_only_on_the_attached_devices(tmp_path):
    proc = _compile_only(tmp_path, "--batch-per-device", "2", "--set", "mesh.fsdp=2")
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout)
    assert (out["devices"], out["batch_size"], out["topology"], out["fits"]) == (8, 16, None, True)
    train, evaluate = out["steps"]
    assert (train["step"], train["rows"], train["length"]) == ("train", 16, 32)  # 2 × data 4 × fsdp 2
    assert (evaluate["step"], evaluate["rows"], evaluate["length"]) == ("eval", 16, 32)
    assert train["bytes_per_chip"] > evaluate["bytes_per_chip"] > 0
    assert train["flops_per_chip"] > evaluate["flops_per_chip"] > 0
    assert "GiB/chip" in proc.stderr and "compiled for 8 × cpu" in proc.stderr
    assert not (tmp_path / "never").exists()  # no weights, no data, no workdir


def test_compile_only_refuses_an_unsplittable_batch(tmp_path):
    proc = _compile_only(tmp_path, "--set", "batch_size=6")
    assert proc.returncode == 2
    assert (
        proc.stderr.strip()
        .splitlines()[-1]
        .startswith("python -m autext_jax.train: error: batch_size=6 does not split over the 8 batch shards")
    )
