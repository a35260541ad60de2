"""Dynamic micro-batching: the photos of concurrent requests predicted in one model call.

A request submits its photos as one *job* (``uint8 [h, w, 3]`` RGB each, at the working size) and
gets a :class:`concurrent.futures.Future`. One worker thread takes jobs from a bounded
queue and runs them together: a batch starts when ``max_batch`` photos wait or the oldest job has
waited ``max_wait_ms``. A job is never split across batches, so all photos of a request are
predicted by the same model; a job larger than ``max_batch`` is a batch of its own (predicted in
chunks of ``max_batch``). Each batch takes one snapshot of the served models
(:meth:`~cardamage.service.models.ModelHolder.current`) at its start and finishes with it: a model
reloaded meanwhile serves the next batch.

Bounded: more than ``max_queue`` photos waiting raises :class:`Overloaded` at once (the service
answers ``503``); a job whose client went away is cancelled (:meth:`Future.cancel`) and skipped when
its turn comes, so it costs no model time. One TensorFlow call runs at a time: on a small CPU one
call using every core beats several fighting for them, and on a GPU one large batch is the point.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from cardamage.service.models import Models

log = logging.getLogger(__name__)


class Overloaded(Exception):
    """The queue is full: the request is refused (``503``, ``Retry-After``)."""


@dataclass
class BatchOutput:
    """What the model gave for one job's photos, and with which models.

    Attributes:
        results: one per photo of the job, in order, as the :data:`PredictFn` made them.
        models: the snapshot that predicted them.
        batch_size: photos in the model call this job was part of.
    """

    results: list[Any]
    models: Models
    batch_size: int


@dataclass(eq=False)
class _Job:
    photos: list[np.ndarray]
    future: Future = field(default_factory=Future)
    queued: float = field(default_factory=time.monotonic)


#: ``predict(models, photos) -> results``: one result per photo (``uint8 [h, w, 3]`` each), at most
#: ``max_batch`` photos per call.
PredictFn = Callable[[Models, list[np.ndarray]], list[Any]]
class MicroBatcher:
    """The queue and its worker thread.

    Args:
        current: returns the models to use (called once per batch).
        predict: runs the models on a stacked batch (see :data:`PredictFn`).
        max_batch: photos per model call; max_wait_ms: the longest a job waits for others (ms);
        max_queue: photos that may wait; metrics: optional :class:`~cardamage.service.metrics.ServiceMetrics`
            (queue depth, queue wait, batch size and model time);
        inflight: optional count of requests admitted (:class:`~cardamage.service.middleware.Admission`):
            when every one of them has its job queued, nobody else can come, so the batch starts at once
            (a lone client does not wait ``max_wait_ms``).
    """

    def __init__(self, current: Callable[[], Models], predict: PredictFn, max_batch: int = 16,
                 max_wait_ms: float = 5.0, max_queue: int = 64, metrics: Any = None,
                 inflight: Callable[[], int] | None = None):
        if max_batch < 1 or max_queue < 1 or max_wait_ms < 0:
            raise ValueError(f"serve.batch: max_batch and max_queue must be >= 1 and max_wait_ms >= 0, got "
                             f"{max_batch}, {max_queue}, {max_wait_ms}")
        self.current, self.predict, self.metrics, self.inflight = current, predict, metrics, inflight
        self.max_batch, self.max_wait_s, self.max_queue = int(max_batch), max_wait_ms / 1000.0, int(max_queue)
        self._jobs: deque[_Job] = deque()
        self._waiting = 0  # photos in self._jobs
        self._cond = threading.Condition()
        self._closed = False
        self._thread: threading.Thread | None = None
        self.batches = 0

    @property
    def depth(self) -> int:
        """Photos waiting for the model."""
        with self._cond:
            return self._waiting

    def submit(self, inputs: Sequence[np.ndarray]) -> Future:
        """Queue one job (the photos of one request, ``uint8 [h, w, 3]`` each); its future gives a
        :class:`BatchOutput`. Raises :class:`Overloaded` when the photos do not fit the queue, and
        :class:`RuntimeError` after :meth:`stop`."""
        job = _Job(list(inputs))
        n = len(job.photos)
        with self._cond:
            if self._closed:
                raise RuntimeError("the service is shutting down")
            if self._waiting and self._waiting + n > self.max_queue:
                raise Overloaded(f"{self._waiting} photos are waiting for the model (serve.batch.max_queue "
                                 f"{self.max_queue})")
            self._jobs.append(job)
            self._waiting += n
            self._depth_changed()
            self._cond.notify()
        return job.future

    def cancel(self, future: Future) -> bool:
        """Drop a job whose client went away: out of the queue at once (its place is free); ``False`` when
        its batch already runs (the answer is then thrown away)."""
        with self._cond:
            for job in self._jobs:
                if job.future is future and future.cancel():
                    self._jobs.remove(job)
                    self._waiting -= len(job.photos)
                    self._depth_changed()
                    return True
        return False

    def start(self) -> None:
        """Start the worker thread (idempotent)."""
        if self._thread is not None:
            return
        with self._cond:
            self._closed = False
        self._thread = threading.Thread(target=self._run, name="micro-batcher", daemon=True)
        self._thread.start()

    def stop(self, timeout_s: float = 30.0) -> None:
        """Refuse new jobs, finish the queued ones, and stop the thread (graceful shutdown)."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout=timeout_s)
            self._thread = None
        with self._cond:  # only when the thread did not finish in time
            while self._jobs:
                self._jobs.popleft().future.cancel()
            self._waiting = 0

    def _take(self) -> list[_Job] | None:
        """The next batch of jobs (waits for the first, then up to ``max_wait`` for more); ``None``: stop."""
        with self._cond:
            while not self._jobs:
                if self._closed:
                    return None
                self._cond.wait(0.5)
            deadline = self._jobs[0].queued + self.max_wait_s
            while self._waiting < self.max_batch and not self._closed and not self._all_here():
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._cond.wait(left)
            jobs, n = [], 0
            while self._jobs and (not jobs or n + len(self._jobs[0].photos) <= self.max_batch):
                job = self._jobs.popleft()
                self._waiting -= len(job.photos)
                if job.future.set_running_or_notify_cancel():  # False: the client went away
                    jobs.append(job)
                    n += len(job.photos)
            self._depth_changed()
            if self.metrics is not None:
                now = time.monotonic()
                for job in jobs:
                    self.metrics.observe_queue_wait(now - job.queued)
            return jobs

    def _all_here(self) -> bool:
        """Whether every admitted request has its job queued (no one else to wait for)."""
        return self.inflight is not None and len(self._jobs) >= self.inflight()

    def _depth_changed(self) -> None:
        """Report the queue depth (called with the lock held)."""
        if self.metrics is not None:
            self.metrics.set_queue_depth(self._waiting)

    def _run(self) -> None:
        while (jobs := self._take()) is not None:
            if jobs:
                self._run_batch(jobs)

    def _run_batch(self, jobs: list[_Job]) -> None:
        photos = [p for j in jobs for p in j.photos]
        start = time.perf_counter()
        try:
            models = self.current()
            results = [r for i in range(0, len(photos), self.max_batch)
                       for r in self.predict(models, photos[i:i + self.max_batch])]
        except BaseException as exc:  # the model failed: every request of the batch gets the error
            log.exception("batch of %d photo(s) failed", len(photos))
            for job in jobs:
                job.future.set_exception(exc)
            return
        self.batches += 1
        if self.metrics is not None:
            self.metrics.observe_batch(len(photos), time.perf_counter() - start)
        at = 0
        for job in jobs:
            n = len(job.photos)
            job.future.set_result(BatchOutput(results[at:at + n], models, len(photos)))
            at += n
