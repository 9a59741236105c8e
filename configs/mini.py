"""Fine-tune the embedded mini model: multilingual-e5-small (from ``tools/import_e5.py``) + fresh heads.

Usage (from the repo root)::

    python -m autext_jax.train --config configs/mini.py --workdir runs/mini --init PATH_TO_E5_IMPORT

``--init`` is the encoder-only HF-layout directory written by ``tools/import_e5.py`` (12 layers,
hidden 384, 12 heads, FFN 1536; the vocabulary may be pruned by ``tools/prune_vocab.py``). The heads
start from random weights (the log says so) with the head settings below.

Recipe and why:
- data: the shared AuTexTification subtask-1 training files (EN + ES); 10% held out by a salted hash
  of (language, id) for validation and threshold tuning.
- max_length 128: most tweets and how-to snippets fit; longer legal texts are truncated (the engine
  can chunk at inference time).
- AdamW, LR 5e-5 with 6% linear warmup then linear decay to 0, weight decay 0.01 (not on biases or
  LayerNorm), global-norm clipping at 1.0: the standard BERT-style fine-tuning recipe, which is
  stable for small encoders at batch 32.
- layer_decay 0.9: lower layers of a retrieval-tuned encoder (e5) move less, which keeps its
  multilingual representations while the top layers and heads adapt.
- mean pooling: e5 was trained with mean-pooled embeddings, so the mean is a better starting
  sentence representation for fresh heads than the first token.
- 1 epoch, batch 32: one pass over ~53k rows (≈1,670 steps); evaluation every 500 steps, and the
  export's threshold is tuned on validation at the end. Scale ``epochs``/``max_steps`` by measured
  throughput (``tools/bench_train.py``).
"""

from pathlib import Path

from autext_jax.checkpointing import CheckpointConfig
from autext_jax.config import ModelConfig
from autext_jax.data import DataConfig
from autext_jax.optim import OptimizerConfig
from autext_jax.sharding import MeshConfig
from autext_jax.train_config import EvalConfig, TrainConfig

REPO = Path(__file__).resolve().parent.parent
DATA = REPO / ".." / "shared" / "data" / "autextification" / "subtask_1"


def get_config() -> TrainConfig:
    return TrainConfig(
        # Only the head settings matter here: the encoder comes from --init.
        model=ModelConfig(hidden_nodes=64, pooling="mean", head_activation="relu", head_dropout=0.1),
        data=DataConfig(paths=(str(DATA),), max_length=128, val_fraction=0.1, languages=("en", "es")),
        optimizer=OptimizerConfig(
            learning_rate=5e-5,
            warmup_fraction=0.06,
            weight_decay=0.01,
            max_grad_norm=1.0,
            layer_decay=0.9,
            grad_accum_steps=1,
        ),
        mesh=MeshConfig(data=-1),
        checkpoint=CheckpointConfig(every_steps=500, keep=2),
        eval=EvalConfig(every_steps=500, batch_size=128),
        batch_size=32,
        epochs=1,
        lang_loss_weight=1.0,
        dtype="float32",
        seed=0,
        log_every=50,
    )
