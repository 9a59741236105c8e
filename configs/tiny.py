"""Tiny random model (hidden 32, 2 layers) for tests and smoke runs: seconds per epoch on a CPU.

No pretrained weights: pass a tokenizer with at most 259 pieces (``--set tokenizer=DIR``; the test
suite builds one) and data (``--set data.paths=FILE_OR_DIR``). Default data: the shared
AuTexTification subtask-1 files (``../shared/data/autextification/subtask_1`` from the repo).
"""

from pathlib import Path

from autext_jax.config import EncoderConfig, ModelConfig
from autext_jax.data.dataset import DataConfig
from autext_jax.train.config import CheckpointConfig, EvalConfig, TrainConfig
from autext_jax.train.optim import OptimizerConfig
from autext_jax.train.sharding import MeshConfig

REPO = Path(__file__).resolve().parent.parent
DATA = REPO / ".." / "shared" / "data" / "autextification" / "subtask_1"


def get_config() -> TrainConfig:
    encoder = EncoderConfig(
        vocab_size=259,
        hidden_size=32,
        num_layers=2,
        num_heads=4,
        intermediate_size=64,
        max_position_embeddings=514,
    )
    return TrainConfig(
        model=ModelConfig(encoder=encoder, hidden_nodes=8, threshold=0.5, transformer_name="tiny"),
        data=DataConfig(paths=(str(DATA),), max_length=32, val_fraction=0.2, smallest_bucket=16),
        optimizer=OptimizerConfig(
            learning_rate=3e-3, warmup_fraction=0.1, weight_decay=0.01, max_grad_norm=1.0
        ),
        mesh=MeshConfig(data=-1),
        checkpoint=CheckpointConfig(every_steps=10, keep=2, async_save=True),
        eval=EvalConfig(every_steps=0, batch_size=16),
        batch_size=8,
        epochs=1,
        log_every=5,
        seed=0,
    )
