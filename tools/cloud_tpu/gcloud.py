"""Running ``gcloud``: one command at a time, printed instead under ``--dry-run``, retried with backoff
where a failure may be a blip, and the timestamped log every decision of the launcher goes to.

Every call has a timeout (``ssh``/``scp`` their own, longer one: an install takes minutes): a call that
hangs (a stalled ssh, a prompt nobody answers) is killed with its process group and fails like any
other, so an unattended loop can never sit on one call.
"""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from autext_jax.errors import UsageError

T = TypeVar("T")
SSH, SCP = ["compute", "tpus", "tpu-vm", "ssh"], ["compute", "tpus", "tpu-vm", "scp"]


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
    """Runs (or, with ``dry_run``, prints) gcloud commands; ``sleep`` is injectable for the retry waits.
    ``call_timeout``/``ssh_timeout``: seconds before a call is killed (``ssh``/``scp`` use the second)."""

    dry_run: bool = False
    sleep: Callable[[float], None] = time.sleep
    call_timeout: float = 300.0
    ssh_timeout: float = 1800.0

    def timeout_of(self, cmd: list[str]) -> float:
        return self.ssh_timeout if cmd[1:5] in (SSH, SCP) else self.call_timeout

    def __call__(self, cmd: list[str], *, capture: bool = False, stdin: str | None = None) -> str:
        """The command's stdout (stripped); a non-zero exit or a timeout raises ``GcloudError``."""
        if self.dry_run:
            print(shlex.join(cmd), flush=True)
            return ""
        timeout = self.timeout_of(cmd)
        try:
            proc = subprocess.Popen(
                cmd,
                text=True,
                stdin=subprocess.PIPE if stdin is not None else subprocess.DEVNULL,
                stdout=subprocess.PIPE if capture else None,
                stderr=subprocess.PIPE,
                start_new_session=True,  # a timeout kills gcloud's ssh children too
            )
        except FileNotFoundError:
            raise UsageError("gcloud is not installed: https://cloud.google.com/sdk/docs/install") from None
        try:
            out, err = proc.communicate(stdin, timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
            raise GcloudError(cmd, 124, f"no answer within {timeout:g} s: killed") from None
        if not capture and err:
            sys.stderr.write(err)
        if proc.returncode:
            raise GcloudError(cmd, proc.returncode, err or "")
        return (out or "").strip()

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
