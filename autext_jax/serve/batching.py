"""A small batching queue: requests arriving within a few milliseconds are scored in one engine run.

Why: the engine packs many texts per row, so one run over 32 texts costs far less than 32 runs over one
text each. One worker thread owns the detector (it is not shared between threads); requests wait on an
asyncio future. The worker takes the first pending job, waits up to ``max_wait_s`` for more (or until
``max_texts`` texts are gathered), groups the jobs by their scoring options and runs each group once.

Back-pressure: at most ``max_queued_texts`` texts wait or run at once; past that ``submit`` refuses at once
(``QueueFullError``, answered 429) rather than queueing without bound, so memory stays bounded under a
flood. A job that waited longer than ``request_timeout_s`` is dropped unscored (``QueueTimeoutError``, 503).
"""

from __future__ import annotations

import asyncio
import logging
import math
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


class QueueFullError(RuntimeError):
    """Taking the job would put more than ``max_queued_texts`` texts in the queue."""

    def __init__(self, message: str, retry_after_s: int):
        super().__init__(message)
        self.retry_after_s = retry_after_s


class QueueTimeoutError(RuntimeError):
    """The job waited (or ran) longer than ``request_timeout_s``."""


@dataclass(frozen=True)
class BatchingConfig:
    """``max_wait_s``: how long the first job of a batch waits for company; ``max_texts``: batch size cap;
    ``max_queued_texts``: texts waiting or running at most (more: refused); ``request_timeout_s``: how long a
    job may wait for its records.

    Why 256 queued texts by default (``max_texts``, one full engine run, the texts being scored included):
    an accepted text is in the run under way or the next one. On two idle CPU cores the embedded model
    scores 50-70 texts/s, so it waits about 4-5 s at most, far inside the 60 s request timeout; a burst
    beyond that is better told "retry after N s" (429) than kept waiting. The queue then holds at most
    256 x ``max_chars`` characters."""

    max_wait_s: float = 0.005
    max_texts: int = 256
    max_queued_texts: int = 256
    request_timeout_s: float = 60.0


@dataclass
class _Job:
    texts: list[str]
    segments: str | None
    operating_point: str | None
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future = field(repr=False)
    queued_at: float = field(default_factory=time.monotonic)


@dataclass
class BatchStats:
    """Counters the service reports on ``/v1/info`` (and tests read): runs, texts, jobs."""

    runs: int = 0
    texts: int = 0
    jobs: int = 0
    largest_run: int = 0


_STOP = object()


class BatchObserver:
    """What the queue reports as it works (the service's metrics); the default ignores it all."""

    def queue_wait(self, seconds: float) -> None: ...

    def engine_run(self, n_texts: int, records: list[dict[str, Any]]) -> None: ...


class BatchingQueue:
    """Gathers concurrent scoring jobs into few engine runs on one worker thread."""

    def __init__(
        self, score: ScoreFn, config: BatchingConfig | None = None, observer: BatchObserver | None = None
    ):
        self._score = score
        self.config = config or BatchingConfig()
        self.stats = BatchStats()
        self._observer = observer or BatchObserver()
        self._jobs: queue.Queue = queue.Queue()
        self._closed = False
        self._lock = threading.Lock()
        self._queued_texts = 0
        self._rate = 0.0  # texts per second of recent engine runs (for Retry-After)
        self._thread = threading.Thread(target=self._work, name="autext-batcher", daemon=True)
        self._thread.start()

    async def submit(
        self, texts: list[str], *, segments: str | None = None, operating_point: str | None = None
    ) -> list[dict[str, Any]]:
        """Score ``texts`` in the next batch; raises what the scoring function raised for this job,
        ``QueueFullError`` at once when the queue is full, ``QueueTimeoutError`` after the request timeout."""
        if self._closed:
            raise QueueClosedError("the service is shutting down")
        with self._lock:
            if self._queued_texts + len(texts) > self.config.max_queued_texts:
                waiting = self._queued_texts
                raise QueueFullError(
                    f"busy: {waiting} texts are queued (the limit is {self.config.max_queued_texts}); "
                    "retry after the time in Retry-After",
                    self._retry_after(waiting),
                )
            self._queued_texts += len(texts)
        loop = asyncio.get_running_loop()
        job = _Job(list(texts), segments, operating_point, loop, loop.create_future())
        self._jobs.put(job)
        try:
            return await asyncio.wait_for(job.future, self.config.request_timeout_s)
        except TimeoutError:  # wait_for cancelled the future: the worker skips or drops this job
            raise QueueTimeoutError(
                f"no answer within the request timeout ({self.config.request_timeout_s:g} s); the service is "
                "overloaded, retry later"
            ) from None

    @property
    def queued_texts(self) -> int:
        """Texts waiting or being scored now."""
        return self._queued_texts

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def full(self) -> bool:
        return self._queued_texts >= self.config.max_queued_texts

    def _retry_after(self, waiting: int) -> int:
        """Seconds until the texts now queued are probably scored (at least 1)."""
        return max(1, min(60, math.ceil(waiting / self._rate))) if self._rate > 0 else 1

    def _done(self, jobs: list[_Job]) -> None:
        with self._lock:
            self._queued_texts -= sum(len(job.texts) for job in jobs)

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
        now = time.monotonic()
        live = []
        for job in jobs:
            if job.future.cancelled() or now - job.queued_at > self.config.request_timeout_s:
                self._done([job])  # its request has been answered 503 (or is about to be)
                continue
            self._observer.queue_wait(now - job.queued_at)
            live.append(job)
        groups: dict[tuple[str | None, str | None], list[_Job]] = {}
        for job in live:
            groups.setdefault((job.segments, job.operating_point), []).append(job)
        for group in groups.values():
            try:
                self._run_group(group)
            finally:
                self._done(group)

    def _run_group(self, group: list[_Job]) -> None:
        segments, operating_point = group[0].segments, group[0].operating_point
        texts = [t for job in group for t in job.texts]
        started = time.monotonic()
        try:
            records = self._score(texts, segments, operating_point)
        except Exception as error:  # handed to the waiting request(s); the worker lives on
            if len(group) == 1:
                _resolve(group[0], error=error)
            else:  # one job's failure must not fail its neighbours: score each alone
                for job in group:
                    self._run_alone(job)
            return
        self._count(len(texts), records, time.monotonic() - started)
        self.stats.runs += 1
        self.stats.texts += len(texts)
        self.stats.jobs += len(group)
        self.stats.largest_run = max(self.stats.largest_run, len(texts))
        start = 0
        for job in group:
            _resolve(job, result=records[start : start + len(job.texts)])
            start += len(job.texts)

    def _count(self, n_texts: int, records: list[dict[str, Any]], seconds: float) -> None:
        rate = n_texts / max(seconds, 1e-6)
        self._rate = rate if self._rate == 0 else 0.8 * self._rate + 0.2 * rate
        self._observer.engine_run(n_texts, records)

    def _run_alone(self, job: _Job) -> None:
        started = time.monotonic()
        try:
            records = self._score(job.texts, job.segments, job.operating_point)
        except Exception as error:
            _resolve(job, error=error)
            return
        self._count(len(job.texts), records, time.monotonic() - started)
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
