"""Shared fixtures: a tiny XLM-R-style tokenizer and tiny model configs (tests never need ../shared)."""

from __future__ import annotations

import atexit
import functools
import os
import shutil
import string
import tempfile
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
# The CLI's persistent compilation cache (on by default) goes to a throwaway folder, never ~/.cache.
_CACHE = tempfile.mkdtemp(prefix="autext-test-xla-")
os.environ["AUTEXT_JAX_COMPILE_CACHE"] = _CACHE
atexit.register(shutil.rmtree, _CACHE, True)

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
from flax import nnx  # noqa: E402

from autext_jax.config import EncoderConfig, ModelConfig  # noqa: E402

_WORDS = (
    "the of and to in is that it for on with as was by this are be at from "
    "el la de que y en los se del las un por con una para es"
).split()
_CHARS = list(string.ascii_letters + string.digits + string.punctuation + "áéíóúñüÁÉÍÓÚÑ¿¡")


def build_tiny_tokenizer(directory: Path) -> Path:
    """A 259-piece unigram tokenizer with XLM-R's special-token ids (<s>=0, <pad>=1, </s>=2, <unk>=3)."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
    from transformers import XLMRobertaTokenizer

    pieces = [(p, 0.0) for p in ("<s>", "<pad>", "</s>", "<unk>")]
    pieces += [("▁", -2.0)] + [("▁" + w, -3.0) for w in _WORDS]
    pieces += [(c, -5.0) for c in _CHARS] + [("▁" + c, -5.5) for c in _CHARS] + [("<mask>", 0.0)]
    tok = Tokenizer(models.Unigram(pieces, unk_id=3, byte_fallback=False))
    tok.normalizer = normalizers.NFKC()
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")
    tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always")
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A </s>",
        pair="<s> $A </s> </s> $B </s>",
        special_tokens=[("<s>", 0), ("</s>", 2)],
    )
    hf = XLMRobertaTokenizer(
        tokenizer_object=tok,
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        pad_token="<pad>",
        cls_token="<s>",
        sep_token="</s>",
        mask_token="<mask>",
        model_max_length=512,
    )
    hf.save_pretrained(directory)
    return directory


TINY_VOCAB = 259


def tiny_encoder_config(**changes) -> EncoderConfig:
    """2 layers, hidden 32, 4 heads: fast everywhere, yet every code path of the full model."""
    base = dict(
        vocab_size=TINY_VOCAB,
        hidden_size=32,
        num_layers=2,
        num_heads=4,
        intermediate_size=64,
        max_position_embeddings=514,
    )
    base.update(changes)
    return EncoderConfig(**base)


def tiny_model_config(**changes) -> ModelConfig:
    encoder_changes = changes.pop("encoder_changes", {})
    base = dict(encoder=tiny_encoder_config(**encoder_changes), hidden_nodes=8, threshold=0.5)
    base.update(changes)
    return ModelConfig(**base)


@pytest.fixture(scope="session")
def tiny_tokenizer_dir(tmp_path_factory) -> Path:
    return build_tiny_tokenizer(tmp_path_factory.mktemp("tiny_tokenizer"))


@pytest.fixture(scope="session")
def tiny_config() -> ModelConfig:
    return tiny_model_config()


TINY_MODEL_SEED = 0
HEAD_SPREAD = 0.7


def spread_heads(model: nnx.Module, seed: int, scale: float = HEAD_SPREAD) -> nnx.Module:
    """Give both heads large random kernels (std ``scale``), in place, and return the model.

    A fresh model's heads are so small that every text scores within ~1e-3 of 0.5, so a test comparing
    scores could not tell two texts, a plain from a weighted mean, or a constant 0.5 from the model.
    With these kernels the logits span several units and different texts get clearly different scores.
    """
    rng = np.random.default_rng(seed)
    for head in (model.bot_head, model.lang_head):
        for linear in (head.hidden, head.out):
            linear.kernel.set_value(jnp.asarray(rng.normal(0.0, scale, linear.kernel.shape), jnp.float32))
    return model


ENCODER_GAIN = 8.0


def discriminative_model(cfg: ModelConfig, seed: int) -> nnx.Module:
    """A random model whose scores tell texts apart: the fixture for tests that compare scores.

    At XLM-R's init (std 0.02) a tiny encoder's pooled vector barely depends on the text (relative spread
    ~2e-3), so no head can separate texts. Encoder kernels ``ENCODER_GAIN`` times larger make attention and
    the feed-forward blocks matter (relative spread ~0.3); heads at unit gain (std 1/sqrt(fan-in)) then give
    logits of order 1, so probabilities spread over (0, 1) without saturating.
    """
    from autext_jax.model import create_model

    model = create_model(cfg, seed=seed)
    for _, node in nnx.iter_graph(model.encoder):
        if isinstance(node, nnx.Linear):
            node.kernel.set_value(node.kernel.get_value() * ENCODER_GAIN)
    rng = np.random.default_rng(seed)
    for head in (model.bot_head, model.lang_head):
        for linear in (head.hidden, head.out):
            fan_in = linear.kernel.shape[0]
            kernel = rng.normal(0.0, 1.0 / np.sqrt(fan_in), linear.kernel.shape)
            linear.kernel.set_value(jnp.asarray(kernel, jnp.float32))
    return model


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, tiny_tokenizer_dir, tiny_config) -> Path:
    """A random tiny model (``discriminative_model``, seed ``TINY_MODEL_SEED``) exported in the published
    HF layout + tiny tokenizer.

    Read-only for tests: copy it first if a test must modify files.
    """
    from autext_jax.convert import export_checkpoint

    out = tmp_path_factory.mktemp("tiny_model")
    model = discriminative_model(tiny_config, seed=TINY_MODEL_SEED)
    return export_checkpoint(model, tiny_config, out, tokenizer_dir=tiny_tokenizer_dir)


@functools.partial(jax.jit, static_argnums=0)
def _forward(graphdef: nnx.GraphDef, state: nnx.State, input_ids: jax.Array, attention_mask: jax.Array):
    model = nnx.merge(graphdef, state)
    model.eval()  # the traced copy only: dropout off, the caller's model is untouched
    return model(input_ids, attention_mask)


def forward_logits(model: nnx.Module, input_ids, attention_mask) -> dict[str, jax.Array]:
    """fp32 logits ``{"bot", "english"}`` of ``model`` in eval mode, unpacked rows (the training path)."""
    graphdef, state = nnx.split(model)
    return _forward(graphdef, state, jnp.asarray(input_ids), jnp.asarray(attention_mask))


def scores_with_labels(n: int, seed: int, ties: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Labels and bot probabilities that are informative but imperfect (optionally with many ties)."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, size=n)
    probs = np.clip(0.5 + 0.25 * (labels - 0.5) + rng.normal(0, 0.2, size=n), 0, 1).astype(np.float32)
    if ties:
        probs = np.round(probs, 1).astype(np.float32)
    return labels, probs


# ---- the training CLI and the GCS emulator (fixtures of several test modules; helpers in tests/helpers) ----


@pytest.fixture(scope="module")
def setup(tmp_path_factory, tiny_tokenizer_dir):
    """Learnable data, the environment and the base arguments of training CLI runs (one per module)."""
    from tests.helpers.training import training_setup

    return training_setup(tmp_path_factory.mktemp("train_cli"), tiny_tokenizer_dir)


@pytest.fixture(scope="module")
def gcs(tmp_path_factory):
    """A GCS emulator for this module (bucket ``bkt``; uploads under ``REFUSED`` answered 403): its env."""
    pytest.importorskip("gcsfs")
    pytest.importorskip("gcp_storage_emulator")
    from tests.helpers.gcs import BUCKET, EMULATOR, REFUSED, _gcs_env, start_emulator

    log = tmp_path_factory.mktemp("gcs_emulator") / "emulator.log"
    proc, port = start_emulator([str(EMULATOR), BUCKET, REFUSED], log)
    yield _gcs_env(port)
    proc.kill()
    proc.wait(timeout=10)


@pytest.fixture
def gs_in_process(gcs, monkeypatch):
    """This process's gs:// filesystem pointed at the emulator."""
    import gcsfs

    from autext_jax import paths

    for key, value in gcs.items():
        monkeypatch.setenv(key, value)
    paths._filesystem.cache_clear()
    gcsfs.GCSFileSystem.clear_instance_cache()
    yield paths.filesystem("gs://x")
    paths._filesystem.cache_clear()
    gcsfs.GCSFileSystem.clear_instance_cache()
