"""Run autext_jax training and scoring on a Cloud TPU slice: ``python -m tools.cloud_tpu COMMAND``.

Modules: ``gcloud`` (running gcloud, retries, the timestamped decision log), ``commands`` (the gcloud
command lines), ``source`` (packing the local checkout), ``remote`` (the shell scripts each worker runs),
``actions`` (create, setup, train, score, logs, delete), ``preflight`` (``watch``'s checks before anything
is billed), ``watch`` (the unattended relaunch loop) and ``__main__`` (the command line).
"""
