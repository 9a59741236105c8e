"""Training's finish step writes ``calibration.json`` (maps, operating points) into the export."""

from __future__ import annotations

import os
import random
import subprocess
import sys
from pathlib import Path

import numpy as np

import autext_jax
from autext_jax import calibration as calib

REPO = Path(__file__).resolve().parent.parent
WORDS = {
    "en": ("the of and to in is that it".split(), "for on with as was by this are".split()),
    "es": ("el la de que y en los se".split(), "del las un por con una para es".split()),
}


def write_data(root: Path, rows: int = 80) -> Path:
    """Generated rows use one set of words, human rows another (learnable in a few steps)."""
    rng = random.Random(0)
    for lang, (human, generated) in WORDS.items():
        (root / lang).mkdir(parents=True)
        lines = ["id\ttext\tlabel"]
        for i in range(rows):
            gen = rng.random() < 0.5
            words = [rng.choice(generated if gen else human) for _ in range(rng.randint(3, 12))]
            lines.append(f"{i}\t{' '.join(words)}\t{'generated' if gen else 'human'}")
        (root / lang / "train.tsv").write_text("\n".join(lines) + "\n")
    return root


def test_finish_writes_calibration_from_validation(tmp_path, tiny_tokenizer_dir):
    data = write_data(tmp_path / "data")
    env = dict(os.environ, HF_HUB_OFFLINE="1", JAX_PLATFORMS="cpu", HF_DATASETS_CACHE=str(tmp_path / "hf"))
    env["XLA_FLAGS"] = "--xla_backend_optimization_level=0"
    cmd = [sys.executable, "-m", "autext_jax.train", "--config", str(REPO / "configs" / "tiny.py")]
    cmd += ["--set", f"tokenizer={tiny_tokenizer_dir}", "--set", f"data.paths={data}"]
    cmd += ["--set", "data.max_length=16", "--set", "progress=false", "--max-steps", "40"]
    cmd += ["--workdir", str(tmp_path / "run")]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    export = tmp_path / "run" / "export"
    fitted = calib.load(export)
    assert fitted is not None and fitted.bot.method == "platt" and fitted.bot.scale > 0
    assert set(fitted.operating_points) == {"fpr=0.001", "fpr=0.01", "fpr=0.05"}
    assert fitted.fitted_on["rows"] > 0 and 2 < fitted.min_tokens <= 16
    assert "calibration on" in proc.stderr and "ECE" in proc.stderr

    calibrated = autext_jax.load(str(export), max_length=16)
    raw = autext_jax.load(str(export), max_length=16, calibrated=False)
    texts = [line.split("\t")[1] for line in (data / "en" / "train.tsv").read_text().splitlines()[1:]]
    np.testing.assert_array_equal(calibrated.score(texts)["is_bot"], raw.score(texts)["is_bot"])
    for name, point in fitted.operating_points.items():
        assert point.fpr <= point.target_fpr and calibrated.operating_points[name] == point.threshold
