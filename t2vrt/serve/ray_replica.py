"""The Ray Serve deployment that makes videos: each replica holds one GPU (or, on a CPU cluster, one logical GPU and
its CPU share) and keeps the bundles it has served loaded.

Bundles are multiplexed (`serve.multiplexed`): the request's `model` is the multiplexed model id, Serve prefers a
replica that already holds it, and a replica keeps up to `models_per_replica` of them (least recently used goes).
`generate` is an async generator, called through a streaming handle: it yields

    {"event": "started", "replica": {...}}          which replica took the job, for which model (before loading)
    {"event": "step", "step": i, "steps": n}        after every denoising step
    {"event": "file", "name": ..., "data": bytes}   video.mp4, thumbnail.png, spritesheet.jpg
    {"event": "done", "result": {...}}              the result record (frames, size, backend, timings)
  or {"event": "error", "code": ..., "message": ...} the job's own failure (bad request, NaN, ...)

A job's failure is an event, never an exception: an exception at the caller means the replica itself went away.
The pipeline runs in a thread so the replica's event loop keeps answering Serve's health checks; a cancelled request
(the job was deleted, or the server is draining) stops it at the next step.
"""

from __future__ import annotations

import asyncio
import fcntl
import logging
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import ray
from ray import serve

from t2vrt.errors import T2VError, UsageError
from t2vrt.serve.executor import LocalExecutor

log = logging.getLogger("t2vrt.serve.replica")

RESULT_FILES = ("video.mp4", "thumbnail.png", "spritesheet.jpg")
INPUT_SUFFIXES = (".png", ".jpg", ".gif", ".mp4", ".webm")


class _Cancelled(Exception):
    """Raised from the step callback when the caller went away."""


class Loaded:
    """One bundle's pipeline in this replica, closed when the multiplexer evicts it (it calls __del__)."""

    def __init__(self, executor: LocalExecutor, note: str) -> None:
        self.executor, self.note = executor, note
        self._closed = False

    def __del__(self) -> None:
        if not self._closed:
            self._closed = True
            self.executor.close()


def build_engines_if_missing(bundle: Path, run: Callable[[list[str]], int] | None = None) -> str:
    """`t2vrt build BUNDLE` for this replica's GPU when TensorRT is installed and the bundle has no engines for it.

    One build per bundle at a time on a shared filesystem (a lock file in the bundle's engines/ folder); replicas of
    the same GPU model that wait for it then find the engines. Returns what was done, for the replica's log."""
    from t2vrt.engine.build import tensorrt_missing
    from t2vrt.runtime.tensorrt_backend import why_tensorrt_unavailable

    missing = tensorrt_missing()
    if missing:
        return f"no engine build ({missing})"
    (bundle / "engines").mkdir(exist_ok=True)
    with open(bundle / "engines" / ".t2vrt-build.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        reason = why_tensorrt_unavailable(bundle)
        if reason is None:
            return "engines for this GPU found"
        cmd = [sys.executable, "-m", "t2vrt.cli", "build", str(bundle)]
        rc = (run or (lambda c: subprocess.run(c, check=False).returncode))(cmd)
        if rc != 0:
            raise T2VError(f"building TensorRT engines for this GPU failed (exit {rc}): {' '.join(cmd)}")
        return f"built engines ({reason})"


def load_bundle(name: str, path: Path, backend: str, threads: int, build: bool) -> Loaded:
    from t2vrt import Pipeline
    from t2vrt.runtime.backends import BackendOptions

    built = build_engines_if_missing(path) if build else ""
    pipe = Pipeline.from_bundle(path, backend=backend, options=BackendOptions(threads=threads))
    note = pipe.selection_note + (f"; {built}" if built else "")
    return Loaded(LocalExecutor({name: pipe}), note)


def run_job(
    loaded: Loaded, job: dict[str, Any], input_data: bytes | None, on_step: Callable[[int, int], None]
) -> tuple[dict[str, bytes], dict[str, Any]]:
    """One job in a scratch directory of this replica: (result files' bytes, result record)."""
    with tempfile.TemporaryDirectory(prefix="t2vrt-job-") as tmp:
        spec = dict(job)
        if job.get("input") is not None:
            suffix = job["input"]["suffix"]
            if suffix not in INPUT_SUFFIXES or input_data is None:
                raise UsageError(f"input_reference: unsupported upload ({suffix!r})")
            path = Path(tmp) / f"input{suffix}"
            path.write_bytes(input_data)
            spec["input"] = {"kind": job["input"]["kind"], "path": str(path)}
        out = Path(tmp) / "out"
        out.mkdir()
        began = time.time()
        result = loaded.executor.run(spec, out, on_step)
        result["ran_at"] = [round(began, 3), round(time.time(), 3)]  # this replica's clock: when it held the job
        files = {name: (out / name).read_bytes() for name in RESULT_FILES if (out / name).is_file()}
    result["backend_note"] = loaded.note
    return files, result


class VideoGenerator:
    def __init__(
        self, bundles: dict[str, str], backend: str, models_per_replica: int, threads: int, build_engines: bool
    ) -> None:
        self._bundles = {name: Path(p) for name, p in bundles.items()}
        self._backend, self._threads, self._build = backend, threads, build_engines

        async def load(model_id: str) -> Loaded:
            return await asyncio.to_thread(
                load_bundle, model_id, self._bundles[model_id], self._backend, self._threads, self._build
            )

        # per instance, so the number of bundles kept comes from the command line (Serve detects it at runtime)
        self._load = serve.multiplexed(max_num_models_per_replica=models_per_replica)(load)

    def whoami(self) -> dict[str, Any]:
        ctx = serve.get_replica_context()
        return {
            "id": ctx.replica_id.unique_id,
            "node": ray.get_runtime_context().get_node_id()[:12],
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "gpus": [str(g) for g in ray.get_gpu_ids()],
        }

    async def generate(self, job: dict[str, Any], input_data: bytes | None = None) -> AsyncIterator[dict[str, Any]]:
        model = serve.get_multiplexed_model_id()
        yield {"event": "started", "replica": {**self.whoami(), "model": model}}
        if model not in self._bundles:
            yield {"event": "error", "code": "invalid_request", "message": f"model {model!r} is not served here"}
            return
        try:
            loaded = await self._load(model)
        except UsageError as e:
            yield {"event": "error", "code": "invalid_request", "message": str(e)}
            return
        except T2VError as e:
            yield {"event": "error", "code": "generation_failed", "message": f"loading {model}: {e}"}
            return

        loop = asyncio.get_running_loop()
        events: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue()
        stop = threading.Event()

        def emit(event: dict[str, Any] | None) -> None:
            loop.call_soon_threadsafe(events.put_nowait, event)

        def on_step(done: int, total: int) -> None:
            if stop.is_set():
                raise _Cancelled()
            emit({"event": "step", "step": done, "steps": total})

        def work() -> None:
            try:
                files, result = run_job(loaded, job, input_data, on_step)
                for name, data in files.items():
                    emit({"event": "file", "name": name, "data": data})
                emit({"event": "done", "result": result})
            except _Cancelled:
                pass
            except UsageError as e:
                emit({"event": "error", "code": "invalid_request", "message": str(e)})
            except T2VError as e:
                emit({"event": "error", "code": "generation_failed", "message": str(e)})
            except Exception as e:
                log.error("job %s failed:\n%s", job.get("id"), traceback.format_exc())
                emit({"event": "error", "code": "internal_error", "message": f"{type(e).__name__}: {e}"})
            finally:
                emit(None)

        worker = threading.Thread(target=work, name=f"t2vrt-job-{job.get('id')}", daemon=True)
        worker.start()
        try:
            while (event := await events.get()) is not None:
                yield event
        finally:
            stop.set()  # cancelled (the caller went away): the pipeline stops at its next step
            await asyncio.to_thread(worker.join)  # and this replica takes no new job until it has


def deployment() -> Any:
    """The deployment (options are set by the caller: replicas, GPUs, and max_ongoing_requests=1)."""
    return serve.deployment(VideoGenerator, name="VideoGenerator", max_ongoing_requests=1)
