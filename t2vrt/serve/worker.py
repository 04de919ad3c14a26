"""The one thread that owns the executor (the GPU, or the CPU): it takes jobs from the store in order, reports
progress per denoising step, stops a job that is deleted, drains on shutdown, and expires old results.

Live progress (step, total, ETA) is kept in memory (`Live`) for the SSE stream and the video objects; the store
gets the integer percentage, so a poll after a restart still sees a true value.
"""

from __future__ import annotations

import logging
import threading
import time
import traceback
from dataclasses import dataclass, field
from typing import Any

from t2vrt.errors import T2VError, UsageError
from t2vrt.serve.executor import Executor
from t2vrt.serve.files import StateDir
from t2vrt.serve.store import Job, JobStore

log = logging.getLogger("t2vrt.serve")


class _Stop(Exception):
    """Raised from the step callback to leave the pipeline between two steps."""


@dataclass
class Progress:
    step: int = 0
    steps: int = 0
    stage: str = "starting"  # starting | denoising | writing
    started: float = field(default_factory=time.monotonic)
    step_times: list[float] = field(default_factory=list)

    def eta(self) -> float | None:
        if not self.step_times or not self.steps:
            return None
        per_step = (self.step_times[-1] - self.started) / len(self.step_times)
        return round(per_step * (self.steps - self.step), 1)

    def to_api(self) -> dict[str, Any]:
        return {"step": self.step, "steps": self.steps, "stage": self.stage, "eta_seconds": self.eta()}


class Live:
    """In-memory progress of the running job, read by request threads."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._running: tuple[str, Progress] | None = None
        self.recent_seconds: float | None = None  # wall time of the last finished job (for Retry-After)

    def set(self, job_id: str | None, progress: Progress | None = None) -> None:
        with self._lock:
            self._running = (job_id, progress or Progress()) if job_id else None

    def get(self, job_id: str) -> dict[str, Any] | None:
        with self._lock:
            if self._running is None or self._running[0] != job_id:
                return None
            return self._running[1].to_api()

    def retry_after(self, queued: int) -> int:
        """Seconds until a queue slot is likely free: what is left of the running job, else one job's time."""
        with self._lock:
            eta = self._running[1].eta() if self._running else None
        guess = eta if eta is not None else (self.recent_seconds or 5.0)
        return max(1, int(guess + 0.999))


class Worker:
    def __init__(
        self,
        store: JobStore,
        state: StateDir,
        executor: Executor,
        live: Live,
        ttl: int | None,
        sweep_every: float = 60.0,
    ) -> None:
        self.store, self.state, self.executor, self.live, self.ttl = store, state, executor, live, ttl
        self.sweep_every = sweep_every
        self._wake = threading.Event()
        self._draining = threading.Event()
        self._cancel = threading.Event()  # set to stop the running job at its next step
        self._requeue = False  # ... and put it back in the queue instead of deleting it
        self._current: str | None = None
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._loop, name="t2vrt-worker", daemon=True)

    # --- called from other threads ------------------------------------------------------------------------------

    def start(self) -> None:
        self._thread.start()

    def notify(self) -> None:
        """A job was queued: take it now rather than at the next poll."""
        self._wake.set()

    def cancel(self, job_id: str) -> bool:
        """Stop `job_id` if it is the running job (it was deleted). True if it was running."""
        with self._lock:
            if self._current != job_id:
                return False
            self._cancel.set()
            return True

    def begin_drain(self) -> None:
        """Take no new job; the running one goes on."""
        self._draining.set()
        self._wake.set()

    def drain(self, timeout: float) -> bool:
        """Wait up to `timeout` s for the running job; past that, stop it and put it back in the queue.

        True when the job (if any) finished by itself."""
        self.begin_drain()
        self._thread.join(timeout)
        if not self._thread.is_alive():
            return True
        self.abort()
        self._thread.join()
        return False

    def abort(self) -> None:
        """Stop the running job now and queue it again (a second SIGTERM, or the drain timeout)."""
        with self._lock:
            self._requeue = True
            self._cancel.set()
        self.begin_drain()

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    # --- the worker thread --------------------------------------------------------------------------------------

    def _loop(self) -> None:
        next_sweep = 0.0
        while not self._draining.is_set():
            if time.monotonic() >= next_sweep:
                self._expire()
                next_sweep = time.monotonic() + self.sweep_every
            job = self.store.claim_next()
            if job is None:
                self._wake.wait(timeout=min(1.0, self.sweep_every))
                self._wake.clear()
                continue
            self._run(job)

    def _expire(self) -> None:
        for job_id in self.store.expire():
            self.state.remove(job_id)
            log.info("expired %s", job_id)

    def _run(self, job: Job) -> None:
        with self._lock:
            self._current = job.id
            self._cancel.clear()
            self._requeue = False
        progress = Progress(steps=int(job.params["resolved"]["steps"]))
        self.live.set(job.id, progress)
        last_pct = -1

        def on_step(done: int, total: int) -> None:
            nonlocal last_pct
            if self._cancel.is_set():
                raise _Stop()
            progress.step, progress.steps, progress.stage = done, total, "denoising"
            progress.step_times.append(time.monotonic())
            pct = min(99, done * 100 // max(total, 1))
            if pct != last_pct:
                self.store.set_progress(job.id, pct)
                last_pct = pct
            if self._cancel.is_set():
                raise _Stop()

        spec = {
            "id": job.id,
            "model": job.model,
            "prompt": job.params["prompt"],
            "given": job.params["given"],
            "input": job.params.get("input"),
        }
        if spec["input"] is not None:
            spec["input"] = {**spec["input"], "path": str(self.state.root / spec["input"]["file"])}
        t0 = time.monotonic()
        try:
            partial = self.state.partial_dir(job.id)
            result = self.executor.run(spec, partial, on_step)
            progress.stage = "writing"
            if self._cancel.is_set():
                raise _Stop()
            self.state.publish(job.id, partial)
            self.store.complete(job.id, result, self.ttl)
            self.live.recent_seconds = time.monotonic() - t0
            log.info("completed %s in %.1f s", job.id, self.live.recent_seconds)
        except _Stop:
            self._stopped(job.id)
        except UsageError as e:
            self.store.fail(job.id, "invalid_request", str(e), self.ttl)
        except T2VError as e:
            self.store.fail(job.id, "generation_failed", str(e), self.ttl)
        except Exception as e:  # the job fails with its reason; the server goes on with the next job
            log.error("job %s failed:\n%s", job.id, traceback.format_exc())
            self.store.fail(job.id, "internal_error", f"{type(e).__name__}: {e}", self.ttl)
        finally:
            self.live.set(None)
            with self._lock:
                self._current = None
            if self.store.is_deleted(job.id):  # deleted while running, or while its result was being written
                self.store.purge(job.id)
                self.state.remove(job.id)

    def _stopped(self, job_id: str) -> None:
        if self._requeue and not self.store.is_deleted(job_id):
            self.store.requeue(job_id)
            self.state.remove_partial(job_id)
            log.info("requeued %s (shutting down)", job_id)
        else:
            log.info("cancelled %s", job_id)
