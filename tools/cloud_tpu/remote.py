"""The shell scripts every worker runs (through ``gcloud ... ssh --command``): install the shipped code into
a uv-managed Python 3.11 virtual environment, clear what is left of an earlier run, start training or
scoring detached.

Stock TPU VM images have Python 3.10 and the project needs 3.11: ``uv`` (installed with the system pip when
missing) creates the environment with a Python it finds or downloads.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass

CODE = "~/autext_jax"
VENV = "~/autext-venv"
PYTHON = f"{VENV}/bin/python"
TARBALL = "autext-src.tar.gz"  # in the worker's home
TRAIN_LOG, TRAIN_PID = "~/autext-train.log", "~/autext-train.pid"
SCORE_LOG, SCORE_PID = "~/autext-score.log", "~/autext-score.pid"
PYTHON_VERSION = "3.11"
LOG_COPY_S = 60  # how often each worker copies its log to WORKDIR/logs while training runs
SLICE_DELETED = "slice-deleted.txt"  # in WORKDIR/logs/LAUNCH/: why worker 0 deleted the slice
# This worker's index: the fake slice (and some images) export it; a TPU VM's metadata always has it.
WORKER = (
    "${TPU_WORKER_ID:-$(curl -sf -m 5 -H Metadata-Flavor:Google http://metadata.google.internal/"
    "computeMetadata/v1/instance/attributes/agent-worker-number || hostname)}"
)


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


@dataclass(frozen=True)
class Launch:
    """One launch of training: its id (names its logs), where its logs go, and how worker 0 ends the slice.

    ``delete``: the gcloud command worker 0 runs to delete its own queued resource (``None``: never,
    ``--keep``); it runs when training exits 0, or exits with any failure when ``delete_on_failure``
    (watch's last allowed relaunch) unless the run's status shows a checkpoint newer than
    ``progress_step`` (progress: watch would relaunch it), or at ``deadline`` (unix time; ``None``: no
    deadline), whichever comes first — without anyone watching.
    """

    launch_id: str
    logs_url: str
    delete: list[str] | None = None
    delete_on_failure: bool = False
    progress_step: int | None = None
    deadline: int | None = None

    @property
    def log(self) -> str:
        return f"$HOME/autext-train-{self.launch_id}.log"


def copy_logs(logs_url: str) -> str:
    """Copy every launch's train log on this worker to ``logs_url/LAUNCH/worker-I.log`` (best effort)."""
    return (
        f'w={WORKER}; for f in $HOME/autext-train-*.log; do [ -f "$f" ] || continue; '
        "id=${f##*/autext-train-}; id=${id%.log}; "
        f'gcloud storage cp "$f" {shlex.quote(logs_url.rstrip("/"))}/"$id"/worker-"$w".log '
        '>/dev/null 2>&1 || echo "could not copy $f" >&2; done; true'
    )


def _supervised(argv: list[str], env: dict[str, str], launch: Launch) -> str:
    """The script a worker runs detached: training with its log appended per launch, a copier of that log
    to ``WORKDIR/logs`` every ``LOG_COPY_S`` s and at the end, and on worker 0 the slice's own deletion."""
    logs = shlex.quote(f"{launch.logs_url.rstrip('/')}/{launch.launch_id}")
    exports = "".join(f"export {k}={v}; " for k, v in env.items())
    delete = shlex.join(launch.delete) + ' >> "$log" 2>&1' if launch.delete else "true"
    on_failure = "1" if launch.delete_on_failure else "0"
    status = shlex.quote(launch.logs_url.rstrip("/").rsplit("/", 1)[0] + "/run_status.json")
    read_step = shlex.quote('import json, sys; print(int(json.load(sys.stdin).get("step") or -1))')
    step_now = f"$(gcloud storage cat {status} 2>/dev/null | python3 -c {read_step} 2>/dev/null || echo -1)"
    # no progress in this launch: the status's step is not past the one watch last saw (none seen: any)
    no_progress = "true" if launch.progress_step is None else f'[ "{step_now}" -le {launch.progress_step} ]'
    marker = shlex.quote(f"{launch.logs_url.rstrip('/')}/{launch.launch_id}/{SLICE_DELETED}")

    def said(why: str) -> str:  # worker 0 leaves word of why it deleted the slice (``watch`` reads it)
        return f'echo "{why}" | gcloud storage cp - {marker} >/dev/null 2>&1'

    lines = [
        "trap : TERM INT",  # a preemption's SIGTERM: let training save, then copy its log
        f'w={WORKER}; log={launch.log}; ln -sf "$log" $HOME/autext-train.log',
        f'copy() {{ gcloud storage cp "$log" {logs}/worker-"$w".log >/dev/null 2>&1 || true; }}',
        f"( while sleep {LOG_COPY_S}; do copy; done ) &",
        "copier=$!",
    ]
    if launch.delete and launch.deadline:
        lines.append(
            f'if [ "$w" = 0 ]; then ( while [ "$(date +%s)" -lt {launch.deadline} ]; do sleep 5; done; '
            'echo "cloud_tpu: the --max-hours deadline passed: worker 0 deletes the slice" >> "$log"; '
            f"copy; {said('the --max-hours deadline passed')}; {delete} ) & fi"
        )
    lines += [
        f'echo "cloud_tpu: launch {launch.launch_id} on worker $w" >> "$log"',
        f'cd {CODE} && {exports}{PYTHON} {shlex.join(argv)} >> "$log" 2>&1 < /dev/null; code=$?',
        # the periodic copier ends with training (the last copy is below), so nothing outlives the launch
        'kill "$copier" 2>/dev/null; echo "cloud_tpu: training exited with code $code" >> "$log"; copy',
    ]
    if launch.delete:
        failed = f'[ {on_failure} = 1 ] && [ "$code" != 130 ] && [ "$code" != 143 ] && {no_progress}'
        lines.append(
            f'if [ "$w" = 0 ] && {{ [ "$code" = 0 ] || {{ {failed}; }}; }}; then echo "cloud_tpu: the run '
            f'ended for good (exit $code): worker 0 deletes the slice" >> "$log"; copy; '
            f"{said('the run ended for good (exit $code)')}; {delete}; fi"
        )
    return " ".join(line if line.endswith("&") else f"{line};" for line in lines)


def train(argv: list[str], launch: Launch) -> str:
    """Clear what an earlier run left, then the supervised train command (``_supervised``), detached, with
    the shipped commit in the environment."""
    env = {"AUTEXT_JAX_SOURCE_COMMIT": f'"$(cat {CODE}/.source-commit 2>/dev/null)"'}
    script = shlex.quote(_supervised(argv, env, launch))
    return (
        f"{clear_stale(TRAIN_PID)}; nohup setsid bash -c {script} > /dev/null 2>&1 < /dev/null & "
        f"echo $! > {TRAIN_PID}"
    )


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
