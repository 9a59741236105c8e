"""``python -m autext_jax.serve.healthcheck``: exit 0 when the local service answers ``/healthz``, else 1.

Why a module rather than ``curl``: slim images have no curl, and the Dockerfile's ``HEALTHCHECK`` runs this
with the port the service listens on (``$AUTEXT_JAX_PORT``, else 8000).
"""

from __future__ import annotations

import os
import sys
import urllib.request


def main() -> int:
    port = os.environ.get("AUTEXT_JAX_PORT", "8000")
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5) as answer:
            return 0 if answer.status == 200 else 1
    except OSError as error:
        print(f"autext_jax.serve.healthcheck: port {port}: {error}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
