"""autext_jax: UPB's multi-task AuTexTification detector in pure JAX."""

import os
import sys

# We use transformers only for tokenizers; its "PyTorch was not found" advice is noise for our users.
os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")


def _is_scoring_cli(argv: list[str]) -> bool:
    """Whether this process is ``autext-jax`` / ``python -m autext_jax[.infer]`` (not a library user)."""
    if len(argv) > 2 and argv[1] == "-m":
        return argv[2] in ("autext_jax", "autext_jax.infer")
    return len(argv) > 1 and os.path.basename(argv[1]) == "autext-jax"


if _is_scoring_cli(getattr(sys, "orig_argv", [])):  # Ctrl-C/SIGTERM handled from the first moment
    from autext_jax.signals import STOP

    STOP.install()

from autext_jax.config import EncoderConfig, ModelConfig  # noqa: E402

__all__ = ["EncoderConfig", "ModelConfig", "load"]
__version__ = "0.1.0"


def load(model: str | None = None, **kwargs):
    """A detector from a local HF-layout directory, a Hub id, or (``None``) the embedded default model."""
    from autext_jax.api import load as _load

    return _load(model, **kwargs)
