"""Packing the local checkout for the workers: a ``git archive`` of the committed tree (``HEAD``), or with
``--include-uncommitted`` of the working tree as ``git add -A`` would commit it (ignored files stay out).

The result names the code it holds: the commit id, with ``+dirty`` when uncommitted changes are in it;
training records it in the run directory (``AUTEXT_JAX_SOURCE_COMMIT``).
"""

from __future__ import annotations

import os
import shlex
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from autext_jax.errors import UsageError


@dataclass(frozen=True)
class Source:
    """What will be shipped: ``treeish`` for ``git archive``, ``commit`` as recorded, ``note`` for the log."""

    root: Path
    treeish: str
    commit: str
    note: str

    def archive_cmd(self, tarball: str) -> list[str]:
        return ["git", "-C", str(self.root), "archive", "--format=tar.gz", "-o", tarball, self.treeish]


def _git(root: Path, *args: str, env: dict | None = None) -> str:
    proc = subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True, env=env)
    if proc.returncode:
        raise UsageError(f"git {shlex.join(args)} in {root} failed: {' '.join(proc.stderr.split())[:200]}")
    return proc.stdout.strip()


def find(source_dir: str | Path, include_uncommitted: bool) -> Source:
    """The checkout holding ``source_dir`` and the tree to ship from it."""
    probe = subprocess.run(
        ["git", "-C", str(source_dir), "rev-parse", "--show-toplevel"], capture_output=True, text=True
    )
    if probe.returncode:
        raise UsageError(
            f"{source_dir} is not in a git checkout: run from your clone of autext_jax, pass --source DIR, "
            "or --repo URL to clone on the workers"
        )
    root = Path(probe.stdout.strip())
    head = _git(root, "rev-parse", "HEAD")
    changed = [line for line in _git(root, "status", "--porcelain").splitlines() if line.strip()]
    if not changed:
        return Source(root, head, head, f"shipping commit {head[:12]} (no uncommitted changes)")
    if not include_uncommitted:
        return Source(
            root,
            head,
            head,
            f"shipping commit {head[:12]}; {len(changed)} uncommitted change(s) NOT included "
            "(--include-uncommitted ships them)",
        )
    with tempfile.TemporaryDirectory() as tmp:  # a private index: the user's staging area stays as it is
        env = dict(os.environ, GIT_INDEX_FILE=str(Path(tmp) / "index"))
        _git(root, "read-tree", "HEAD", env=env)
        _git(root, "add", "-A", env=env)
        tree = _git(root, "write-tree", env=env)
    return Source(
        root,
        tree,
        f"{head}+dirty",
        f"shipping commit {head[:12]} plus {len(changed)} uncommitted change(s) "
        f"(recorded as {head[:12]}+dirty)",
    )


def pack(source: Source, tarball: Path) -> None:
    _git(source.root, *source.archive_cmd(str(tarball))[3:])
