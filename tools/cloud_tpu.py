"""Run autext_jax.train on a Cloud TPU slice: create, setup, train, watch, logs, delete.

Each subcommand runs ``gcloud`` commands; ``--dry-run`` prints them (one per line, ready to paste)
instead. The TPU is a queued resource (``--spot`` for Spot capacity); every worker of the slice gets
the same code (``setup``) and runs the same train command with ``--distributed auto`` (``train``),
detached, logging to ``~/autext-train.log``. ``watch`` polls until ``WORKDIR/export/config.json``
exists and, whenever the slice was preempted (queued resource no longer ACTIVE), deletes it,
creates it again, sets it up and relaunches the same command, which resumes from the newest
checkpoint in the workdir (keep the workdir on ``gs://``)::

    python tools/cloud_tpu.py create --name upb --zone us-west4-a --accelerator-type v5litepod-16 --spot
    python tools/cloud_tpu.py setup --name upb --zone us-west4-a --repo https://github.com/OWNER/autext_jax
    python tools/cloud_tpu.py train --name upb --zone us-west4-a --workdir gs://BUCKET/runs/upb -- \\
        --set data.paths=gs://BUCKET/data/subtask_1
    python tools/cloud_tpu.py logs --name upb --zone us-west4-a
    python tools/cloud_tpu.py delete --name upb --zone us-west4-a
"""

from __future__ import annotations

import argparse
import shlex
import subprocess
import sys
import time
from collections.abc import Sequence

from autext_jax import cli
from autext_jax.errors import UsageError

# The TPU VM images Cloud TPU documents for JAX, per generation (override with --runtime-version).
RUNTIME_VERSIONS = {
    "v4": "tpu-ubuntu2204-base",
    "v5litepod": "v2-alpha-tpuv5-lite",
    "v5p": "v2-alpha-tpuv5",
    "v6e": "v2-alpha-tpuv6e",
}
REMOTE_DIR = "~/autext_jax"
REMOTE_LOG = "~/autext-train.log"
TRAIN_MODULE = "autext_jax.train"


class Gcloud:
    """Runs (or, with ``dry_run``, prints) gcloud commands."""

    def __init__(self, dry_run: bool, out=None):
        self.dry_run, self.out = dry_run, out or sys.stdout

    def __call__(self, cmd: list[str], *, capture: bool = False, check: bool = True) -> str:
        if self.dry_run:
            print(shlex.join(cmd), file=self.out, flush=True)
            return ""
        try:
            proc = subprocess.run(cmd, check=False, text=True, capture_output=capture)
        except FileNotFoundError:
            raise UsageError("gcloud is not installed: https://cloud.google.com/sdk/docs/install") from None
        if check and proc.returncode:
            detail = f": {' '.join((proc.stderr or '').split())[-300:]}" if capture else ""
            raise UsageError(f"{shlex.join(cmd[:5])} … failed with exit code {proc.returncode}{detail}")
        return (proc.stdout or "").strip()


def _where(args: argparse.Namespace) -> list[str]:
    return [f"--zone={args.zone}"] + ([f"--project={args.project}"] if args.project else [])


def _runtime_version(args: argparse.Namespace) -> str:
    if args.runtime_version:
        return args.runtime_version
    family = args.accelerator_type.rsplit("-", 1)[0]
    if family not in RUNTIME_VERSIONS:
        raise UsageError(
            f"no default runtime for --accelerator-type {args.accelerator_type}; pass --runtime-version "
            f"(defaults known for {', '.join(RUNTIME_VERSIONS)})"
        )
    return RUNTIME_VERSIONS[family]


def create_cmd(args: argparse.Namespace) -> list[str]:
    cmd = ["gcloud", "compute", "tpus", "queued-resources", "create", args.name, f"--node-id={args.name}"]
    cmd += _where(args) + [f"--accelerator-type={args.accelerator_type}"]
    cmd += [f"--runtime-version={_runtime_version(args)}"] + (["--spot"] if args.spot else [])
    return cmd


def state_cmd(args: argparse.Namespace) -> list[str]:
    return ["gcloud", "compute", "tpus", "queued-resources", "describe", args.name, *_where(args),
            "--format=value(state.state)"]  # fmt: skip


def delete_cmd(args: argparse.Namespace) -> list[str]:
    return ["gcloud", "compute", "tpus", "queued-resources", "delete", args.name, *_where(args),
            "--force", "--quiet"]  # fmt: skip


def ssh_cmd(args: argparse.Namespace, remote: str, worker: str = "all") -> list[str]:
    return ["gcloud", "compute", "tpus", "tpu-vm", "ssh", args.name, *_where(args), f"--worker={worker}",
            "--command", remote]  # fmt: skip


def setup_remote(args: argparse.Namespace) -> str:
    """Clone (or update) the code at ``--ref`` and install it with the tpu extra, on one worker."""
    repo, ref = shlex.quote(args.repo), shlex.quote(args.ref)
    return (
        f"set -e; [ -d {REMOTE_DIR}/.git ] || git clone {repo} {REMOTE_DIR}; cd {REMOTE_DIR}; "
        f"git fetch --quiet origin; git checkout --quiet {ref}; git pull --quiet --ff-only || true; "
        "python3 -m pip install --quiet --upgrade pip; python3 -m pip install --quiet -e '.[tpu]'"
    )


def train_argv(args: argparse.Namespace) -> list[str]:
    extra = list(args.train_args)
    if extra[:1] == ["--"]:
        extra = extra[1:]
    if "--dry-run" in extra:  # it would reach the train command while this tool runs gcloud for real
        raise UsageError("--dry-run must come before --: what follows -- goes to autext_jax.train")
    return ["python3", "-m", TRAIN_MODULE, "--config", args.config, "--workdir", args.workdir,
            "--distributed", "auto", *extra]  # fmt: skip


def train_remote(args: argparse.Namespace) -> str:
    """The same detached train command on every worker; a relaunch resumes from the workdir."""
    return f"cd {REMOTE_DIR} && nohup {shlex.join(train_argv(args))} > {REMOTE_LOG} 2>&1 < /dev/null &"


def exported_cmd(args: argparse.Namespace) -> list[str]:
    return ["gcloud", "storage", "ls", f"{args.workdir.rstrip('/')}/export/config.json"]


def wait_active(args: argparse.Namespace, run: Gcloud) -> None:
    """Poll the queued resource until its TPU VMs exist (a Spot request may queue for a while)."""
    if run.dry_run:
        run(state_cmd(args), capture=True)
        return
    while True:
        state = run(state_cmd(args), capture=True)
        print(f"queued resource {args.name}: {state}", file=sys.stderr, flush=True)
        if state == "ACTIVE":
            return
        if state in ("FAILED", "SUSPENDED"):
            raise UsageError(f"queued resource {args.name} is {state}; delete it and create it again")
        time.sleep(args.poll)


def do_create(args: argparse.Namespace, run: Gcloud) -> None:
    run(create_cmd(args))
    wait_active(args, run)


def do_setup(args: argparse.Namespace, run: Gcloud) -> None:
    run(ssh_cmd(args, setup_remote(args)))


def do_train(args: argparse.Namespace, run: Gcloud) -> None:
    if not args.workdir.startswith("gs://"):
        raise UsageError(f"--workdir {args.workdir}: use gs://BUCKET/PATH, which every worker shares and "
                         "which outlives a preempted slice")  # fmt: skip
    run(ssh_cmd(args, train_remote(args)))


def do_logs(args: argparse.Namespace, run: Gcloud) -> None:
    follow = "-F " if args.follow else ""
    run(ssh_cmd(args, f"tail {follow}-n {args.lines} {REMOTE_LOG}", worker=str(args.worker)))


def do_delete(args: argparse.Namespace, run: Gcloud) -> None:
    run(delete_cmd(args))


def do_watch(args: argparse.Namespace, run: Gcloud) -> None:
    """Until the export exists: whenever the slice is gone, re-create it, set it up and relaunch."""
    if run.dry_run:  # one round: the checks, then what a preemption triggers
        run(exported_cmd(args), capture=True)
        run(state_cmd(args), capture=True)
        _relaunch(args, run)
        return
    restarts = 0
    while run(exported_cmd(args), capture=True, check=False) == "":
        state = run(state_cmd(args), capture=True, check=False)
        if state not in ("ACTIVE", "ACCEPTED", "WAITING_FOR_RESOURCES", "PROVISIONING", "CREATING"):
            if restarts == args.max_restarts:
                raise UsageError(f"{args.name} is {state or 'gone'} after {restarts} relaunches; giving up")
            restarts += 1
            print(f"{args.name} is {state or 'gone'}: relaunch {restarts}", file=sys.stderr, flush=True)
            _relaunch(args, run)
        time.sleep(args.poll)
    print(f"exported: {args.workdir.rstrip('/')}/export", file=sys.stderr)


def _relaunch(args: argparse.Namespace, run: Gcloud) -> None:
    run(delete_cmd(args), check=False)
    do_create(args, run)
    do_setup(args, run)
    do_train(args, run)


def _parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--name", required=True, help="queued resource and TPU name")
    common.add_argument("--zone", required=True, help="e.g. us-west4-a (v5e), us-central2-b (v4)")
    common.add_argument("--project", help="GCP project (default: gcloud's configured one)")
    common.add_argument("--dry-run", action="store_true", help="print the gcloud commands, run nothing")
    common.add_argument("--poll", type=float, default=60.0, help="seconds between state checks")
    cli.add_debug_flag(common)
    create = argparse.ArgumentParser(add_help=False)
    create.add_argument("--accelerator-type", default="v5litepod-8", help="e.g. v5litepod-16, v4-32")
    create.add_argument("--runtime-version", help="TPU VM image (default: per generation, see the README)")
    create.add_argument("--spot", action="store_true", help="Spot capacity: cheaper, may be preempted")
    setup = argparse.ArgumentParser(add_help=False)
    setup.add_argument("--repo", required=True, help="git URL of this project, cloned on every worker")
    setup.add_argument("--ref", default="main", help="branch, tag or commit to check out")
    train = argparse.ArgumentParser(add_help=False)
    train.add_argument("--config", default="configs/upb_mtl.py", help="config file in the repository")
    train.add_argument("--workdir", required=True, help="gs://BUCKET/PATH shared by all workers")
    train.add_argument("train_args", nargs=argparse.REMAINDER, help="after --: more train flags (--set ...)")

    p = argparse.ArgumentParser(prog="tools/cloud_tpu.py", description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    sub.add_parser("create", parents=[common, create], help="request the slice (queued resource)")
    sub.add_parser("setup", parents=[common, setup], help="clone and pip install on every worker")
    sub.add_parser("train", parents=[common, train], help="start the same train command on every worker")
    sub.add_parser(
        "watch", parents=[common, create, setup, train], help="relaunch after preemption"
    ).add_argument("--max-restarts", type=int, default=20, help="give up after this many relaunches")
    logs = sub.add_parser("logs", parents=[common], help="tail a worker's train log")
    logs.add_argument("--worker", type=int, default=0, help="worker index (0 logs progress)")
    logs.add_argument("--lines", type=int, default=100)
    logs.add_argument("--follow", action="store_true", help="keep printing new lines")
    sub.add_parser("delete", parents=[common], help="delete the queued resource and its TPU VMs")
    return p


COMMANDS = {
    "create": do_create,
    "setup": do_setup,
    "train": do_train,
    "watch": do_watch,
    "logs": do_logs,
    "delete": do_delete,
}


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()

    def command(args: argparse.Namespace) -> None:
        COMMANDS[args.command](args, Gcloud(args.dry_run))

    return cli.main(parser.prog, parser, command, argv)


if __name__ == "__main__":
    sys.exit(main())
