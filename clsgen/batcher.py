"""Micro-batching: one worker thread owns the model; requests from the event loop queue up for it.

The event loop never runs model code. A request becomes a `Job` with a *kind* (for example
``"proba"`` or ``"stream"``) and a *key* (jobs batch together only when kind and key are equal, so
requests with different generation settings never share a batch). The worker takes the oldest job,
waits up to `window_s` after that job arrived for more jobs of the same kind and key (at most
`max_batch`), runs them as one call of the kind's handler, and hands each job its own result.

A bounded queue refuses work with `QueueFull` (the server answers 503 with Retry-After) rather than
growing without limit. A job whose caller gave up (timeout, disconnect) is skipped when its turn
comes, and a running stream can check `job.cancelled` to stop early.
"""

from __future__ import annotations

import asyncio
import math
import threading
import time
from collections import deque
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, field
from typing import Any

Handler = Callable[[Sequence["Job"]], Sequence[Any]]
"""Runs a batch of jobs in the worker thread; returns one result per job, in order."""


class QueueFull(Exception):
    """The queue holds `max_queue` jobs already; try again after `retry_after` seconds."""

    def __init__(self, pending: int, retry_after: int):
        super().__init__(f"the server is busy ({pending} requests queued); retry after {retry_after} s")
        self.pending = pending
        self.retry_after = retry_after


class BatcherClosed(Exception):
    """The batcher was stopped (server shutting down)."""


@dataclass(eq=False)
class Job:
    """One request's unit of model work."""

    kind: str
    item: Any
    key: Hashable = None
    loop: asyncio.AbstractEventLoop | None = None
    future: asyncio.Future | None = None
    enqueued: float = field(default_factory=time.monotonic)
    cancelled: threading.Event = field(default_factory=threading.Event)

    def cancel(self) -> None:
        """Mark the job abandoned: skipped if still queued; a running stream may stop early."""
        self.cancelled.set()

    def emit(self, callback: Callable[..., Any], *args: Any) -> None:
        """Call `callback(*args)` on the job's event loop (from the worker thread)."""
        if self.loop is not None and not self.loop.is_closed():
            try:
                self.loop.call_soon_threadsafe(callback, *args)
            except RuntimeError:  # loop closed between the check and the call
                pass


@dataclass
class BatcherStats:
    """Counters for /health and the load test."""

    jobs: int = 0
    batches: int = 0
    largest_batch: int = 0
    rejected: int = 0
    skipped: int = 0
    failed: int = 0

    @property
    def mean_batch(self) -> float:
        return self.jobs / self.batches if self.batches else 0.0


class Batcher:
    """A queue of jobs and the one thread that runs them, batching jobs of the same kind and key."""

    def __init__(self, handlers: dict[str, Handler], *, max_queue: int = 64, window_s: float = 0.005,
                 max_batch: int = 8, batchable: Sequence[str] | None = None, name: str = "clsgen-model",
                 init: Callable[[], Any] | None = None):
        """handlers: kind -> handler. batchable: the kinds that may run several jobs per call
        (default: all); the others always run one job at a time. init: called first in the worker
        thread (per-thread settings such as torch's thread count)."""
        if max_queue < 1 or max_batch < 1 or window_s < 0:
            raise ValueError("max_queue and max_batch must be >= 1 and window_s >= 0")
        self.handlers = dict(handlers)
        self.batchable = set(self.handlers if batchable is None else batchable)
        self.max_queue = max_queue
        self.window_s = window_s
        self.max_batch = max_batch
        self.name = name
        self.init = init
        self.stats = BatcherStats()
        self._queue: deque[Job] = deque()
        self._running = 0
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None
        self._closed = False
        self._seconds_per_job = 0.05  # running estimate, for Retry-After

    # ------------------------------------------------------------------ event-loop side
    @property
    def pending(self) -> int:
        """Jobs queued or running."""
        with self._cond:
            return len(self._queue) + self._running

    def retry_after(self) -> int:
        """Seconds after which the queue has probably drained (at least 1, at most 60)."""
        with self._cond:
            backlog = len(self._queue) + self._running
        return int(min(60, max(1, math.ceil(backlog * self._seconds_per_job))))

    def submit(self, kind: str, item: Any, key: Hashable = None) -> Job:
        """Queue a job (call from the event loop); raises QueueFull when `max_queue` jobs wait."""
        if kind not in self.handlers:
            raise KeyError(f"no handler for job kind {kind!r}")
        loop = asyncio.get_running_loop()
        job = Job(kind, item, key, loop, loop.create_future())
        with self._cond:
            if self._closed:
                raise BatcherClosed("the model worker has stopped")
            if len(self._queue) + self._running >= self.max_queue:
                self.stats.rejected += 1
                pending = len(self._queue) + self._running
                raise QueueFull(pending, self._retry_after_locked(pending))
            self._queue.append(job)
            self._ensure_thread()
            self._cond.notify()
        return job

    async def run(self, kind: str, item: Any, key: Hashable = None, timeout: float | None = None) -> Any:
        """Submit a job and wait for its result; on timeout or cancellation the job is abandoned."""
        job = self.submit(kind, item, key)
        return await self.wait(job, timeout)

    @staticmethod
    async def wait(job: Job, timeout: float | None = None) -> Any:
        try:
            return await asyncio.wait_for(asyncio.shield(job.future), timeout)
        except BaseException:  # timeout, client gone, server stopping
            job.cancel()
            raise

    def start(self) -> None:
        with self._cond:
            self._closed = False
            self._ensure_thread()

    def stop(self, timeout: float = 5.0) -> None:
        """Refuse new jobs, fail the queued ones, and let the running batch finish."""
        with self._cond:
            self._closed = True
            dropped = list(self._queue)
            self._queue.clear()
            self._cond.notify_all()
            thread = self._thread
        for job in dropped:
            job.cancel()
            self._settle(job, error=BatcherClosed("the server is shutting down"))
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)
        with self._cond:
            if self._thread is thread:
                self._thread = None

    # ------------------------------------------------------------------ worker side
    def _retry_after_locked(self, backlog: int) -> int:
        return int(min(60, max(1, math.ceil(backlog * self._seconds_per_job))))

    def _ensure_thread(self) -> None:
        if self._thread is None or not self._thread.is_alive():
            self._thread = threading.Thread(target=self._work, name=self.name, daemon=True)
            self._thread.start()

    def _next_batch(self) -> list[Job] | None:
        """The oldest live job plus same-kind, same-key jobs that arrive within the window."""
        with self._cond:
            while True:
                while not self._queue and not self._closed:
                    self._cond.wait()
                if self._closed:
                    return None
                first = self._queue.popleft()
                if first.cancelled.is_set():
                    self.stats.skipped += 1
                    continue
                break
            batch = [first]
            if first.kind in self.batchable and self.max_batch > 1:
                deadline = first.enqueued + self.window_s
                while True:
                    self._take_matching(first, batch)
                    left = deadline - time.monotonic()
                    if len(batch) >= self.max_batch or left <= 0 or self._closed:
                        break
                    self._cond.wait(left)
            self._running = len(batch)
            return batch

    def _take_matching(self, first: Job, batch: list[Job]) -> None:
        keep: deque[Job] = deque()
        while self._queue:
            job = self._queue.popleft()
            if job.cancelled.is_set():
                self.stats.skipped += 1
            elif len(batch) < self.max_batch and job.kind == first.kind and job.key == first.key:
                batch.append(job)
            else:
                keep.append(job)
        self._queue = keep

    def _work(self) -> None:
        if self.init is not None:
            self.init()
        while True:
            batch = self._next_batch()
            if batch is None:
                return
            started = time.monotonic()
            outcomes = self._run_batch(batch)
            elapsed = time.monotonic() - started
            with self._cond:  # before the results go out: a caller that got one may submit again
                self._running = 0
                self.stats.batches += 1
                self.stats.jobs += len(batch)
                self.stats.largest_batch = max(self.stats.largest_batch, len(batch))
                self.stats.failed += sum(error is not None for _, _, error in outcomes)
                self._seconds_per_job = 0.8 * self._seconds_per_job + 0.2 * elapsed / len(batch)
            for job, result, error in outcomes:
                self._settle(job, result, error)

    def _run_batch(self, batch: list[Job]) -> list[tuple[Job, Any, BaseException | None]]:
        """(job, result, error) for each job; a failing batch is retried one job at a time, so that
        one bad input does not fail its neighbours."""
        handler = self.handlers[batch[0].kind]
        try:
            results = list(handler(batch))
            if len(results) != len(batch):
                raise RuntimeError(f"handler for {batch[0].kind!r} returned {len(results)} results "
                                   f"for {len(batch)} jobs")
        except Exception as e:  # noqa: BLE001 - handed to the waiting request
            if len(batch) == 1:
                return [(batch[0], None, e)]
            return [outcome for job in batch if not job.cancelled.is_set() for outcome in self._run_batch([job])]
        return [(job, result, None) for job, result in zip(batch, results, strict=True)]

    @staticmethod
    def _settle(job: Job, result: Any = None, error: BaseException | None = None) -> None:
        def apply() -> None:
            if job.future is None or job.future.done():
                return
            if job.cancelled.is_set():  # nobody waits for it: no "exception never retrieved"
                job.future.cancel()
            elif error is not None:
                job.future.set_exception(error)
            else:
                job.future.set_result(result)

        job.emit(apply)
