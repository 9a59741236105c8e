"""``watch``: bring a training run to its end unattended, relaunching only on evidence, never billing a
dead slice, and bounded in every loop.

Before anything is billed, ``preflight.check`` finds every usage or environment error (exit 2). The code is
packed once (every re-create installs that archive). Each poll reads the queued resource's state (with
retries: a failed ``describe`` is never taken for a lost slice), then ``WORKDIR/run_status.json``: a
``finished`` run (export, calibration and status written) with its export present → done, the slice is
deleted unless ``--keep`` (worker 0 may have deleted it already). Otherwise the state decides:

- SUSPENDED, FAILED, NOT_FOUND: gone; delete, create, set up and launch again (at most ``--max-recreates``
  times). FAILED prints Google's reason (``failedData``); a permanent one (quota, permission, an unknown
  type) gives up at once. SUSPENDING: wait for SUSPENDED (the workers save), re-create after 2 minutes;
- ACCEPTED, WAITING_FOR_RESOURCES, PROVISIONING, CREATING: wait;
- ACTIVE: the run status decides. A run is alive only while its heartbeat (``beat``, renewed every
  ~20 s by training's process 0) is seen to change, judged by this process's own clock (no clock
  comparison with the VMs or the bucket): a ``running`` status whose heartbeat has not moved for
  ``--stale-after`` s is a dead run, relaunched; a status found when ``watch`` starts (or on a slice it
  did not launch) is adopted only once its heartbeat moves, else the run is launched anew. A failed run,
  or one that never reports within ``--start-timeout``, is relaunched at most ``--max-restarts`` times per
  stretch without progress (a newer checkpoint step resets the count);
- anything else (or describe failing every retry): wait, act on nothing.

Every create, setup or launch that still fails after its retries counts toward ``--max-failures`` in a
row, then ``watch`` gives up. ``--max-hours`` bounds the whole job: ``watch`` gives up at that deadline,
and worker 0 deletes the slice itself at the same deadline even if ``watch`` is gone (``remote.Launch``).
Worker logs are copied to ``WORKDIR/logs/`` before every relaunch and delete. Every decision is one
timestamped line on stderr.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from autext_jax.errors import AutextError
from tools.cloud_tpu import actions, commands, remote
from tools.cloud_tpu.gcloud import Gcloud, GcloudError, log

SUSPENDING_WAIT_S = 120.0  # Spot VMs get 30 s between the notice and the stop


class GaveUp(AutextError):
    """``watch`` stopped trying (exit 1); the line says why and what was done with the slice."""

    exit_code = 1


def _fingerprint(status: dict | None) -> tuple | None:
    """What changes at every status write (the heartbeat included)."""
    if status is None:
        return None
    return (status.get("beat"), status.get("updated"), status.get("state"), status.get("step"))


@dataclass
class Heartbeat:
    """When (on ``clock``, this process's monotonic time) the run status was last seen to change."""

    clock: Callable[[], float]
    seen: tuple | None = None
    observed: bool = False
    changed_at: float | None = None  # None: never seen to change since ``reset``

    def observe(self, status: dict | None) -> None:
        fingerprint = _fingerprint(status)
        if self.observed and fingerprint != self.seen:
            self.changed_at = self.clock()
        self.seen, self.observed = fingerprint, True

    def reset(self, status: dict | None) -> None:
        """Forget changes: from now on only a write after this moment counts."""
        self.seen, self.observed, self.changed_at = _fingerprint(status), True, None

    def moved(self) -> bool:
        return self.changed_at is not None

    def silent_for(self, since: float) -> float:
        return self.clock() - (self.changed_at if self.changed_at is not None else since)


@dataclass
class Watch:
    args: argparse.Namespace
    run: Gcloud
    clock: Callable[[], float] = time.monotonic
    wall: Callable[[], float] = time.time
    restarts: int = 0
    recreates: int = 0
    failures: int = 0  # create/setup/launch failures in a row
    launched_at: float | None = None  # on ``clock``; None: no launch of ours on this slice
    watching_since: float | None = None  # first sight of a run we did not launch
    progress_step: int | None = None
    last_report: tuple = field(default_factory=tuple)
    stopped_polls: int = 0
    suspending_since: float | None = None
    seen_slice: bool = False  # a slice missing from the start is created, not counted as re-created
    fresh_slice: bool = False  # created by this watch, nothing launched on it yet
    launch_id: str | None = None  # our newest launch
    shipment: actions.Shipment | None = None
    deadline: float | None = None  # unix time
    beat: Heartbeat = field(init=False)

    def __post_init__(self) -> None:
        self.beat = Heartbeat(self.clock)

    @property
    def export(self) -> str:
        return f"{self.args.workdir.rstrip('/')}/export"

    def loop(self) -> int:
        if self.args.max_hours > 0:
            self.deadline = self.wall() + self.args.max_hours * 3600
        with tempfile.TemporaryDirectory() as folder:
            self.shipment = actions.ship(self.args, self.run, folder)
            log(
                f"watching slice {self.args.name} until the run in {self.args.workdir} is finished "
                f"(code {self.shipment.commit[:12]} fixed for every re-create"
                + (f"; deadline in {self.args.max_hours:g} h)" if self.deadline else ")")
            )
            while True:
                if self.deadline is not None and self.wall() > self.deadline:
                    self._give_up(f"the --max-hours {self.args.max_hours:g} deadline passed")
                try:
                    if self._step():
                        return 0
                except GcloudError as err:
                    log(f"{err}; trying again in {self.args.poll:g} s")
                self.run.sleep(self.args.poll)

    def _step(self) -> bool:
        try:
            state = actions.state(self.args, self.run)
        except GcloudError as err:
            why = " ".join(err.stderr.split())[-120:]
            log(f"describe failed {self.args.describe_tries} times in a row ({why}); not acting on it")
            state = None
        # Read after the state: a slice gone because worker 0 deleted it at the end is seen as finished.
        status = actions.run_status(self.args, self.run)
        self.beat.observe(status)
        if status and status.get("state") == "finished" and self._after_launch():
            if actions.exists(f"{self.export}/config.json", self.run):
                alive = state is not None and state.name == "ACTIVE"  # else worker 0 deleted it already
                self._finish(
                    f"run finished at step {status.get('step')}, export in {self.export}", save_logs=alive
                )
                return True
        if state is None:
            return False
        self.seen_slice = self.seen_slice or state.name != "NOT_FOUND"
        if state.name == "SUSPENDING":
            if self.suspending_since is None:
                self.suspending_since = self.clock()
                log(f"slice {self.args.name} is SUSPENDING (preempted; the run saves): waiting for SUSPENDED")
            if self.clock() - self.suspending_since < SUSPENDING_WAIT_S:
                return False
        self.suspending_since = None
        if state.name == "FAILED":
            log(f"slice {self.args.name} is FAILED: {state.reason or 'Google gave no reason'}")
            if state.permanent:
                self._give_up(f"the slice FAILED for a reason re-creating cannot fix: {state.reason}")
        if state.name in actions.GONE and self.launch_id is not None:
            why = actions.slice_deleted(self.args, self.run, self.launch_id)
            if why:  # its run ended for good (a failure on the last launch), or the deadline passed
                self._give_up(f"worker 0 deleted slice {self.args.name}: {why}")
        if state.name in actions.GONE or state.name == "SUSPENDING":
            self._recreate(state.name)
        elif state.name in actions.PROVISIONING:
            log(f"slice {self.args.name} is {state.name}: waiting")
        elif state.name == "ACTIVE":
            self._on_active(status)
        else:
            log(f"slice {self.args.name} is {state.name}: not acting on it")
        return False

    def _after_launch(self) -> bool:
        """A ``finished`` status counts if it was written after our launch, or found finished at start."""
        return self.launched_at is None or self.beat.moved()

    def _recreate(self, state: str) -> None:
        if state == "NOT_FOUND" and not self.seen_slice:
            log(f"slice {self.args.name} does not exist: creating it")
            self._create()
            self.seen_slice = True
            return
        if self.recreates >= self.args.max_recreates:
            self._give_up(f"slice {self.args.name} is {state} and was re-created {self.recreates} times")
        self.recreates += 1
        count = f"{self.recreates} of {self.args.max_recreates}"
        log(f"slice {self.args.name} is {state}: re-creating it ({count})")
        self.launched_at = None
        if state != "NOT_FOUND":
            actions.delete(self.args, self.run)
        self._create()

    def _create(self) -> None:
        """Request the slice; the next polls wait for it, and launch on it once it is ACTIVE."""
        self._attempt("create", lambda: actions.create(self.args, self.run, wait=False))
        self.launched_at, self.fresh_slice = None, True

    def _attempt(self, what: str, step: Callable[[], None]) -> None:
        """``step`` (already retried ``--tries`` times inside); a failure counts toward ``--max-failures``."""
        try:
            step()
        except GcloudError as err:
            self.failures += 1
            if self.failures >= self.args.max_failures:
                self._give_up(f"{what} failed {self.failures} times in a row (--max-failures): {err}")
            log(f"{what} failed ({self.failures} of {self.args.max_failures} in a row): {err}")
            raise
        self.failures = 0

    def _launch(self, *, setup: bool) -> None:
        if setup:
            log(f"setting up every worker of {self.args.name}")
            self._attempt("setup", lambda: actions.install(self.args, self.run, self.shipment))
        launch = new_launch(
            self.args,
            last=self.restarts >= self.args.max_restarts,
            progress_step=self.progress_step,
            deadline=self.deadline,
        )
        before = actions.run_status(self.args, self.run)
        log(f"launching training on every worker of {self.args.name}")
        self._attempt("launch", lambda: actions.train(self.args, self.run, launch))
        self.launch_id = launch.launch_id
        self.launched_at, self.stopped_polls, self.last_report = self.clock(), 0, ()
        self.watching_since, self.fresh_slice = None, False
        self.beat.reset(before)

    def _on_active(self, status: dict | None) -> None:
        if self.launched_at is None and self.fresh_slice:
            log(f"slice {self.args.name} is ACTIVE (created by watch): setting up and launching")
            self._launch(setup=True)
            return
        if self.launched_at is None:  # watch just started, or the slice was re-created outside of it
            self._adopt_or_launch(status)
            return
        if status is None or not self.beat.moved():  # nothing written since our launch
            waited = self.clock() - self.launched_at
            if waited > self.args.start_timeout:
                self._restart(f"no run status {waited:.0f} s after the launch (--start-timeout)")
            elif self.last_report != ("waiting",):
                self.last_report = ("waiting",)
                log("slice ACTIVE, run launched, waiting for its first status")
            return
        run_state, step, code = status.get("state"), status.get("step"), status.get("exit_code")
        self._note_progress(step)
        if run_state == "running":
            silent = self.beat.silent_for(self.launched_at)
            if silent > self.args.stale_after:
                self._restart(
                    f"run heartbeat silent for {silent:.0f} s (--stale-after {self.args.stale_after:g}) at "
                    f"step {step}: the run died"
                )
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

    def _adopt_or_launch(self, status: dict | None) -> None:
        if not status or status.get("state") != "running":
            said = f"its status says {status.get('state')}" if status else "no run status"
            log(f"slice {self.args.name} is ACTIVE, {said}: setting up and launching")
            self._launch(setup=True)
            return
        step = status.get("step")
        if self.watching_since is None:
            self.watching_since = self.clock()
            self.beat.reset(status)
            log(
                f"slice {self.args.name} is ACTIVE and the status says running (step {step}): adopting it "
                f"only if its heartbeat moves within {self.args.stale_after:g} s"
            )
        elif self.beat.moved():
            log(f"run heartbeat moved (step {step}): watching the run going on {self.args.name}")
            self.launched_at, self.last_report = self.clock(), ()
        elif self.clock() - self.watching_since > self.args.stale_after:
            log(
                f"run heartbeat silent for {self.clock() - self.watching_since:.0f} s since watch first saw "
                f"it (step {step}): a stale status, no run is going; setting up and launching"
            )
            self._launch(setup=True)

    def _note_progress(self, step: int | None) -> None:
        if step is None:
            return
        if self.progress_step is not None and step > self.progress_step and self.restarts:
            log(f"progress: a checkpoint at step {step} (> {self.progress_step}); restart budget reset")
            self.restarts = 0
        if self.progress_step is None or step > self.progress_step:
            self.progress_step = step

    def _restart(self, why: str) -> None:
        if self.restarts >= self.args.max_restarts:
            self._give_up(
                f"{why}, after {self.restarts} relaunches without progress "
                f"(--max-restarts {self.args.max_restarts})"
            )
        self.restarts += 1
        log(f"{why}: relaunching ({self.restarts} of {self.args.max_restarts})")
        actions.save_logs(self.args, self.run)
        self._launch(setup=False)

    def _finish(self, why: str, *, save_logs: bool = False) -> None:
        if save_logs:
            actions.save_logs(self.args, self.run)
        if self.args.keep:
            log(f"{why}; keeping slice {self.args.name} (--keep)")
        else:
            log(f"{why}; deleting slice {self.args.name}")
            actions.delete(self.args, self.run)

    def _give_up(self, why: str) -> None:
        self._finish(f"giving up: {why}", save_logs=True)
        kept = "kept" if self.args.keep else "deleted"
        raise GaveUp(
            f"watch gave up: {why}; slice {self.args.name} {kept}; worker logs: python -m tools.cloud_tpu "
            f"logs --name {self.args.name} --zone {self.args.zone} --workdir {self.args.workdir}"
        )


def new_launch(
    args: argparse.Namespace, *, last: bool, deadline: float | None, progress_step: int | None = None
) -> remote.Launch:
    """A launch whose worker 0 deletes the slice (unless ``--keep``) when the run ends for good: finished,
    or failed without progress past ``progress_step`` on the ``last`` launch ``--max-restarts`` allows;
    or at the ``deadline``."""
    return remote.Launch(
        actions.new_launch_id(),
        actions.logs_url(args),
        delete=None if args.keep else [*commands.delete(args), "--async"],
        delete_on_failure=last,
        progress_step=progress_step,
        deadline=int(deadline) if deadline is not None else None,
    )


def dry_run(args: argparse.Namespace, run: Gcloud) -> None:
    """One round as commands: the checks, then what a lost slice triggers."""
    with tempfile.TemporaryDirectory() as folder:
        shipment = actions.ship(args, run, folder)
        actions.run_status(args, run)
        actions.exists(f"{args.workdir.rstrip('/')}/export/config.json", run)
        actions.state(args, run)
        actions.save_logs(args, run)
        actions.delete(args, run)
        actions.create(args, run)
        actions.install(args, run, shipment)
        deadline = time.time() + args.max_hours * 3600 if args.max_hours > 0 else None
        actions.train(args, run, new_launch(args, last=False, deadline=deadline))
