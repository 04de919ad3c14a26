"""The Executor that runs jobs on a Ray Serve deployment (`t2vrt serve --ray`), one streaming call per job.

The server process stays the HTTP ingress and the owner of the job store: it connects to the cluster as a Ray driver,
deploys the VideoGenerator application (no Serve HTTP proxy: our own API is the only way in), and its worker pool
hands each claimed job to the deployment. It checks requests against the bundles' manifests (read here, no engines),
so a bad request never reaches a GPU.

A replica that dies mid-job (killed, out of memory, node lost) surfaces here as a Ray actor error: the job is sent
once more, and Serve routes it to a live replica (another one, or the dead one's replacement); a second death fails
the job with both reasons. The job's result record names the replica that made it, and any it lost on the way.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any

import ray
from ray import exceptions as rex
from ray import serve
from ray.serve.exceptions import ReplicaUnavailableError

from t2vrt.errors import T2VError, UsageError
from t2vrt.manifest import Manifest, load_manifest
from t2vrt.runtime.options import GenerateOptions
from t2vrt.runtime.pipeline import Pipeline
from t2vrt.serve.executor import LocalExecutor, ModelInfo, StepFn
from t2vrt.serve.ray_config import RayOptions, models_per_replica
from t2vrt.serve.ray_replica import RESULT_FILES, deployment

log = logging.getLogger("t2vrt.serve")

# what a replica's death looks like to the caller of a streaming handle
REPLICA_LOST: tuple[type[BaseException], ...] = (
    rex.RayActorError,
    rex.WorkerCrashedError,
    rex.NodeDiedError,
    rex.ObjectLostError,
    rex.OutOfMemoryError,
    ReplicaUnavailableError,
)
TRIES = 2  # a job is sent to a replica at most twice


class ReplicaLost(T2VError):
    pass


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0] if text else 'no message'}"


class _Described:
    """What LocalExecutor reads of a Pipeline to describe and check requests (its manifest and its call signature),
    without loading engines: the ingress then reports exactly what a one-machine server would."""

    __call__ = Pipeline.__call__

    def __init__(self, manifest: Manifest) -> None:
        self.manifest = manifest


def connect(address: str | None) -> None:
    """Join the cluster as a driver (address None: RAY_ADDRESS, else the one `ray start` made here, else a new one)."""
    if ray.is_initialized():
        return
    target = _resolved(address)
    problem = _unreachable(target)
    if problem:  # ray.init would retry a missing GCS for minutes
        found = "" if target == address else f" at {target}"
        if address in (None, "auto"):
            found += " (from RAY_ADDRESS or the last `ray start` here)"
        raise UsageError(
            f"{f'--ray {address}' if address else '--ray'}: no Ray cluster{found or ' there'} "
            f"({problem}); start one with "
            f"`ray start --head`, or point --ray at a running one"
        )
    try:
        ray.init(address=address, logging_level=logging.WARNING, log_to_driver=False, namespace="t2vrt")
    except ConnectionError as e:
        raise UsageError(
            f"--ray {address}: no Ray cluster there ({_first_line(e)}); start one with "
            f"`ray start --head` or omit the address"
        ) from None
    for name in ("ray", "ray.serve"):
        logging.getLogger(name).setLevel(logging.WARNING)


def _resolved(address: str | None) -> str | None:
    """The HOST:PORT ray.init would dial for `address` (RAY_ADDRESS, the file `ray start` left, or the address)."""
    try:  # a private helper: if it moves, the probe is skipped and ray.init decides alone
        from ray._private.services import canonicalize_bootstrap_address

        found: str | None = canonicalize_bootstrap_address(address) if address != "local" else None  # type: ignore[arg-type]
        return found
    except Exception:
        return address


def _unreachable(address: str | None, timeout: float = 5.0) -> str | None:
    """For a HOST:PORT address, why a TCP connection to it fails (None if it connects or is not HOST:PORT)."""
    if not address or "://" in address or address == "auto" or ":" not in address:
        return None
    host, _, port = address.rpartition(":")
    if not port.isdigit():
        return None
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout).close()
    except OSError as e:
        return e.strerror or type(e).__name__
    return None


class RayExecutor:
    def __init__(
        self,
        manifests: dict[str, Manifest],
        handle: Any,
        options: RayOptions,
        on_start: Callable[[str, dict[str, Any]], None] | None = None,
    ) -> None:
        self._described = LocalExecutor({name: _Described(m) for name, m in manifests.items()})  # never run
        self._handle = handle
        self.options = options
        self._on_start = on_start

    @classmethod
    def start(
        cls,
        bundles: dict[str, Path],
        backend: str,
        o: RayOptions,
        on_start: Callable[[str, dict[str, Any]], None] | None = None,
    ) -> RayExecutor:
        """Read the manifests, connect, deploy the application (or update the one already there) and wait for it."""
        manifests = {name: load_manifest(path) for name, path in bundles.items()}
        connect(o.address)
        serve.start(proxy_location="Disabled")
        args = (
            {name: str(Path(p).absolute()) for name, p in bundles.items()},
            backend,
            models_per_replica(o, len(bundles)),
            max(1, round(o.cpus_per_replica)),
            o.build_engines,
        )
        # Serve gives every serve.run a new version: an ingress restarted after a crash rolls the replicas over,
        # which also ends the requests the dead ingress left running on them.
        app = deployment().options(ray_actor_options=o.actor_options(), **o.replica_count()).bind(*args)
        handle = serve.run(app, name=o.app_name, route_prefix=None)
        return cls(manifests, handle, o, on_start)

    def models(self) -> dict[str, ModelInfo]:
        return self._described.models()

    def describe(self) -> dict[str, str]:
        o = self.options
        count = (
            f"{o.replicas}..{o.max_replicas} replicas (autoscaling)"
            if o.max_replicas is not None
            else f"{o.replicas} replica{'s' * (o.replicas != 1)}"
        )
        where = f"Ray Serve app {o.app_name!r}: {count}, {o.gpus_per_replica:g} GPU each"
        return {name: f"{where}; each replica picks its backend" for name in self.models()}

    def validate(self, model: str, prompt: str, **given: Any) -> GenerateOptions:
        return self._described.validate(model, prompt, **given)

    def run(self, job: dict[str, Any], out_dir: Path, on_step: StepFn) -> dict[str, Any]:
        spec: dict[str, Any] = {k: job[k] for k in ("id", "model", "prompt", "given")}
        data = None
        if job.get("input") is not None:
            path = Path(job["input"]["path"])
            data = path.read_bytes()  # the upload lives in the ingress' --state; the replica may be elsewhere
            spec["input"] = {"kind": job["input"]["kind"], "suffix": path.suffix}
        lost: list[dict[str, Any]] = []
        for _ in range(TRIES):
            for f in out_dir.iterdir():  # what a lost attempt wrote
                f.unlink()
            where: dict[str, Any] = {}
            try:
                result = self._attempt(spec, data, out_dir, on_step, where)
            except REPLICA_LOST as e:
                lost.append({**where, "error": _first_line(e)})
                log.warning("job %s: replica %s lost (%s)", job["id"], where.get("id", "?"), lost[-1]["error"])
                continue
            result["replica"] = {**where, "ran_at": result.pop("ran_at", None)}  # [start, end] on its clock
            if lost:
                result["replicas_lost"] = lost
            return result
        raise ReplicaLost(
            f"the replica running this job died {len(lost)} times; not retrying it: "
            + "; ".join(f"replica {x.get('id', '?')} ({x['error']})" for x in lost)
        )

    def _attempt(
        self, spec: dict[str, Any], data: bytes | None, out_dir: Path, on_step: StepFn, where: dict[str, Any]
    ) -> dict[str, Any]:
        stream = self._handle.options(stream=True, multiplexed_model_id=spec["model"]).generate.remote(spec, data)
        result: dict[str, Any] | None = None
        try:
            for event in stream:
                kind = event.get("event")
                if kind == "started":
                    where.update(event["replica"])
                    if self._on_start is not None:
                        self._on_start(spec["id"], dict(where))
                elif kind == "step":
                    on_step(int(event["step"]), int(event["steps"]))
                elif kind == "file":
                    _write(out_dir, event["name"], event["data"])
                elif kind == "done":
                    result = dict(event["result"])
                elif kind == "error":
                    err = UsageError if event["code"] == "invalid_request" else T2VError
                    raise err(str(event["message"]))
        except BaseException as e:
            if not isinstance(e, REPLICA_LOST):
                stream.cancel()  # the job was stopped here (deleted, draining) or failed: free the replica
            raise
        if result is None:
            raise T2VError(f"replica {where.get('id', '?')} ended the job without a result")
        return result

    def close(self) -> None:
        """Remove the application (its replicas give their GPUs back); leave the cluster."""
        try:
            serve.delete(self.options.app_name)
        finally:
            ray.shutdown()


def _write(out_dir: Path, name: str, data: bytes) -> None:
    if name not in RESULT_FILES:  # names come from the replica: only the three we expect, never a path
        raise T2VError(f"replica sent an unexpected file {name!r}")
    tmp = out_dir / f".{name}.tmp"
    tmp.write_bytes(data)
    os.replace(tmp, out_dir / name)
