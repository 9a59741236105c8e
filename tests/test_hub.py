"""Model resolution: default, local directories, Hub ids (offline here), and what a download may fetch."""

from __future__ import annotations

import fnmatch
import os
import subprocess
import sys
from pathlib import Path

import pytest

from autext_jax import hub
from autext_jax.hub import ModelNotFoundError, resolve_model_dir

PUBLISHED_FILES = [
    "config.json",
    "config.py",
    "model.py",
    "model.safetensors",
    "sentencepiece.bpe.model",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "pytorch_model.bin",
    "README.md",
]


def _fetched(kwargs: dict) -> set[str]:
    """The published files that snapshot_download would fetch with these patterns."""
    allow, ignore = kwargs["allow_patterns"], kwargs.get("ignore_patterns") or []
    return {
        name
        for name in PUBLISHED_FILES
        if any(fnmatch.fnmatch(name, p) for p in allow) and not any(fnmatch.fnmatch(name, p) for p in ignore)
    }


def test_default_model_dir(monkeypatch, tmp_path) -> None:
    monkeypatch.setattr(hub, "DEFAULT_MODEL_DIR", tmp_path / "absent")
    with pytest.raises(ModelNotFoundError, match="embedded default model is missing"):
        resolve_model_dir(None)
    (tmp_path / "config.json").write_text("{}")
    monkeypatch.setattr(hub, "DEFAULT_MODEL_DIR", tmp_path)
    assert resolve_model_dir(None) == tmp_path


def test_local_paths(tmp_path) -> None:
    assert resolve_model_dir(tmp_path) == tmp_path
    assert resolve_model_dir(str(tmp_path)) == tmp_path
    (tmp_path / "model.safetensors").write_bytes(b"x")
    with pytest.raises(ModelNotFoundError, match="is a file; pass the model's directory"):
        resolve_model_dir(tmp_path / "model.safetensors")
    with pytest.raises(ModelNotFoundError, match="does not exist"):
        resolve_model_dir(tmp_path / "missing" / "model")
    with pytest.raises(ModelNotFoundError, match="does not exist"):
        resolve_model_dir("./not/here")


def test_download_fetches_only_weights_config_and_tokenizer(monkeypatch, tmp_path) -> None:
    import huggingface_hub

    calls = []

    def fake_snapshot_download(repo_id, **kwargs):
        calls.append((repo_id, kwargs))
        return str(tmp_path)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_snapshot_download)
    assert resolve_model_dir("pandrei7/autextification-upb-mtl") == tmp_path
    assert calls[0][0] == "pandrei7/autextification-upb-mtl"
    assert _fetched(calls[0][1]) == {
        "config.json",
        "model.safetensors",
        "sentencepiece.bpe.model",
        "tokenizer.json",
        "tokenizer_config.json",
        "special_tokens_map.json",
    }
    resolve_model_dir("owner/name", allow_pickle=True)
    assert "pytorch_model.bin" in _fetched(calls[1][1]) and "model.py" not in _fetched(calls[1][1])
    resolve_model_dir("owner/name", allow_code=True)  # tools/parity_check.py only
    assert {"model.py", "config.py"} <= _fetched(calls[2][1])


def test_offline_cached_snapshot_is_used(tmp_path) -> None:
    """With HF_HUB_OFFLINE=1 a snapshot already in the cache still resolves."""
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "models--owner--cached"
    snapshot = repo / "snapshots" / commit
    snapshot.mkdir(parents=True)
    (snapshot / "config.json").write_text("{}")
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    assert resolve_model_dir("owner/cached", cache_dir=tmp_path) == snapshot


def test_offline_hub_id_fails_fast_with_one_line(tmp_path) -> None:
    code = (
        "import time\n"
        "from autext_jax.hub import resolve_model_dir, ModelNotFoundError\n"
        "t = time.perf_counter()\n"
        "try:\n"
        "    resolve_model_dir('pandrei7/autextification-upb-mtl')\n"
        "except ModelNotFoundError as err:\n"
        "    print(f'{time.perf_counter() - t:.3f}')\n"
        "    print(err)\n"
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(tmp_path)}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=60)
    lines = done.stdout.splitlines()
    assert len(lines) == 2, done.stdout + done.stderr
    assert float(lines[0]) < 5.0
    assert "HF_HUB_OFFLINE" in lines[1] and "pass its local directory" in lines[1]


def test_hub_id_shape() -> None:
    assert hub.looks_like_hub_id("pandrei7/autextification-upb-mtl")
    assert hub.looks_like_hub_id("xlm-roberta-base")
    for not_an_id in ("./model", "../x/y", "~/m", "/abs/path", "a/b/c"):
        assert not hub.looks_like_hub_id(not_an_id), not_an_id


def test_default_dir_location() -> None:
    assert hub.DEFAULT_MODEL_DIR == Path(hub.__file__).parent / "assets" / "autext-jax-mini"
