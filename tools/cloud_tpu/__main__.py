"""The command line: ``python -m tools.cloud_tpu {create,setup,train,watch,score,logs,delete}``.

Every subcommand runs ``gcloud``; ``--dry-run`` prints the commands instead (one per line, ready to
paste). ``setup`` ships the local checkout (its committed tree; ``--include-uncommitted`` adds the working
tree's changes) or clones ``--repo``; ``train`` starts the same detached command on every worker;
``watch`` keeps a run going until it is finished (see ``watch.py``; ``preflight.py`` checks everything it
can before the slice is created)::

    python -m tools.cloud_tpu create --name upb --zone us-west4-a --accelerator-type v5litepod-16 --spot
    python -m tools.cloud_tpu setup --name upb --zone us-west4-a
    python -m tools.cloud_tpu train --name upb --zone us-west4-a --workdir gs://BUCKET/runs/upb -- \\
        --set data.paths=gs://BUCKET/data/subtask_1
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from autext_jax import cli
from tools.cloud_tpu import actions, preflight, watch
from tools.cloud_tpu.gcloud import Gcloud


def _parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--name", required=True, help="queued resource and TPU name")
    common.add_argument("--zone", required=True, help="e.g. us-west4-a (v5e), us-central2-b (v4)")
    common.add_argument("--project", help="GCP project (default: gcloud's configured one)")
    common.add_argument("--dry-run", action="store_true", help="print the gcloud commands, run nothing")
    common.add_argument("--poll", type=float, default=60.0, help="seconds between state checks")
    common.add_argument("--tries", type=int, default=4, help="attempts of create/setup/train/score")
    common.add_argument("--describe-tries", type=int, default=5, help="attempts of each state check")
    common.add_argument("--backoff", type=float, default=15.0, help="first wait between attempts (doubles)")
    common.add_argument(
        "--call-timeout", type=float, default=300.0, help="seconds before a gcloud call is killed"
    )
    common.add_argument(
        "--ssh-timeout", type=float, default=1800.0, help="seconds before a gcloud ssh/scp is killed"
    )
    cli.add_debug_flag(common)
    create = argparse.ArgumentParser(add_help=False)
    create.add_argument("--accelerator-type", default="v5litepod-8", help="e.g. v5litepod-16, v4-32")
    create.add_argument("--runtime-version", help="TPU VM image (default: per generation, see the README)")
    create.add_argument("--spot", action="store_true", help="Spot capacity: cheaper, may be preempted")
    setup = argparse.ArgumentParser(add_help=False)
    setup.add_argument("--source", default=".", help="the checkout to ship (default: the one around .)")
    setup.add_argument(
        "--include-uncommitted",
        action="store_true",
        help="ship the working tree's uncommitted changes too (recorded as COMMIT+dirty)",
    )
    setup.add_argument("--repo", help="git URL cloned on every worker instead of shipping the checkout")
    setup.add_argument("--ref", default="main", help="with --repo: branch, tag or commit to check out")
    setup.add_argument("--extra", default="tpu", help="the project's extra to install ('' for none)")
    train = argparse.ArgumentParser(add_help=False)
    train.add_argument("--config", default="configs/upb_mtl.py", help="config file in the repository")
    train.add_argument("--workdir", required=True, help="gs://BUCKET/PATH shared by all workers")
    train.add_argument(
        "--init",
        help="weights to start from: gs:// as is; a local folder or Hub id is "
        "copied once to WORKDIR/init and read from there",
    )
    train.add_argument("train_args", nargs=argparse.REMAINDER, help="after --: more train flags (--set ...)")

    p = argparse.ArgumentParser(prog="python -m tools.cloud_tpu", description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    sub.add_parser("create", parents=[common, create], help="request the slice and wait until it is ACTIVE")
    sub.add_parser("setup", parents=[common, setup], help="ship the code and install it on every worker")
    sub.add_parser("train", parents=[common, train], help="start the same train command on every worker")
    w = sub.add_parser(
        "watch", parents=[common, create, setup, train], help="keep the run going to its export"
    )
    w.add_argument(
        "--max-restarts",
        type=int,
        default=3,
        help="relaunches of a crashed or dead run on an ACTIVE slice without progress in between",
    )
    w.add_argument("--max-recreates", type=int, default=50, help="re-creations of a preempted or lost slice")
    w.add_argument(
        "--max-failures", type=int, default=3, help="create/setup/launch failures in a row before giving up"
    )
    w.add_argument(
        "--start-timeout",
        type=float,
        default=600.0,
        help="seconds a launched run may take to report its first status (it comes before compiling)",
    )
    w.add_argument(
        "--stale-after",
        type=float,
        default=180.0,
        help="seconds without a heartbeat (renewed every ~20 s) after which a running run counts as dead",
    )
    w.add_argument(
        "--max-hours",
        type=float,
        default=24.0,
        help="deadline for the whole job from watch's start: watch gives up and worker 0 deletes the slice "
        "(0: none)",
    )
    w.add_argument(
        "--keep",
        action="store_true",
        help="keep the slice after the run ends or watch gives up (worker 0 never deletes it)",
    )
    score = sub.add_parser("score", parents=[common], help="score on every worker, one shard each")
    score.add_argument("--workers", type=int, help="number of workers (default: asked from the TPU)")
    score.add_argument(
        "train_args",
        nargs=argparse.REMAINDER,
        metavar="infer_args",
        help="after --: the autext_jax.infer arguments (--shard auto is added)",
    )
    logs = sub.add_parser("logs", parents=[common], help="tail a worker's train or score log")
    logs.add_argument("--worker", type=int, default=0, help="worker index (0 logs training progress)")
    logs.add_argument(
        "--workdir", help="read the train log copied to WORKDIR/logs (works after the slice is gone)"
    )
    logs.add_argument("--launch", help="with --workdir: which launch (default: the newest)")
    logs.add_argument("--file", choices=("train", "score"), default="train")
    logs.add_argument("--lines", type=int, default=100)
    logs.add_argument("--follow", action="store_true", help="keep printing new lines")
    sub.add_parser("delete", parents=[common], help="delete the queued resource and its TPU VMs")
    return p


def _watch(args: argparse.Namespace, run: Gcloud) -> int:
    preflight.check(args, run)  # before anything is billed
    if run.dry_run:
        watch.dry_run(args, run)
        return 0
    return watch.Watch(args, run).loop()


COMMANDS = {
    "create": actions.create,
    "setup": actions.setup,
    "train": actions.train,
    "watch": _watch,
    "score": actions.score,
    "logs": actions.logs,
    "delete": actions.delete,
}


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()

    def command(args: argparse.Namespace) -> int | None:
        gcloud = Gcloud(args.dry_run, call_timeout=args.call_timeout, ssh_timeout=args.ssh_timeout)
        return COMMANDS[args.command](args, gcloud)

    return cli.main(parser.prog, parser, command, argv)


if __name__ == "__main__":
    sys.exit(main())
