"""The gcloud command lines the launcher runs, built from the parsed flags (``--dry-run`` prints them).

The slice is a queued resource whose one TPU node has the same name; ``ssh``/``scp`` with
``--worker=all`` reach every host of the slice at once, never prompting (``--quiet``: no passphrase or
confirmation prompt; ``--strict-host-key-checking=no``: a re-created slice with the same name has new host
keys).
"""

from __future__ import annotations

import argparse

from autext_jax.errors import UsageError

# The TPU VM images Cloud TPU documents for JAX, per generation (override with --runtime-version).
RUNTIME_VERSIONS = {
    "v4": "tpu-ubuntu2204-base",
    "v5litepod": "v2-alpha-tpuv5-lite",
    "v5p": "v2-alpha-tpuv5",
    "v6e": "v2-alpha-tpuv6e",
}
QR = ["gcloud", "compute", "tpus", "queued-resources"]
VM = ["gcloud", "compute", "tpus", "tpu-vm"]


def where(args: argparse.Namespace) -> list[str]:
    return [f"--zone={args.zone}"] + ([f"--project={args.project}"] if args.project else [])


def runtime_version(args: argparse.Namespace) -> str:
    if args.runtime_version:
        return args.runtime_version
    family = args.accelerator_type.rsplit("-", 1)[0]
    if family not in RUNTIME_VERSIONS:
        raise UsageError(
            f"no default runtime for --accelerator-type {args.accelerator_type}; pass --runtime-version "
            f"(defaults known for {', '.join(RUNTIME_VERSIONS)})"
        )
    return RUNTIME_VERSIONS[family]


def create(args: argparse.Namespace) -> list[str]:
    return [
        *QR,
        "create",
        args.name,
        f"--node-id={args.name}",
        *where(args),
        f"--accelerator-type={args.accelerator_type}",
        f"--runtime-version={runtime_version(args)}",
        *(["--spot"] if args.spot else []),
    ]


def describe(args: argparse.Namespace) -> list[str]:
    """The queued resource as JSON: ``state.state`` and, when FAILED, ``state.failedData.error``."""
    return [*QR, "describe", args.name, *where(args), "--format=json(state)"]


def delete(args: argparse.Namespace) -> list[str]:
    return [*QR, "delete", args.name, *where(args), "--force", "--quiet"]


NO_PROMPT = ["--quiet", "--strict-host-key-checking=no"]


def ssh(args: argparse.Namespace, remote: str, worker: str = "all") -> list[str]:
    return [*VM, "ssh", args.name, *where(args), f"--worker={worker}", *NO_PROMPT, "--command", remote]


def scp(args: argparse.Namespace, local: str, remote: str) -> list[str]:
    return [*VM, "scp", local, f"{args.name}:{remote}", *where(args), "--worker=all", *NO_PROMPT]


def auth_account() -> list[str]:
    return ["gcloud", "auth", "list", "--filter=status:ACTIVE", "--format=value(account)"]


def storage_ls(url: str) -> list[str]:
    return ["gcloud", "storage", "ls", url]


def storage_cat(url: str) -> list[str]:
    return ["gcloud", "storage", "cat", url]


def storage_cp(src: str, dst: str) -> list[str]:
    return ["gcloud", "storage", "cp", "-r", src, dst]


def storage_put(dst: str) -> list[str]:
    """Write stdin to ``dst``."""
    return ["gcloud", "storage", "cp", "-", dst]


def storage_rm(url: str) -> list[str]:
    return ["gcloud", "storage", "rm", url]
