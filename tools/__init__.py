"""Operator tools beside the package, run from the repository root as ``python -m tools.NAME``.

``inspect_checkpoint`` and ``parity_check`` read model files; ``export_checkpoint`` turns a training
checkpoint into a model directory; ``cloud_tpu`` runs training on a Cloud TPU slice; ``group_study``
and ``make_default_model.sh`` build and study the embedded default model; ``e5/`` imports the
multilingual-e5 encoder it starts from.
"""
