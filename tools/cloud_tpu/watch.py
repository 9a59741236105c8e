"""``watch``: bring a training run to its export unattended, relaunching only on evidence.

Each poll: the export exists → done (the slice is deleted unless ``--keep``). Otherwise the queued
resource's state decides, read with retries — a failed ``describe`` is never taken for a lost slice:

- SUSPENDED, FAILED, NOT_FOUND: the slice is gone; delete, create, set up and launch again (at most
  ``--max-recreates`` times); SUSPENDING: wait for SUSPENDED (the workers are saving their checkpoint on
  the preemption notice), re-create after ``SUSPENDING_WAIT_S`` of it;
- ACCEPTED, WAITING_FOR_RESOURCES, PROVISIONING, CREATING: wait;
- ACTIVE: ``WORKDIR/run_status.json`` (written by training) says whether the run goes on; a run that
  failed, or stopped while its slice stays ACTIVE, or never reported after its launch, is relaunched on
  the same slice at most ``--max-restarts`` times, then ``watch`` gives up;
- anything else (or describe failing every retry): wait, act on nothing.

Every decision is one timestamped line on stderr.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from autext_jax.errors import AutextError
from tools.cloud_tpu import actions
from tools.cloud_tpu.gcloud import Gcloud, GcloudError, log

SUSPENDING_WAIT_S = 120.0  # Spot VMs get 30 s between the notice and the stop
CLOCK_SKEW_S = 2.0  # a status written this long before our launch still counts as the new run's


class GaveUp(AutextError):
    """``watch`` stopped trying (exit 1); the line says why and what was done with the slice."""

    exit_code = 1


@dataclass
class Watch:
    args: argparse.Namespace
    run: Gcloud
    clock: Callable[[], float] = time.time
    restarts: int = 0
    recreates: int = 0
    launched_at: float | None = None
    last_report: tuple = field(default_factory=tuple)
    stopped_polls: int = 0
    suspending_since: float | None = None
    seen_slice: bool = False  # a slice missing from the start is created, not counted as re-created

    @property
    def export(self) -> str:
        return f"{self.args.workdir.rstrip('/')}/export"

    def loop(self) -> int:
        log(f"watching slice {self.args.name} until {self.export}/config.json exists")
        while True:
            if actions.exists(f"{self.export}/config.json", self.run):
                self._finish(f"export found: {self.export}")
                return 0
            try:
                self._step()
            except GcloudError as err:
                log(f"{err}; trying again in {self.args.poll:g} s")
            self.run.sleep(self.args.poll)

    def _step(self) -> None:
        try:
            state = actions.state(self.args, self.run)
        except GcloudError as err:
            why = " ".join(err.stderr.split())[-120:]
            log(f"describe failed {self.args.describe_tries} times in a row ({why}); not acting on it")
            return
        self.seen_slice = self.seen_slice or state != "NOT_FOUND"
        if state == "SUSPENDING":
            if self.suspending_since is None:
                self.suspending_since = self.clock()
                log(f"slice {self.args.name} is SUSPENDING (preempted; the run saves): waiting for SUSPENDED")
            if self.clock() - self.suspending_since < SUSPENDING_WAIT_S:
                return
        self.suspending_since = None
        if state in actions.GONE or state == "SUSPENDING":
            self._recreate(state)
        elif state in actions.PROVISIONING:
            log(f"slice {self.args.name} is {state}: waiting")
        elif state == "ACTIVE":
            self._on_active()
        else:
            log(f"slice {self.args.name} is {state}: not acting on it")

    def _recreate(self, state: str) -> None:
        if state == "NOT_FOUND" and not self.seen_slice:
            log(f"slice {self.args.name} does not exist: creating it")
            self.seen_slice = True
            actions.create(self.args, self.run)
            self._launch(setup=True)
            return
        if self.recreates >= self.args.max_recreates:
            self._give_up(f"slice {self.args.name} is {state} and was re-created {self.recreates} times")
        self.recreates += 1
        count = f"{self.recreates} of {self.args.max_recreates}"
        log(f"slice {self.args.name} is {state}: re-creating it ({count})")
        self.launched_at = None
        if state != "NOT_FOUND":
            actions.delete(self.args, self.run)
        actions.create(self.args, self.run)
        self._launch(setup=True)

    def _launch(self, *, setup: bool) -> None:
        if setup:
            log(f"setting up every worker of {self.args.name}")
            actions.setup(self.args, self.run)
        log(f"launching training on every worker of {self.args.name}")
        actions.train(self.args, self.run)
        self.launched_at, self.stopped_polls, self.last_report = self.clock(), 0, ()

    def _on_active(self) -> None:
        status = actions.run_status(self.args, self.run)
        if self.launched_at is None:  # watch just started, or the slice was re-created outside of it
            if status and status.get("state") == "running" and not self._stale(status):
                step = status.get("step")
                log(f"slice {self.args.name} is ACTIVE with a run going (step {step}): watching it")
                self.launched_at = float(status.get("updated") or self.clock())
            else:
                log(f"slice {self.args.name} is ACTIVE with no run going: setting up and launching")
                self._launch(setup=True)
            return
        if status is None or float(status.get("updated") or 0) < self.launched_at - CLOCK_SKEW_S:
            waited = self.clock() - self.launched_at
            if waited > self.args.start_timeout:
                self._restart(f"no run status {waited:.0f} s after the launch")
            elif self.last_report != ("waiting",):
                self.last_report = ("waiting",)
                log("slice ACTIVE, run launched, waiting for its first status")
            return
        run_state, step, code = status.get("state"), status.get("step"), status.get("exit_code")
        if run_state == "running":
            if self._stale(status):
                self._restart(f"run status not updated for over {self.args.stale_after:g} s (step {step})")
            elif self.last_report != ("running", step):
                self.last_report = ("running", step)
                log(f"run is running (step {step}, commit {status.get('commit')})")
        elif run_state == "stopped" and self.stopped_polls == 0:
            self.stopped_polls = 1  # a preemption notice: the slice's state usually follows within a poll
            log(f"run stopped at step {step} (exit {code}), slice ACTIVE: checking the slice again next poll")
        elif run_state == "finished":
            self._restart(f"run finished (exit {code}) but {self.export}/config.json is missing")
        else:
            self._restart(f"run {run_state} at step {step} (exit {code}) on an ACTIVE slice")

    def _stale(self, status: dict) -> bool:
        limit = self.args.stale_after
        return bool(limit) and self.clock() - float(status.get("updated") or 0) > limit

    def _restart(self, why: str) -> None:
        if self.restarts >= self.args.max_restarts:
            self._give_up(
                f"{why}, after {self.restarts} relaunches (--max-restarts {self.args.max_restarts})"
            )
        self.restarts += 1
        log(f"{why}: relaunching ({self.restarts} of {self.args.max_restarts})")
        self._launch(setup=False)

    def _finish(self, why: str) -> None:
        if self.args.keep:
            log(f"{why}; keeping slice {self.args.name} (--keep)")
        else:
            log(f"{why}; deleting slice {self.args.name}")
            actions.delete(self.args, self.run)

    def _give_up(self, why: str) -> None:
        self._finish(f"giving up: {why}")
        kept = "kept" if self.args.keep else "deleted"
        raise GaveUp(
            f"watch gave up: {why}; slice {self.args.name} {kept}; see `logs` and {self.args.workdir}"
        )


def dry_run(args: argparse.Namespace, run: Gcloud) -> None:
    """One round as commands: the checks, then what a lost slice triggers."""
    actions.exists(f"{args.workdir.rstrip('/')}/export/config.json", run)
    actions.state(args, run)
    actions.run_status(args, run)
    actions.delete(args, run)
    actions.create(args, run)
    actions.setup(args, run)
    actions.train(args, run)
