"""Running ``gcloud``: one command at a time, printed instead under ``--dry-run``, retried with backoff
where a failure may be a blip, and the timestamped log every decision of the launcher goes to."""

from __future__ import annotations

import shlex
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from autext_jax.errors import UsageError

T = TypeVar("T")


class GcloudError(UsageError):
    """A gcloud command exited non-zero; ``stderr`` keeps its message for callers that look inside."""

    def __init__(self, cmd: list[str], returncode: int, stderr: str):
        detail = " ".join(stderr.split())[-300:]
        super().__init__(
            f"{shlex.join(cmd[:6])} … failed with exit code {returncode}" + (f": {detail}" if detail else "")
        )
        self.returncode, self.stderr = returncode, stderr


def log(message: str) -> None:
    """One decision, one line, with a UTC timestamp (``watch`` can run overnight: its log is the record)."""
    stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    print(f"{stamp} cloud_tpu: {message}", file=sys.stderr, flush=True)


@dataclass
class Gcloud:
    """Runs (or, with ``dry_run``, prints) gcloud commands; ``sleep`` is injectable for the retry waits."""

    dry_run: bool = False
    sleep: Callable[[float], None] = time.sleep

    def __call__(self, cmd: list[str], *, capture: bool = False, stdin: str | None = None) -> str:
        """The command's stdout (stripped); a non-zero exit raises ``GcloudError``."""
        if self.dry_run:
            print(shlex.join(cmd), flush=True)
            return ""
        try:
            proc = subprocess.run(
                cmd,
                check=False,
                text=True,
                input=stdin,
                stdout=subprocess.PIPE if capture else None,
                stderr=subprocess.PIPE,
            )
        except FileNotFoundError:
            raise UsageError("gcloud is not installed: https://cloud.google.com/sdk/docs/install") from None
        if not capture and proc.stderr:
            sys.stderr.write(proc.stderr)
        if proc.returncode:
            raise GcloudError(cmd, proc.returncode, proc.stderr or "")
        return (proc.stdout or "").strip()

    def retry(
        self,
        what: str,
        attempt: Callable[[], T],
        *,
        tries: int,
        backoff: float,
        retry_if: Callable[[GcloudError], bool] = lambda err: True,
    ) -> T:
        """``attempt()`` up to ``tries`` times, waiting ``backoff``, 2×, 4× … (capped at 10 min) between."""
        for n in range(1, tries + 1):
            try:
                return attempt()
            except GcloudError as err:
                if n == tries or not retry_if(err):
                    raise
                wait = min(backoff * 2 ** (n - 1), 600.0)
                log(
                    f"{what} failed (try {n} of {tries}): {' '.join(err.stderr.split())[-200:]}; "
                    f"retrying in {wait:g} s"
                )
                self.sleep(wait)
        raise AssertionError("unreachable")
