"""``watch``'s checks before anything is billed: every usage or environment error that would otherwise
surface after ``create`` (with the slice left running) is found first, as one line (exit 2).

Checked: the workdir is ``gs://`` and writable (a probe object is written and removed), gcloud is
installed and logged in, the code to ship exists (the local checkout, or ``--repo`` answering for
``--ref``, which is pinned to the commit it names now), the config is in that code, and the ``gs://``
data and ``--init`` given exist (a local ``--init`` folder too).
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess

from autext_jax.errors import UsageError
from tools.cloud_tpu import actions, commands, source
from tools.cloud_tpu.gcloud import Gcloud, GcloudError, log

PROBE = ".cloud_tpu-probe"


def _one_line(err: GcloudError) -> str:
    return " ".join(err.stderr.split())[-200:]


def check(args: argparse.Namespace, run: Gcloud) -> None:
    actions.require_gs_workdir(args)
    actions.train_argv(args, None)  # the flags after -- (e.g. a misplaced --dry-run)
    try:
        account = run(commands.auth_account(), capture=True)
    except GcloudError as err:
        raise UsageError(f"gcloud auth list failed ({_one_line(err)}): run `gcloud auth login`") from None
    if not account and not run.dry_run:
        raise UsageError("gcloud has no active account: run `gcloud auth login` (and set a project)")
    _check_code(args)
    probe = f"{args.workdir.rstrip('/')}/{PROBE}"
    try:
        run(commands.storage_put(probe), stdin="probe\n")
        run(commands.storage_rm(probe))
    except GcloudError as err:
        raise UsageError(
            f"cannot write to --workdir {args.workdir} ({_one_line(err)}); check the bucket exists and "
            "that you may write there"
        ) from None
    for url in _inputs(args):
        if not actions.exists(url, run) and not run.dry_run:
            raise UsageError(f"{url} does not exist (or is not readable): the workers could not read it")
    if args.init and not args.init.startswith("gs://") and os.path.sep in args.init:
        if not os.path.isdir(args.init):
            raise UsageError(f"--init {args.init}: no such folder")
    log("checks passed: gcloud logged in, workdir writable, code, config and inputs found")


def _check_code(args: argparse.Namespace) -> None:
    if args.repo:
        args.ref = _pin(args.repo, args.ref)
        return
    src = source.find(args.source, args.include_uncommitted)
    probe = subprocess.run(
        ["git", "-C", str(src.root), "cat-file", "-e", f"{src.treeish}:{args.config}"], capture_output=True
    )
    if probe.returncode:
        raise UsageError(
            f"--config {args.config} is not in the code to ship ({src.root} at {src.commit[:12]}); "
            "pass a path relative to the checkout, and commit it (or --include-uncommitted)"
        )


def _pin(repo: str, ref: str) -> str:
    """``ref`` as a commit id, so that every re-create clones the same code."""
    if re.fullmatch(r"[0-9a-f]{40}", ref):
        return ref
    proc = subprocess.run(["git", "ls-remote", repo, ref], capture_output=True, text=True, timeout=120)
    lines = proc.stdout.split()
    if proc.returncode or not lines:
        detail = " ".join(proc.stderr.split())[:160] or "no such branch or tag"
        raise UsageError(f"--repo {repo} --ref {ref}: {detail}; pass a reachable repository and ref")
    log(f"--repo {repo} --ref {ref}: pinned to commit {lines[0][:12]} for every re-create")
    return lines[0]


def _inputs(args: argparse.Namespace) -> list[str]:
    """The ``gs://`` data paths among the train flags (``--set data.paths=a,b``) and a ``gs://`` init."""
    urls: list[str] = []
    extra = list(args.train_args)
    for flag, value in zip(extra, extra[1:], strict=False):
        if flag == "--set" and value.startswith("data.paths="):
            urls += [p.strip() for p in value.split("=", 1)[1].strip("[]").split(",") if p.strip()]
    if args.init and args.init.startswith("gs://"):
        urls.append(args.init)
    return [u.strip("'\"") for u in urls if u.strip("'\"").startswith("gs://")]
