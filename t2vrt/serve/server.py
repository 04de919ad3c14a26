"""Start everything in order, serve, and stop without losing a job.

start: state dir -> store (recover what the last process left) -> engines (loaded once) -> worker -> uvicorn.
SIGTERM / Ctrl-C: the API stops (SSE streams end, new submissions get 503 meanwhile), then the worker drains: the
running job finishes within --drain-timeout or goes back to the queue; a second signal requeues it at once.
Queued jobs simply stay in the store for the next start.
"""

from __future__ import annotations

import ipaddress
import logging
import signal
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any

from t2vrt.errors import UsageError
from t2vrt.serve.ray_config import RayOptions, check_ray_options

log = logging.getLogger("t2vrt.serve")


@dataclass(frozen=True)
class ServeConfig:
    bundles: dict[str, Path]  # model id -> bundle directory; the first is the default model
    host: str = "127.0.0.1"
    port: int = 8000
    state: Path = Path("t2vrt-state")
    api_key: str | None = None
    backend: str = "auto"
    max_queue: int = 64  # queued + running jobs; past it, 429 with Retry-After
    max_upload_mb: int = 64
    max_prompt_chars: int = 2000
    keep_seconds: int | None = 7 * 86400  # results expire this long after they finish (None: never)
    drain_timeout: float = 60.0
    poll_after_ms: int = 500
    access_log: bool = False
    ray: RayOptions | None = None  # --ray: jobs run on a Ray Serve deployment (t2vrt.serve.ray_executor)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_config(c: ServeConfig) -> None:
    if not is_loopback(c.host) and not c.api_key:
        raise UsageError(
            f"--host {c.host} is reachable from other machines: set an API key (--api-key or "
            f"T2VRT_API_KEY); clients then send 'Authorization: Bearer <key>'"
        )
    if c.api_key is not None and len(c.api_key) < 16:
        raise UsageError(f"the API key must be at least 16 characters, got {len(c.api_key)}")
    if not 0 <= c.port <= 65535:
        raise UsageError(f"--port must be in 0..65535, got {c.port}")
    for name, v, lo in (
        ("--max-queue", c.max_queue, 1),
        ("--max-upload-mb", c.max_upload_mb, 1),
        ("--max-prompt-chars", c.max_prompt_chars, 1),
    ):
        if v < lo:
            raise UsageError(f"{name} must be >= {lo}, got {v}")
    if c.drain_timeout < 0:
        raise UsageError(f"--drain-timeout must be >= 0 seconds, got {c.drain_timeout:g}")
    if c.ray is not None:
        check_ray_options(c.ray)


def serve(c: ServeConfig) -> None:
    import uvicorn

    from t2vrt.serve.api import Services, create_app
    from t2vrt.serve.executor import Executor, LocalExecutor
    from t2vrt.serve.files import StateDir
    from t2vrt.serve.limits import ApiKey, BodyLimit
    from t2vrt.serve.pool import Workers
    from t2vrt.serve.store import JobStore
    from t2vrt.serve.worker import Live, Worker

    check_config(c)
    logging.basicConfig(level=logging.INFO, format="t2vrt serve: %(message)s", stream=sys.stderr)
    state = StateDir(c.state)
    ttl = c.keep_seconds
    store = JobStore(state.db_path)
    settled = store.recover(ttl)
    for job_id in settled["deleted"]:
        state.remove(job_id)
    swept = state.sweep(set(store.all_ids()))
    log.info(
        "state %s: %d queued again after a crash, %d failed (interrupted twice), %d stray files removed",
        state.root,
        len(settled["requeued"]),
        len(settled["failed"]),
        swept,
    )
    sweep_every = min(60.0, max(1.0, (ttl or 240) / 4))
    executor: Executor
    worker: Workers
    live: Live
    if c.ray is not None:  # one worker per replica the deployment may have; Ray is imported only here
        from t2vrt.serve.pool import LiveJobs, WorkerPool
        from t2vrt.serve.ray_executor import RayExecutor

        live = LiveJobs()
        executor = ray_executor = RayExecutor.start(c.bundles, c.backend, c.ray, on_start=live.note)
        notes = ray_executor.describe()
        worker = WorkerPool(c.ray.slots, store, state, executor, live, ttl, sweep_every=sweep_every)
    else:
        executor = local = LocalExecutor.load(c.bundles, backend=c.backend)
        notes = local.describe()
        live = Live()
        worker = Worker(store, state, executor, live, ttl, sweep_every=sweep_every)
    for name, note in notes.items():
        log.info("model %s: %s", name, note)
    svc = Services(
        store,
        state,
        executor,
        worker,
        live,
        max_queue=c.max_queue,
        max_upload_bytes=c.max_upload_mb << 20,
        max_prompt_chars=c.max_prompt_chars,
        poll_after_ms=c.poll_after_ms,
    )
    app = BodyLimit(ApiKey(create_app(svc), c.api_key), svc.max_upload_bytes + (1 << 20))
    config = uvicorn.Config(
        app,
        host=c.host,
        port=c.port,
        log_level="warning",
        access_log=c.access_log,
        timeout_graceful_shutdown=5,
        lifespan="off",
    )

    def on_signal() -> None:
        svc.closing.set()  # SSE streams end, submissions get 503
        worker.begin_drain()  # no new job starts

    server = _make_server(config, on_signal=on_signal)

    # uvicorn re-raises the signal that stopped it once it returns; ignore that one, then a further signal
    # during the drain requeues the running job at once.
    main = threading.current_thread() is threading.main_thread()
    for sig in (signal.SIGINT, signal.SIGTERM) if main else ():
        signal.signal(sig, signal.SIG_IGN)
    worker.start()
    try:
        server.run()
    finally:
        svc.closing.set()

        def abort(sig: int, frame: FrameType | None) -> None:
            log.info("second signal: putting the running job back in the queue")
            worker.abort()

        for sig in (signal.SIGINT, signal.SIGTERM) if main else ():
            signal.signal(sig, abort)
        finished = worker.drain(c.drain_timeout)
        log.info(
            "stopped (%s); queued jobs wait in %s", "drained" if finished else "running job requeued", state.db_path
        )
        executor.close()
        store.close()


def _make_server(config: Any, on_signal: Callable[[], object]) -> Any:
    """uvicorn.Server that reports where it listens (port 0 picks a free one) and tells us about the signal."""
    import uvicorn

    class Server(uvicorn.Server):
        async def startup(self, sockets: Any = None) -> None:
            await super().startup(sockets)
            if self.started and self.servers:
                host, port = self.servers[0].sockets[0].getsockname()[:2]
                shown = f"[{host}]" if ":" in host else host
                print(f"t2vrt serve: listening on http://{shown}:{port}", file=sys.stderr, flush=True)

        def handle_exit(self, sig: int, frame: FrameType | None) -> None:
            on_signal()
            super().handle_exit(sig, frame)

    return Server(config)
