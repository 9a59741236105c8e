"""tools/inspect_checkpoint.py and tools/parity_check.py, on real files."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import bench_convert  # noqa: E402

from tools import export_checkpoint as export_tool  # noqa: E402
from tools import inspect_checkpoint, parity_check  # noqa: E402


def _cli(tool: str, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    cmd = [sys.executable, "-m", f"tools.{tool.removesuffix('.py')}", *args]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=120, cwd=ROOT)


# ---- inspect_checkpoint ------------------------------------------------------------------------


def test_inspect_prints_every_tensor_and_its_path(tiny_model_dir) -> None:
    done = _cli("inspect_checkpoint.py", str(tiny_model_dir))
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    n_tensors = len(load_file(str(tiny_model_dir / "model.safetensors")))
    assert f"{n_tensors} tensors" in done.stdout
    row = next(
        line for line in lines if line.startswith("transformer.encoder.layer.1.attention.self.query.weight")
    )
    assert (
        "[32, 32]" in row
        and "F32" in row
        and "-> encoder.layers.1.attention.query.kernel (transposed)" in row
    )
    row = next(line for line in lines if line.startswith("transformer.embeddings.LayerNorm.weight"))
    assert "-> encoder.embeddings.norm.scale" in row
    assert '"num_layers": 2' in done.stdout and '"hidden_nodes": 8' in done.stdout


def test_inspect_reads_only_the_header(tmp_path, tiny_model_dir, capsys) -> None:
    """A file cut right after its header still inspects: no tensor data is read."""
    state = load_file(str(tiny_model_dir / "model.safetensors"))
    renamed = {
        "roberta." + k[len("transformer.") :] if k.startswith("transformer.") else k: v
        for k, v in state.items()
    }
    renamed["roberta.embeddings.position_ids"] = np.arange(4)[None]
    full = tmp_path / "full.safetensors"
    save_file(renamed, str(full))
    raw = full.read_bytes()
    header_end = 8 + int.from_bytes(raw[:8], "little")
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(raw[: header_end + 16])
    assert inspect_checkpoint.main([str(cut)]) == 0
    out = capsys.readouterr().out
    assert "roberta.encoder.layer.0.output.dense.weight" in out
    assert "as transformer.encoder.layer.0.output.dense.weight -> encoder.layers.0.output.kernel" in out
    assert "roberta.embeddings.position_ids" in out and "(ignored: known extra)" in out


def test_inspect_flags_unmapped_tensors_and_key_map_fixes_them(tmp_path, tiny_model_dir, capsys) -> None:
    state = load_file(str(tiny_model_dir / "model.safetensors"))
    state["classifier.dense.weight"] = state.pop("bot_head.0.weight")
    path = tmp_path / "m.safetensors"
    save_file(state, str(path))
    assert inspect_checkpoint.main([str(path)]) == 1
    out = capsys.readouterr().out
    assert "classifier.dense.weight" in out and "UNMAPPED" in out
    key_map = tmp_path / "map.json"
    key_map.write_text(json.dumps({"classifier.dense.weight": "bot_head.0.weight"}))
    assert inspect_checkpoint.main([str(path), "--key-map", str(key_map)]) == 0
    assert "as bot_head.0.weight -> bot_head.hidden.kernel" in capsys.readouterr().out


def test_inspect_bad_input_is_one_line(tmp_path, capsys) -> None:
    bogus = tmp_path / "model.safetensors"
    bogus.write_text("definitely not a checkpoint")
    done = _cli("inspect_checkpoint.py", str(bogus))
    assert done.returncode == 1 and done.stdout == ""  # bad input data, in the project's exit-code scheme
    assert done.stderr.count("\n") == 1 and "not a safetensors file" in done.stderr
    assert inspect_checkpoint.main([str(tmp_path / "missing")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_inspect_header_entry_without_shape_names_the_tensor(tmp_path, capsys) -> None:
    header = json.dumps({"bot_head.0.weight": {"dtype": "F32", "data_offsets": [0, 4]}}).encode()
    path = tmp_path / "no_shape.safetensors"
    path.write_bytes(len(header).to_bytes(8, "little") + header + b"\0" * 4)
    assert inspect_checkpoint.main([str(path)]) == 1
    err = capsys.readouterr().err.strip()
    expected = f"{path}: header entry for tensor 'bot_head.0.weight' has no shape"
    assert err == f"inspect_checkpoint: error: {expected}"


# ---- parity_check ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def parity_dir(tiny_model_dir, tmp_path_factory) -> Path:
    """The tiny export plus our torch reference as its ``model.py`` (its config class is inside it)."""
    directory = tmp_path_factory.mktemp("parity")
    for path in tiny_model_dir.iterdir():
        shutil.copy(path, directory)
    shutil.copy(ROOT / "tests" / "helpers" / "reference_torch.py", directory / "model.py")
    # As files saved by transformers 4.25: the position_ids buffer is stored too.
    state = load_file(str(directory / "model.safetensors"))
    state["transformer.embeddings.position_ids"] = np.arange(514, dtype=np.int64)[None]
    save_file(state, str(directory / "model.safetensors"))
    return directory


def test_parity_check_passes_on_matching_models(parity_dir, capsys) -> None:
    assert parity_check.main([str(parity_dir)]) == 0
    out = capsys.readouterr().out
    for case in ("single/en", "single/es", "batch_padded", "long_truncated", "engine_raw"):
        assert case in out
    assert "tokens  512" in out and "PASS" in out


HF_STYLE_CONFIG_PY = """
from transformers import PretrainedConfig


class AutextificationMTLConfig(PretrainedConfig):
    model_type = "custom-text-classifier"

    def __init__(self, transformer_name="xlm-roberta-base", hidden_nodes=64, threshold=0.5, **kwargs):
        self.transformer_name = transformer_name
        self.hidden_nodes = hidden_nodes
        self.threshold = threshold
        super().__init__(**kwargs)
"""

HF_STYLE_MODEL_PY = """
import torch
from torch import nn
from transformers import AutoConfig, AutoModel, PreTrainedModel

from .config import AutextificationMTLConfig


def _head(hidden, nodes):
    return nn.Sequential(nn.Linear(hidden, nodes), nn.ReLU(), nn.Linear(nodes, 1))


class AutextificationMTLModel(PreTrainedModel):
    config_class = AutextificationMTLConfig

    def __init__(self, config):
        super().__init__(config)
        self.transformer = AutoModel.from_config(AutoConfig.from_pretrained(config.transformer_name))
        hidden = self.transformer.config.hidden_size
        self.bot_head = _head(hidden, config.hidden_nodes)
        self.lang_head = _head(hidden, config.hidden_nodes)

    def forward(self, batch):
        cls = self.transformer(**batch).last_hidden_state[:, 0]
        bot_prob = torch.sigmoid(self.bot_head(cls)).squeeze(-1)
        english_prob = torch.sigmoid(self.lang_head(cls)).squeeze(-1)
        is_bot = bot_prob >= self.config.threshold
        return {"is_bot": is_bot, "bot_prob": bot_prob, "english_prob": english_prob}
"""


def test_parity_check_builds_a_pretrained_model_with_relative_imports(parity_dir, tmp_path, capsys) -> None:
    """Another plausible shape of the original: PreTrainedModel, separate config.py, AutoConfig lookup."""
    other = tmp_path / "hf_style"
    shutil.copytree(parity_dir, other)
    (other / "config.py").write_text(HF_STYLE_CONFIG_PY)
    (other / "model.py").write_text(HF_STYLE_MODEL_PY)
    assert parity_check.main([str(other), "--max-length", "32"]) == 0, capsys.readouterr()
    assert "PASS" in capsys.readouterr().out


def test_parity_check_fails_when_the_original_differs(parity_dir, tmp_path, capsys) -> None:
    tampered = tmp_path / "tampered"
    shutil.copytree(parity_dir, tampered)
    code = (tampered / "model.py").read_text()
    # The "original" uses tanh where the config (and our port) say relu.
    (tampered / "model.py").write_text(code + '\n_ACTIVATIONS["relu"] = nn.Tanh\n')
    assert parity_check.main([str(tampered), "--tolerance", "1e-5", "--max-length", "32"]) == 1
    verdict = capsys.readouterr().out.splitlines()[-1]
    assert verdict.startswith("FAIL: worst |diff|") and float(verdict.split()[3]) > 1e-5


def test_parity_check_needs_model_py(tiny_model_dir) -> None:
    done = _cli("parity_check.py", str(tiny_model_dir))
    assert done.returncode == 2 and "no model.py" in done.stderr and "Traceback" not in done.stderr


# ---- bench_convert -----------------------------------------------------------------------------


def test_bench_convert_measures_a_random_checkpoint(tmp_path, tiny_config) -> None:
    """The full-size run writes 1.1 GB; the same code path on the tiny config."""
    from autext_jax.model import abstract_model, count_params

    bench_convert.write_random_checkpoint(tmp_path, tiny_config)
    report = bench_convert.convert_and_measure(tmp_path)
    assert report["params"] == count_params(abstract_model(tiny_config))
    assert report["convert_seconds"] > 0 and report["peak_rss_mib"] >= report["rss_after_imports_mib"] > 0
    assert bench_convert.PUBLISHED_CONFIG_JSON["transformer_name"] == "xlm-roberta-base"


# ---- export_checkpoint -------------------------------------------------------------------------


def test_export_tool_float16_halves_the_file_and_keeps_scores(tmp_path, tiny_model_dir, capsys) -> None:
    from autext_jax.convert import load_checkpoint

    out = tmp_path / "fp16"
    argv = [str(tiny_model_dir), str(out), "--storage-dtype", "float16", "--transformer-name", "tiny-e5"]
    assert export_tool.main(argv) == 0
    printed = capsys.readouterr().out
    assert f"sha256 {export_tool.sha256(out / 'model.safetensors')}  model.safetensors" in printed
    assert "ok" in printed.splitlines()[-1]
    stored = load_file(str(out / "model.safetensors"))
    assert {v.dtype for v in stored.values() if v.ndim >= 2} == {np.dtype(np.float16)}
    assert {v.dtype for v in stored.values() if v.ndim == 1} == {np.dtype(np.float32)}
    full, half = (p / "model.safetensors" for p in (tiny_model_dir, out))
    assert half.stat().st_size < 0.6 * full.stat().st_size
    assert json.loads((out / "config.json").read_text())["torch_dtype"] == "float16"
    reloaded = load_checkpoint(out)
    assert reloaded.config == load_checkpoint(tiny_model_dir).config.replace(transformer_name="tiny-e5")

    # float16 rounding is visible with a zero tolerance: the check really compares scores.
    assert export_tool.main([str(tiny_model_dir), str(tmp_path / "strict"), "--storage-dtype", "float16",
                             "--tolerance", "0"]) == 1
    assert export_tool.main([str(tiny_model_dir), str(tiny_model_dir)]) == 2
    assert "error: OUT must differ from SRC" in capsys.readouterr().err
    assert export_tool.main([str(tmp_path / "nowhere"), str(tmp_path / "o")]) == 2  # a wrong path: usage
    assert "does not exist" in capsys.readouterr().err
