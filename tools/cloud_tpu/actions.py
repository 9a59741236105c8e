"""The subcommands' work: create the slice, ship and install the code, start training or scoring, read the
run's state. Each step that can fail for a moment (an API 5xx, an ssh that drops, a pip mirror) is retried
with backoff; a failure that stays is one line (``GcloudError``).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import tempfile
from pathlib import Path

from autext_jax.errors import UsageError
from tools.cloud_tpu import commands, remote, source
from tools.cloud_tpu.gcloud import Gcloud, GcloudError, log

TRAIN_MODULE, SCORE_MODULE = "autext_jax.train", "autext_jax.infer"
PROVISIONING = ("ACCEPTED", "WAITING_FOR_RESOURCES", "PROVISIONING", "CREATING")
GONE = ("SUSPENDED", "FAILED", "NOT_FOUND")  # with a lasting SUSPENDING, the states that make watch re-create


def _missing(err: GcloudError) -> bool:
    return "NOT_FOUND" in err.stderr or "not found" in err.stderr.lower()


def state(args: argparse.Namespace, run: Gcloud) -> str:
    """The queued resource's state; ``NOT_FOUND`` only when gcloud says so, never for a failed call
    (other failures are retried ``--describe-tries`` times, then raise)."""
    if run.dry_run:
        run(commands.describe(args), capture=True)
        return "ACTIVE"

    def attempt() -> str:
        try:
            return run(commands.describe(args), capture=True) or "UNKNOWN"
        except GcloudError as err:
            if _missing(err):
                return "NOT_FOUND"
            raise

    return run.retry("describe", attempt, tries=args.describe_tries, backoff=args.backoff)


def create(args: argparse.Namespace, run: Gcloud) -> None:
    """Queue the slice and wait until its TPU VMs exist. "already exists" (the previous one is still being
    deleted) is retried; a request that ends FAILED or SUSPENDED while provisioning raises."""
    run.retry(
        "create",
        lambda: run(commands.create(args)),
        tries=args.tries,
        backoff=args.backoff,
        retry_if=lambda err: (
            "already exists" in err.stderr.lower()
            or "ALREADY_EXISTS" in err.stderr
            or "UNAVAILABLE" in err.stderr
            or "INTERNAL" in err.stderr
        ),
    )
    wait_active(args, run)


def wait_active(args: argparse.Namespace, run: Gcloud) -> None:
    while True:
        now = state(args, run)
        if now == "ACTIVE":
            log(f"slice {args.name} is ACTIVE")
            return
        if now in GONE or now == "SUSPENDING":
            raise GcloudError(commands.describe(args), 1, f"queued resource {args.name} became {now}")
        log(f"slice {args.name} is {now}: waiting {args.poll:g} s")
        run.sleep(args.poll)


def delete(args: argparse.Namespace, run: Gcloud) -> None:
    try:
        run.retry(
            "delete",
            lambda: run(commands.delete(args)),
            tries=args.tries,
            backoff=args.backoff,
            retry_if=lambda err: not _missing(err),
        )
    except GcloudError as err:
        if not _missing(err):
            raise


def setup(args: argparse.Namespace, run: Gcloud) -> None:
    """Ship the code to every worker (the local checkout, or ``--repo``) and install it."""
    if args.repo:
        script = remote.setup_from_repo(args.repo, args.ref, args.extra)
        run.retry("setup", lambda: run(commands.ssh(args, script)), tries=args.tries, backoff=args.backoff)
        return
    src = source.find(args.source, args.include_uncommitted)
    log(src.note)
    with tempfile.TemporaryDirectory() as tmp:
        tarball = str(Path(tmp) / remote.TARBALL)
        if run.dry_run:
            print(shlex.join(src.archive_cmd(tarball)), flush=True)
        else:
            source.pack(src, Path(tarball))
        script = remote.setup_from_tarball(src.commit, args.extra)

        def ship_and_install() -> None:
            run(commands.scp(args, tarball, remote.TARBALL))
            run(commands.ssh(args, script))

        run.retry("setup", ship_and_install, tries=args.tries, backoff=args.backoff)


def _extra_args(args: argparse.Namespace) -> list[str]:
    extra = list(args.train_args)
    if extra[:1] == ["--"]:
        extra = extra[1:]
    if "--dry-run" in extra:  # it would reach the remote command while this tool runs gcloud for real
        raise UsageError("--dry-run must come before --: what follows -- goes to the remote command")
    return extra


def exists(url: str, run: Gcloud) -> bool:
    try:
        run(commands.storage_ls(url), capture=True)
    except GcloudError:
        return False
    return not run.dry_run


def staged_init(args: argparse.Namespace, run: Gcloud) -> str | None:
    """``--init`` as the workers read it: a gs:// URL as given, anything else copied once to WORKDIR/init."""
    if not args.init or args.init.startswith("gs://"):
        return args.init
    url = f"{args.workdir.rstrip('/')}/init"
    marker = f"{url}/.staged-from"
    if exists(marker, run):
        log(f"--init {args.init}: using the copy staged in {url}")
        return url
    if os.path.isdir(args.init):
        log(f"--init {args.init}: copying the local folder to {url}")
        run(commands.storage_cp(f"{args.init.rstrip('/')}/*", f"{url}/"))
    else:
        log(f"--init {args.init}: worker 0 downloads it from the Hub and copies it to {url}")
        script = remote.stage_from_hub(args.init, url)
        run.retry(
            "staging --init",
            lambda: run(commands.ssh(args, script, worker="0")),
            tries=args.tries,
            backoff=args.backoff,
        )
    run(commands.storage_put(marker), stdin=f"{args.init}\n")
    return url


def train_argv(args: argparse.Namespace, init: str | None) -> list[str]:
    extra = _extra_args(args)
    argv = ["-m", TRAIN_MODULE, "--config", args.config, "--workdir", args.workdir, "--distributed", "auto"]
    if "--compile-cache" not in extra:  # compiled steps survive a relaunch on new VMs
        argv += ["--compile-cache", f"{args.workdir.rstrip('/')}/compile_cache"]
    return argv + (["--init", init] if init else []) + extra


def train(args: argparse.Namespace, run: Gcloud) -> None:
    """Start the same train command on every worker, detached (a relaunch resumes from the workdir)."""
    if not args.workdir.startswith("gs://"):
        raise UsageError(
            f"--workdir {args.workdir}: use gs://BUCKET/PATH, which every worker shares and "
            "which outlives a preempted slice"
        )
    argv = train_argv(args, staged_init(args, run))
    script = remote.train(argv)
    run.retry("train", lambda: run(commands.ssh(args, script)), tries=args.tries, backoff=args.backoff)


def worker_count(args: argparse.Namespace, run: Gcloud) -> int:
    if args.workers:
        return args.workers
    if run.dry_run:
        raise UsageError("--dry-run cannot ask the slice how many workers it has: pass --workers N")
    cmd = [*commands.VM, "describe", args.name, *commands.where(args), "--format=json"]
    endpoints = json.loads(run(cmd, capture=True) or "{}").get("networkEndpoints") or []
    if not endpoints:
        raise UsageError(f"TPU {args.name} lists no workers; is it ACTIVE? (pass --workers N to skip asking)")
    return len(endpoints)


def score(args: argparse.Namespace, run: Gcloud) -> None:
    """The same scoring command on every worker, each with its own shard; the workers never talk."""
    argv = ["-m", SCORE_MODULE, *_extra_args(args), "--shard", "auto"]
    n = worker_count(args, run)
    for i in range(n):
        script = remote.score(argv, f"{i}/{n}")
        run.retry(
            f"score on worker {i}",
            lambda s=script, i=i: run(commands.ssh(args, s, worker=str(i))),
            tries=args.tries,
            backoff=args.backoff,
        )
    log(f"scoring started on {n} worker(s); `logs --file score --worker I` shows each")


def logs(args: argparse.Namespace, run: Gcloud) -> None:
    path = remote.SCORE_LOG if args.file == "score" else remote.TRAIN_LOG
    follow = "-F " if args.follow else ""
    run(commands.ssh(args, f"tail {follow}-n {args.lines} {path}", worker=str(args.worker)))


def run_status(args: argparse.Namespace, run: Gcloud) -> dict | None:
    """``WORKDIR/run_status.json`` as training writes it, or ``None`` when absent or unreadable."""
    try:
        text = run(commands.storage_cat(f"{args.workdir.rstrip('/')}/run_status.json"), capture=True)
        status = json.loads(text)
    except (GcloudError, ValueError):
        return None
    return status if isinstance(status, dict) else None
