"""Our recipe for the full-size detector on a GPU or TPU: xlm-roberta-base + the two heads.

Usage::

    python -m autext_jax.train --config configs/upb_mtl.py --workdir runs/upb \\
        --init FacebookAI/xlm-roberta-base            # encoder only: heads start fresh
    # or continue from the published model (heads included):
    #   --init pandrei7/autextification-upb-mtl

This reproduces the architecture of UPB's published multi-task model (``hidden_nodes`` 64, CLS
pooling, ReLU heads, threshold tuned on validation); the optimisation settings are our own
recipe, not taken from the original training code. It needs an accelerator: ~278M parameters,
i.e. about 1.1 GB in fp32 plus 2.2 GB of Adam moments.

- bf16 compute, fp32 parameters and optimizer state (``dtype='bfloat16'``).
- max_length 256: holds tweets and how-to texts whole and most legal texts' openings, at a quarter
  of the attention cost of 512 (longer texts are truncated for training; inference can chunk).
- batch 32, LR 2e-5 with 10% warmup and linear decay, weight decay 0.01 (not on biases/LayerNorm),
  clipping at 1.0, layer-wise LR decay 0.95: the usual stable settings for fine-tuning an
  XLM-R base encoder; 3 epochs (≈5,000 steps on the ~53k training rows).
- Mesh: all devices on ``data``; ``--set mesh.fsdp=N`` shards parameters and Adam moments over N
  devices (the logical-axis rules live in ``autext_jax/train/sharding.py``).
- Pod slices: unchanged from v4-8 to v5e-32 (the batch of 32 splits over up to 32 chips); on v5e-64
  add ``--batch-per-device 1`` (or ``--set batch_size=64``). Check a slice without one:
  ``--compile-only --topology v5e-16``. Cloud TPU: ``--distributed auto`` on every worker, or
  ``python -m tools.cloud_tpu`` (README, "Training on Cloud TPU"); elsewhere one process per host with
  ``--coordinator HOST:PORT --num-processes N --process-id I``.
"""

from pathlib import Path

from autext_jax.config import ModelConfig
from autext_jax.data.dataset import DataConfig
from autext_jax.train.config import CheckpointConfig, EvalConfig, TrainConfig
from autext_jax.train.optim import OptimizerConfig
from autext_jax.train.sharding import MeshConfig

REPO = Path(__file__).resolve().parent.parent
DATA = REPO / ".." / "shared" / "data" / "autextification" / "subtask_1"


def get_config() -> TrainConfig:
    return TrainConfig(
        model=ModelConfig(hidden_nodes=64, pooling="cls", head_activation="relu", head_dropout=0.1),
        data=DataConfig(paths=(str(DATA),), max_length=256, val_fraction=0.1, languages=("en", "es")),
        optimizer=OptimizerConfig(
            learning_rate=2e-5,
            warmup_fraction=0.1,
            weight_decay=0.01,
            max_grad_norm=1.0,
            layer_decay=0.95,
        ),
        mesh=MeshConfig(data=-1, fsdp=1, tensor=1),
        checkpoint=CheckpointConfig(every_steps=1000, keep=3),
        eval=EvalConfig(every_steps=1000, batch_size=256),
        init="FacebookAI/xlm-roberta-base",
        batch_size=32,
        epochs=3,
        lang_loss_weight=1.0,
        dtype="bfloat16",
        seed=0,
        log_every=50,
    )
