"""Logits of an exported model directory from the PyTorch reference (``reference_torch.py``): the
independent numbers that the JAX scores are checked against."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from tests.helpers.reference_torch import reference_from_model_config


def reference_logits(model_dir: Path, windows: list[list[int]]) -> tuple[np.ndarray, np.ndarray]:
    """float64 ``(bot, english)`` logits of each token window (special tokens included), one per row."""
    import torch
    from safetensors.torch import load_file

    from autext_jax.config import ModelConfig

    config = ModelConfig.load(model_dir)
    reference = reference_from_model_config(config)
    reference.load_state_dict(load_file(str(Path(model_dir) / "model.safetensors")), strict=True)
    reference.eval()
    pad = config.encoder.pad_token_id
    length = max(len(w) for w in windows)
    ids = torch.full((len(windows), length), pad, dtype=torch.long)
    mask = torch.zeros((len(windows), length), dtype=torch.long)
    for row, window in enumerate(windows):
        ids[row, : len(window)] = torch.tensor(window)
        mask[row, : len(window)] = 1
    with torch.no_grad():
        out = reference.logits({"input_ids": ids, "attention_mask": mask})
    return out["bot"].double().numpy(), out["english"].double().numpy()


def sigmoid(z) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.asarray(z, np.float64)))
