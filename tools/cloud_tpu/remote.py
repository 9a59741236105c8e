"""The shell scripts every worker runs (through ``gcloud ... ssh --command``): install the shipped code into
a uv-managed Python 3.11 virtual environment, clear what is left of an earlier run, start training or
scoring detached.

Stock TPU VM images have Python 3.10 and the project needs 3.11: ``uv`` (installed with the system pip when
missing) creates the environment with a Python it finds or downloads.
"""

from __future__ import annotations

import shlex

CODE = "~/autext_jax"
VENV = "~/autext-venv"
PYTHON = f"{VENV}/bin/python"
TARBALL = "autext-src.tar.gz"  # in the worker's home
TRAIN_LOG, TRAIN_PID = "~/autext-train.log", "~/autext-train.pid"
SCORE_LOG, SCORE_PID = "~/autext-score.log", "~/autext-score.pid"
PYTHON_VERSION = "3.11"


def _install(extra: str) -> str:
    spec = f'"$HOME/autext_jax[{extra}]"' if extra else '"$HOME/autext_jax"'
    return (
        'export PATH="$HOME/.local/bin:$PATH"; '
        "command -v uv >/dev/null || python3 -m pip install --quiet --user uv; "
        f"[ -x {PYTHON} ] || uv venv --quiet --python {PYTHON_VERSION} {VENV}; "
        f"uv pip install --quiet --python {PYTHON} -e {spec}"
    )


def setup_from_tarball(commit: str, extra: str) -> str:
    """Replace ``~/autext_jax`` with the shipped tree, record its commit, install it."""
    return (
        f"set -e; rm -rf {CODE}.new; mkdir -p {CODE}.new; tar -xzf ~/{TARBALL} -C {CODE}.new; "
        f"rm -rf {CODE}; mv {CODE}.new {CODE}; echo {shlex.quote(commit)} > {CODE}/.source-commit; "
        + _install(extra)
    )


def setup_from_repo(repo: str, ref: str, extra: str) -> str:
    """Clone ``repo`` at ``ref`` afresh, record the commit it resolved to, install it."""
    return (
        f"set -e; rm -rf {CODE}; git clone --quiet {shlex.quote(repo)} {CODE}; "
        f"git -C {CODE} checkout --quiet {shlex.quote(ref)}; "
        f"git -C {CODE} rev-parse HEAD > {CODE}/.source-commit; " + _install(extra)
    )


def clear_stale(pid_file: str) -> str:
    """Stop an earlier run of ours (SIGTERM, 30 s to save, then SIGKILL) and any process holding a TPU chip.

    A process left from a crashed or hung run keeps the TPU open and the next one fails to start.
    """
    return (
        f"if [ -f {pid_file} ]; then p=$(cat {pid_file}); "
        'if kill -0 -- -"$p" 2>/dev/null; then echo "stopping earlier run (process group $p)" >&2; '
        'kill -TERM -- -"$p"; for i in $(seq 30); do kill -0 -- -"$p" 2>/dev/null || break; sleep 1; done; '
        f'kill -KILL -- -"$p" 2>/dev/null || true; fi; rm -f {pid_file}; fi; '
        "holders=$( (lsof -t -w /dev/accel* /dev/vfio/[0-9]* 2>/dev/null || true) | sort -u); "
        'if [ -n "$holders" ]; then echo "killing processes holding the TPU: $holders" >&2; '
        "kill -KILL $holders 2>/dev/null || true; sleep 2; fi"
    )


def detached(argv: list[str], env: dict[str, str], log: str, pid_file: str) -> str:
    """The venv's python with ``argv`` in its own session (so a later ``clear_stale`` can stop all of it),
    output to ``log``. ``env`` values are shell words already."""
    exports = "".join(f"export {k}={v}; " for k, v in env.items())
    return (
        f"cd {CODE} && {exports}nohup setsid {PYTHON} {shlex.join(argv)} > {log} 2>&1 < /dev/null & "
        f"echo $! > {pid_file}"
    )


def train(argv: list[str]) -> str:
    """Clear what an earlier run left, then the train command, with the shipped commit in the environment."""
    env = {"AUTEXT_JAX_SOURCE_COMMIT": f'"$(cat {CODE}/.source-commit 2>/dev/null)"'}
    return f"{clear_stale(TRAIN_PID)}; {detached(argv, env, TRAIN_LOG, TRAIN_PID)}"


def score(argv: list[str], shard: str) -> str:
    """The scoring command on one worker, its shard given explicitly (``--shard auto`` reads it)."""
    env = {"AUTEXT_JAX_SHARD": shlex.quote(shard)}
    return f"{clear_stale(SCORE_PID)}; {detached(argv, env, SCORE_LOG, SCORE_PID)}"


def stage_from_hub(model_id: str, url: str) -> str:
    """On worker 0: download a Hub model and copy it to ``url`` (Google's network, once per workdir)."""
    fetch = (
        f"from huggingface_hub import snapshot_download as s; s({model_id!r}, local_dir='/tmp/autext-init')"
    )
    return (
        f"set -e; rm -rf /tmp/autext-init; {PYTHON} -c {shlex.quote(fetch)}; "
        f"gcloud storage cp -r '/tmp/autext-init/*' {shlex.quote(url + '/')}"
    )
