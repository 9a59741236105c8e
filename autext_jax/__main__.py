"""``python -m autext_jax``: the scoring command (same as ``python -m autext_jax.infer``)."""

import sys

from autext_jax.infer import main

sys.exit(main())
