"""``python -m autext_jax``: the scoring command (same as ``python -m autext_jax.infer``)."""

from autext_jax.infer import run_and_exit

run_and_exit()
