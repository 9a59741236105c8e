"""Training FLOPs per step (from the encoder's shape) and MFU against the accelerator's peak.

The count is the usual dense-transformer estimate: 3 × the forward matmuls (forward + two for the
backward pass), attention scores and values included, embeddings and the small heads left out.
It counts padded positions, because the hardware computes them.
"""

from __future__ import annotations

from autext_jax.config import EncoderConfig

# Dense bf16 peak FLOP/s per chip, by ``jax.Device.device_kind`` prefix (vendors' data sheets).
PEAK_FLOPS = (
    ("TPU v6", 918e12),
    ("TPU v5 lite", 197e12),
    ("TPU v5e", 197e12),
    ("TPU v5", 459e12),
    ("TPU v4", 275e12),
    ("NVIDIA H200", 989e12),
    ("NVIDIA H100", 989e12),
    ("NVIDIA A100", 312e12),
)


def train_flops(encoder: EncoderConfig, batch: int, seq_len: int) -> float:
    """FLOPs of one training step on a ``batch × seq_len`` batch."""
    h, inner = encoder.hidden_size, encoder.intermediate_size
    per_token_layer = 2 * (4 * h * h + 2 * h * inner) + 2 * 2 * seq_len * h
    return 3.0 * per_token_layer * encoder.num_layers * batch * seq_len


def peak_flops(device_kind: str) -> float | None:
    """The chip's peak, or ``None`` when unknown (CPUs): then no MFU is reported."""
    for prefix, peak in PEAK_FLOPS:
        if device_kind.startswith(prefix):
            return peak
    return None


def mfu(flops: float, seconds: float, device_kind: str, num_devices: int) -> float | None:
    peak = peak_flops(device_kind)
    if peak is None or seconds <= 0:
        return None
    return flops / seconds / (peak * num_devices)
