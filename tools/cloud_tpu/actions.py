"""The subcommands' work: create the slice, ship and install the code, start training or scoring, read the
run's state. Each step that can fail for a moment (an API 5xx, an ssh that drops, a pip mirror) is retried
with backoff; a failure that stays is one line (``GcloudError``).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from autext_jax.errors import UsageError
from tools.cloud_tpu import commands, remote, source
from tools.cloud_tpu.gcloud import Gcloud, GcloudError, log

TRAIN_MODULE, SCORE_MODULE = "autext_jax.train", "autext_jax.infer"
PROVISIONING = ("ACCEPTED", "WAITING_FOR_RESOURCES", "PROVISIONING", "CREATING")
GONE = ("SUSPENDED", "FAILED", "NOT_FOUND")  # with a lasting SUSPENDING, the states that make watch re-create


def _missing(err: GcloudError) -> bool:
    return "NOT_FOUND" in err.stderr or "not found" in err.stderr.lower()


# google.rpc codes of a FAILED queued resource that no retry fixes: INVALID_ARGUMENT (an unknown
# accelerator type or runtime), NOT_FOUND (zone), PERMISSION_DENIED, UNAUTHENTICATED.
PERMANENT_CODES = {3, 5, 7, 16}
PERMANENT_WORDS = ("quota", "permission", "not supported", "unknown", "invalid")


@dataclass(frozen=True)
class State:
    """The queued resource's state, and Google's reason when it is FAILED (``state.failedData``)."""

    name: str
    reason: str = ""
    code: int | None = None

    @property
    def permanent(self) -> bool:
        """A failure that re-creating the same request cannot fix (quota, permission, unknown type)."""
        return self.name == "FAILED" and (
            self.code in PERMANENT_CODES or any(w in self.reason.lower() for w in PERMANENT_WORDS)
        )


def _parse_state(text: str) -> State:
    try:
        record = json.loads(text or "{}").get("state") or {}
    except (ValueError, AttributeError):
        return State("UNKNOWN")
    error = (record.get("failedData") or {}).get("error") or {}
    code = error.get("code")
    return State(
        record.get("state") or "UNKNOWN",
        " ".join(str(error.get("message", "")).split()),
        int(code) if isinstance(code, int) else None,
    )


def state(args: argparse.Namespace, run: Gcloud) -> State:
    """The queued resource's state; ``NOT_FOUND`` only when gcloud says so, never for a failed call
    (other failures are retried ``--describe-tries`` times, then raise)."""
    if run.dry_run:
        run(commands.describe(args), capture=True)
        return State("ACTIVE")

    def attempt() -> State:
        try:
            return _parse_state(run(commands.describe(args), capture=True))
        except GcloudError as err:
            if _missing(err):
                return State("NOT_FOUND")
            raise

    return run.retry("describe", attempt, tries=args.describe_tries, backoff=args.backoff)


def create(args: argparse.Namespace, run: Gcloud, *, wait: bool = True) -> None:
    """Queue the slice and (``wait``) wait until its TPU VMs exist. "already exists" (the previous one is
    still being deleted) is retried; a request that ends FAILED or SUSPENDED while provisioning raises.
    ``watch`` does not wait here: its own polls see the provisioning states (and its deadline holds)."""
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
    if wait:
        wait_active(args, run)


def wait_active(args: argparse.Namespace, run: Gcloud) -> None:
    while True:
        now = state(args, run)
        if now.name == "ACTIVE":
            log(f"slice {args.name} is ACTIVE")
            return
        if now.name in GONE or now.name == "SUSPENDING":
            why = f": {now.reason}" if now.reason else ""
            raise GcloudError(
                commands.describe(args), 1, f"queued resource {args.name} became {now.name}{why}"
            )
        log(f"slice {args.name} is {now.name}: waiting {args.poll:g} s")
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


@dataclass(frozen=True)
class Shipment:
    """The code every setup installs: one archive of the local checkout (``tarball``), or ``--repo`` at
    one commit. Made once (``watch`` makes it at its start, so every re-create installs the same code)."""

    commit: str
    tarball: str | None = None


def ship(args: argparse.Namespace, run: Gcloud, folder: str) -> Shipment:
    """Pack the local checkout into ``folder`` (or take ``--repo`` at ``--ref``)."""
    if args.repo:
        return Shipment(args.ref)
    src = source.find(args.source, args.include_uncommitted)
    log(src.note)
    tarball = str(Path(folder) / remote.TARBALL)
    if run.dry_run:
        print(shlex.join(src.archive_cmd(tarball)), flush=True)
    else:
        source.pack(src, Path(tarball))
    return Shipment(src.commit, tarball)


def install(args: argparse.Namespace, run: Gcloud, shipment: Shipment) -> None:
    """Put ``shipment`` on every worker and install it."""
    if shipment.tarball is None:
        script = remote.setup_from_repo(args.repo, shipment.commit, args.extra)
        run.retry("setup", lambda: run(commands.ssh(args, script)), tries=args.tries, backoff=args.backoff)
        return
    script = remote.setup_from_tarball(shipment.commit, args.extra)

    def ship_and_install() -> None:
        run(commands.scp(args, shipment.tarball, remote.TARBALL))
        run(commands.ssh(args, script))

    run.retry("setup", ship_and_install, tries=args.tries, backoff=args.backoff)


def setup(args: argparse.Namespace, run: Gcloud) -> None:
    """Ship the code to every worker (the local checkout, or ``--repo``) and install it."""
    with tempfile.TemporaryDirectory() as tmp:
        install(args, run, ship(args, run, tmp))


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


def require_gs_workdir(args: argparse.Namespace) -> None:
    if not args.workdir.startswith("gs://"):
        raise UsageError(
            f"--workdir {args.workdir}: use gs://BUCKET/PATH, which every worker shares and "
            "which outlives a preempted slice"
        )


def logs_url(args: argparse.Namespace) -> str:
    return f"{args.workdir.rstrip('/')}/logs"


def new_launch_id() -> str:
    """``20261207T144806.123Z-912``: sorts in launch order, and two launches in one second differ."""
    now = time.time()
    millis = int(now * 1000) % 1000
    return time.strftime("%Y%m%dT%H%M%S", time.gmtime(now)) + f".{millis:03d}Z-{os.getpid() % 1000:03d}"


def train(args: argparse.Namespace, run: Gcloud, launch: remote.Launch | None = None) -> None:
    """Start the same train command on every worker, detached (a relaunch resumes from the workdir)."""
    require_gs_workdir(args)
    launch = launch or remote.Launch(new_launch_id(), logs_url(args))
    argv = train_argv(args, staged_init(args, run))
    script = remote.train(argv, launch)
    run.retry("train", lambda: run(commands.ssh(args, script)), tries=args.tries, backoff=args.backoff)
    log(f"launch {launch.launch_id}: worker logs go to {launch.logs_url}/{launch.launch_id}/")


def slice_deleted(args: argparse.Namespace, run: Gcloud, launch_id: str) -> str | None:
    """Why worker 0 of that launch deleted the slice itself (``None``: it did not)."""
    try:
        return run(commands.storage_cat(f"{logs_url(args)}/{launch_id}/{remote.SLICE_DELETED}"), capture=True)
    except GcloudError:
        return None


def save_logs(args: argparse.Namespace, run: Gcloud) -> None:
    """Every worker copies its train logs to ``WORKDIR/logs`` now (before a relaunch or a delete);
    a failure is logged, never fatal (the workers also copy them every minute)."""
    try:
        run(commands.ssh(args, remote.copy_logs(logs_url(args))))
    except GcloudError as err:
        log(
            f"could not copy the worker logs to {logs_url(args)} now (each worker also copies its own every "
            f"minute and when training exits): {err}"
        )


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
    """A worker's log: live through ssh, or with ``--workdir`` the copy in ``WORKDIR/logs`` (which
    outlives the slice; ``--launch`` picks one, default the newest)."""
    if args.workdir:
        return _stored_log(args, run)
    path = remote.SCORE_LOG if args.file == "score" else remote.TRAIN_LOG
    follow = "-F " if args.follow else ""
    run(commands.ssh(args, f"tail {follow}-n {args.lines} {path}", worker=str(args.worker)))


def _stored_log(args: argparse.Namespace, run: Gcloud) -> None:
    base = logs_url(args)
    launch = args.launch
    if launch is None:
        try:
            listed = run(commands.storage_ls(f"{base}/"), capture=True)
        except GcloudError:
            raise UsageError(
                f"no worker logs in {base}/: was training launched with this --workdir?"
            ) from None
        launches = sorted(line.rstrip("/").rsplit("/", 1)[-1] for line in listed.splitlines() if line.strip())
        if run.dry_run:
            launches = ["LAUNCH"]
        if not launches:
            raise UsageError(f"no worker logs in {base}/: was training launched with this --workdir?")
        launch = launches[-1]
        log(f"launch {launch} (the newest of {len(launches)} in {base}/; --launch picks another)")
    url = f"{base}/{launch}/worker-{args.worker}.log"
    try:
        text = run(commands.storage_cat(url), capture=True)
    except GcloudError:
        raise UsageError(f"no log of worker {args.worker} at {url}") from None
    lines = text.splitlines()[-args.lines :]
    sys.stdout.write("".join(f"{line}\n" for line in lines))


def run_status(args: argparse.Namespace, run: Gcloud) -> dict | None:
    """``WORKDIR/run_status.json`` as training writes it, or ``None`` when absent or unreadable."""
    try:
        text = run(commands.storage_cat(f"{args.workdir.rstrip('/')}/run_status.json"), capture=True)
        status = json.loads(text)
    except (GcloudError, ValueError):
        return None
    return status if isinstance(status, dict) else None
