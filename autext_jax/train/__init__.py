"""Training: ``python -m autext_jax.train`` (``__main__``), the run (``loop``) and what it is built from.

Scoring never imports this package; training imports scoring's model, loader and data.
"""
