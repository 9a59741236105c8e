"""A small batching queue: requests arriving within a few milliseconds are scored in one engine run.

Why: the engine packs many texts per row, so one run over 32 texts costs far less than 32 runs over one
text each. One worker thread owns the detector (it is not shared between threads); requests wait on an
asyncio future. The worker takes the first pending job, waits up to ``max_wait_s`` for more (or until
``max_texts`` texts are gathered), groups the jobs by their scoring options and runs each group once.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger(__name__)

# (texts, segments, operating_point) -> one record per text, in order.
ScoreFn = Callable[[list[str], str | None, str | None], list[dict[str, Any]]]


class QueueClosedError(RuntimeError):
    """The queue is shutting down and takes no new jobs."""


@dataclass(frozen=True)
class BatchingConfig:
    """``max_wait_s``: how long the first job of a batch waits for company; ``max_texts``: batch size cap."""

    max_wait_s: float = 0.005
    max_texts: int = 256


@dataclass
class _Job:
    texts: list[str]
    segments: str | None
    operating_point: str | None
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future = field(repr=False)


@dataclass
class BatchStats:
    """Counters the service reports on ``/v1/info`` (and tests read): runs, texts, jobs."""

    runs: int = 0
    texts: int = 0
    jobs: int = 0
    largest_run: int = 0


_STOP = object()


class BatchingQueue:
    """Gathers concurrent scoring jobs into few engine runs on one worker thread."""

    def __init__(self, score: ScoreFn, config: BatchingConfig | None = None):
        self._score = score
        self.config = config or BatchingConfig()
        self.stats = BatchStats()
        self._jobs: queue.Queue = queue.Queue()
        self._closed = False
        self._thread = threading.Thread(target=self._work, name="autext-batcher", daemon=True)
        self._thread.start()

    async def submit(
        self, texts: list[str], *, segments: str | None = None, operating_point: str | None = None
    ) -> list[dict[str, Any]]:
        """Score ``texts`` in the next batch; raises what the scoring function raised for this job."""
        if self._closed:
            raise QueueClosedError("the service is shutting down")
        loop = asyncio.get_running_loop()
        job = _Job(list(texts), segments, operating_point, loop, loop.create_future())
        self._jobs.put(job)
        return await job.future

    def close(self, timeout: float | None = None) -> None:
        """Stop taking jobs, finish every queued one, then stop the worker."""
        self._closed = True
        self._jobs.put(_STOP)
        self._thread.join(timeout)

    def _work(self) -> None:
        while True:
            first = self._jobs.get()
            if first is _STOP:
                return
            jobs, stop = self._gather(first)
            self._run(jobs)
            if stop:
                return

    def _gather(self, first: _Job) -> tuple[list[_Job], bool]:
        jobs, n = [first], len(first.texts)
        deadline = time.monotonic() + self.config.max_wait_s
        while n < self.config.max_texts:
            left = deadline - time.monotonic()
            try:
                job = self._jobs.get(timeout=left) if left > 0 else self._jobs.get_nowait()
            except queue.Empty:
                break
            if job is _STOP:
                return jobs + self._drain(), True
            jobs.append(job)
            n += len(job.texts)
        return jobs, False

    def _drain(self) -> list[_Job]:
        rest = []
        while True:
            try:
                job = self._jobs.get_nowait()
            except queue.Empty:
                return rest
            if job is not _STOP:
                rest.append(job)

    def _run(self, jobs: list[_Job]) -> None:
        groups: dict[tuple[str | None, str | None], list[_Job]] = {}
        for job in jobs:
            groups.setdefault((job.segments, job.operating_point), []).append(job)
        for (segments, operating_point), group in groups.items():
            texts = [t for job in group for t in job.texts]
            try:
                records = self._score(texts, segments, operating_point)
            except Exception as error:  # handed to the waiting request(s); the worker lives on
                if len(group) == 1:
                    _resolve(group[0], error=error)
                else:  # one job's failure must not fail its neighbours: score each alone
                    for job in group:
                        self._run_alone(job)
                continue
            self.stats.runs += 1
            self.stats.texts += len(texts)
            self.stats.jobs += len(group)
            self.stats.largest_run = max(self.stats.largest_run, len(texts))
            start = 0
            for job in group:
                _resolve(job, result=records[start : start + len(job.texts)])
                start += len(job.texts)


    def _run_alone(self, job: _Job) -> None:
        try:
            records = self._score(job.texts, job.segments, job.operating_point)
        except Exception as error:
            _resolve(job, error=error)
            return
        self.stats.runs += 1
        self.stats.texts += len(job.texts)
        self.stats.jobs += 1
        _resolve(job, result=records)


def _resolve(job: _Job, *, result: Any = None, error: BaseException | None = None) -> None:
    def settle() -> None:
        if job.future.done():  # the request went away (client disconnected)
            return
        if error is not None:
            job.future.set_exception(error)
        else:
            job.future.set_result(result)

    try:
        job.loop.call_soon_threadsafe(settle)
    except RuntimeError:  # the event loop is already closed
        log.debug("a job finished after its event loop closed")
