"""autext_jax: UPB's multi-task AuTexTification detector in pure JAX."""

import os

# We use transformers only for tokenizers; its "PyTorch was not found" advice is noise for our users.
os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")

from autext_jax.config import EncoderConfig, ModelConfig  # noqa: E402

__all__ = ["EncoderConfig", "ModelConfig", "load"]
__version__ = "0.1.0"


def load(model: str | None = None, **kwargs):
    """A detector from a local HF-layout directory, a Hub id, or (``None``) the embedded default model."""
    from autext_jax.api import load as _load

    return _load(model, **kwargs)
