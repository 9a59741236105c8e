"""autext_jax: UPB's multi-task AuTexTification detector in pure JAX."""

from autext_jax.config import EncoderConfig, ModelConfig

__all__ = ["EncoderConfig", "ModelConfig", "load"]
__version__ = "0.1.0"


def load(model: str | None = None, **kwargs):
    """A detector from a local HF-layout directory, a Hub id, or (``None``) the embedded default model."""
    from autext_jax.api import load as _load

    return _load(model, **kwargs)
