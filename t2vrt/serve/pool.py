"""Several jobs at once over one executor: K Workers (one thread each) taking jobs from the same store.

The single-machine server has one Worker: one GPU, one job at a time. An executor that fans out (Ray Serve, issue 15)
runs as many jobs at once as it has replicas, so the server keeps K workers, each holding at most one job: the store's
claim is one transaction, so no job is taken twice, and the queue stays in the store (its order, its 429, its
restart recovery) rather than in memory. `LiveJobs` is the in-memory progress of all running jobs, keyed by the
worker thread that runs each, so the Worker code stays exactly as it is.
"""

from __future__ import annotations

import threading
import time
from typing import Any, Protocol

from t2vrt.serve.executor import Executor
from t2vrt.serve.files import StateDir
from t2vrt.serve.store import JobStore
from t2vrt.serve.worker import Live, Progress, Worker


class Workers(Protocol):
    """What the API needs from whatever runs jobs: one Worker or a WorkerPool."""

    def start(self) -> None: ...

    def notify(self) -> None: ...

    def cancel(self, job_id: str) -> bool: ...

    def begin_drain(self) -> None: ...

    def drain(self, timeout: float) -> bool: ...

    def abort(self) -> None: ...

    @property
    def alive(self) -> bool: ...


class LiveJobs(Live):
    """Live progress of every running job (one per worker thread), plus where each runs (`note`)."""

    def __init__(self) -> None:
        super().__init__()
        self._jobs: dict[int, tuple[str, Progress]] = {}
        self._where: dict[str, dict[str, Any]] = {}

    def set(self, job_id: str | None, progress: Progress | None = None) -> None:
        key = threading.get_ident()  # the Worker calls set() from its own thread, start and end of each job
        with self._lock:
            old = self._jobs.pop(key, None)
            if old is not None:
                self._where.pop(old[0], None)
            if job_id:
                self._jobs[key] = (job_id, progress or Progress())

    def note(self, job_id: str, where: dict[str, Any]) -> None:
        """The executor says which replica took the job (shown in the video object's t2vrt.live)."""
        with self._lock:
            if any(j == job_id for j, _ in self._jobs.values()):
                self._where[job_id] = where

    def get(self, job_id: str) -> dict[str, Any] | None:
        with self._lock:
            for j, progress in self._jobs.values():
                if j == job_id:
                    out = progress.to_api()
                    if job_id in self._where:
                        out["replica"] = self._where[job_id]
                    return out
        return None

    def running(self) -> list[str]:
        with self._lock:
            return [j for j, _ in self._jobs.values()]

    def retry_after(self, queued: int) -> int:
        with self._lock:
            etas = [e for _, p in self._jobs.values() if (e := p.eta()) is not None]
        guess = min(etas) if etas else (self.recent_seconds or 5.0)
        return max(1, int(guess + 0.999))


class WorkerPool:
    """K workers over one executor; the first also expires old results (the others check rarely)."""

    def __init__(
        self,
        size: int,
        store: JobStore,
        state: StateDir,
        executor: Executor,
        live: LiveJobs,
        ttl: int | None,
        sweep_every: float = 60.0,
    ) -> None:
        if size < 1:
            raise ValueError(f"a worker pool needs at least one worker, got {size}")
        self.workers = [
            Worker(store, state, executor, live, ttl, sweep_every if i == 0 else 3600.0) for i in range(size)
        ]

    def start(self) -> None:
        for w in self.workers:
            w.start()

    def notify(self) -> None:
        for w in self.workers:  # every idle worker tries to claim; the store hands the job to one of them
            w.notify()

    def cancel(self, job_id: str) -> bool:
        return any([w.cancel(job_id) for w in self.workers])

    def begin_drain(self) -> None:
        for w in self.workers:
            w.begin_drain()

    def drain(self, timeout: float) -> bool:
        """Every running job gets the same `timeout` (not one after the other); past it, they go back to the queue."""
        self.begin_drain()
        end = time.monotonic() + timeout
        return all([w.drain(max(0.0, end - time.monotonic())) for w in self.workers])

    def abort(self) -> None:
        for w in self.workers:
            w.abort()

    @property
    def alive(self) -> bool:
        return all(w.alive for w in self.workers)
