# The scoring service with the embedded model, as a container:
#   docker build -t autext-jax .
#   docker run -p 8000:8000 -e AUTEXT_JAX_API_KEY=change-me autext-jax
# It listens on 0.0.0.0 inside the container, so it refuses to start without an API key
# (AUTEXT_JAX_API_KEY, or --api-key after the image name). tests/test_serve_network.py runs this file's CMD
# and HEALTHCHECK commands against a real server process; hadolint lints it.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    HF_HUB_OFFLINE=1 \
    AUTEXT_JAX_PORT=8000

RUN useradd --create-home --uid 10001 autext
WORKDIR /app

# The package with its embedded model (autext_jax/assets) and the serve extra; CPU JAX from PyPI.
# (DL3013 asks to pin what pip installs: this is the checkout itself, its dependencies ranged in pyproject.)
COPY pyproject.toml README.md ./
COPY autext_jax ./autext_jax
# hadolint ignore=DL3013
RUN pip install --no-cache-dir ".[serve]"

USER 10001
EXPOSE 8000
HEALTHCHECK --interval=30s --timeout=5s --start-period=120s --retries=3 \
    CMD ["python", "-m", "autext_jax.serve.healthcheck"]
CMD ["python", "-m", "autext_jax.serve", "--host", "0.0.0.0", "--access-log", "--log-format", "json"]
