"""`t2vrt serve --bundle B [--bundle NAME=B2 ...]`: the web page and the OpenAI-compatible video API."""

from __future__ import annotations

import re
from pathlib import Path

import click

from t2vrt.commands import reports_errors
from t2vrt.errors import UsageError

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
_AGE = re.compile(r"(\d+)\s*([smhd]?)")


def parse_bundles(values: tuple[str, ...]) -> dict[str, Path]:
    """`PATH` (model id = the directory's name) or `NAME=PATH`, in order; the first is the default model."""
    out: dict[str, Path] = {}
    for v in values:
        name, sep, path = v.partition("=")
        if not sep:
            name, path = Path(v.rstrip("/")).name, v
        if not _NAME.fullmatch(name):
            raise UsageError(
                f"--bundle {v!r}: model name {name!r} must be letters, digits, '.', '_' or '-' (use NAME=PATH)"
            )
        if name in out:
            raise UsageError(f"--bundle {v!r}: model name {name!r} is used twice; name them with NAME=PATH")
        if not Path(path).is_dir():
            raise UsageError(f"--bundle {v!r}: {path} is not a directory (a bundle from t2vrt export)")
        out[name] = Path(path)
    return out


def parse_age(value: str) -> int | None:
    """'7d', '12h', '30m', '90s', '3600' -> seconds; '0' or 'never' -> None (results never expire)."""
    if value.strip().lower() == "never":
        return None
    m = _AGE.fullmatch(value.strip().lower())
    if not m:
        raise UsageError(f"--keep must be an age like 7d, 12h, 30m, 90s or 'never', got {value!r}")
    seconds = int(m.group(1)) * {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}[m.group(2)]
    return seconds or None


@click.command("serve")
@click.option(
    "--bundle",
    "-b",
    "bundles",
    multiple=True,
    required=True,
    metavar="[NAME=]DIR",
    help="A bundle to serve (repeat for several; the first is the default model).",
)
@click.option(
    "--host",
    default="127.0.0.1",
    show_default=True,
    help="Address to listen on; anything but loopback needs --api-key.",
)
@click.option("--port", type=int, default=8000, show_default=True, help="Port (0 picks a free one).")
@click.option(
    "--state",
    type=click.Path(path_type=Path),
    default=Path("t2vrt-state"),
    show_default=True,
    help="Directory for the job database, uploads and results.",
)
@click.option(
    "--api-key",
    envvar="T2VRT_API_KEY",
    default=None,
    help="Require 'Authorization: Bearer KEY' on /v1 (env T2VRT_API_KEY).",
)
@click.option(
    "--backend",
    type=click.Choice(["auto", "tensorrt", "onnxruntime", "onnxruntime-cuda", "onnxruntime-cpu"]),
    default="auto",
    show_default=True,
)
@click.option(
    "--max-queue",
    type=int,
    default=64,
    show_default=True,
    help="Jobs queued or running at once; more get 429 with Retry-After.",
)
@click.option("--max-upload-mb", type=int, default=64, show_default=True, help="Largest input_reference.")
@click.option("--max-prompt-chars", type=int, default=2000, show_default=True)
@click.option("--keep", default="7d", show_default=True, help="Age at which finished jobs expire (or 'never').")
@click.option(
    "--drain-timeout",
    type=float,
    default=60.0,
    show_default=True,
    help="On SIGTERM, seconds to let the running job finish before requeueing it.",
)
@click.option("--access-log", is_flag=True, help="Log every request.")
@click.option(
    "--ray",
    "ray_address",
    is_flag=False,
    flag_value="",
    default=None,
    metavar="[ADDRESS]",
    help="Run jobs on Ray Serve: 'auto' (the cluster on this machine), HOST:PORT or ray://HOST:PORT; "
    "alone: RAY_ADDRESS, else the cluster `ray start` made here, else a new local one.",
)
@click.option(
    "--replicas",
    default="1",
    show_default=True,
    metavar="N|MIN:MAX",
    help="With --ray: video replicas (one GPU each), or autoscaling bounds.",
)
@click.option("--replica-gpus", type=float, default=1.0, show_default=True, help="With --ray: GPUs per replica.")
@click.option(
    "--replica-cpus",
    type=float,
    default=1.0,
    show_default=True,
    help="With --ray: CPUs per replica (and ONNX Runtime threads on the CPU).",
)
@click.option(
    "--models-per-replica", type=int, default=None, help="With --ray: bundles one replica keeps loaded (default: all)."
)
@click.option(
    "--build-engines",
    is_flag=True,
    help="With --ray: a replica builds TensorRT engines for its GPU when the bundle has none.",
)
@reports_errors
def command(
    bundles: tuple[str, ...],
    host: str,
    port: int,
    state: Path,
    api_key: str | None,
    backend: str,
    max_queue: int,
    max_upload_mb: int,
    max_prompt_chars: int,
    keep: str,
    drain_timeout: float,
    access_log: bool,
    ray_address: str | None,
    replicas: str,
    replica_gpus: float,
    replica_cpus: float,
    models_per_replica: int | None,
    build_engines: bool,
) -> None:
    """Serve bundles over HTTP: a web page at / and OpenAI's Videos API at /v1/videos."""
    from t2vrt.serve.ray_config import RayOptions, parse_replicas
    from t2vrt.serve.server import ServeConfig, serve

    ray = None
    if ray_address is not None:
        low, high = parse_replicas(replicas)
        ray = RayOptions(
            address=ray_address or None,
            replicas=low,
            max_replicas=high,
            gpus_per_replica=replica_gpus,
            cpus_per_replica=replica_cpus,
            models_per_replica=models_per_replica,
            build_engines=build_engines,
        )
    elif replicas != "1" or replica_gpus != 1.0 or replica_cpus != 1.0 or models_per_replica or build_engines:
        raise UsageError(
            "--replicas, --replica-gpus, --replica-cpus, --models-per-replica and --build-engines need --ray"
        )
    serve(
        ServeConfig(
            bundles=parse_bundles(bundles),
            host=host,
            port=port,
            state=state,
            api_key=api_key or None,
            backend=backend,
            max_queue=max_queue,
            max_upload_mb=max_upload_mb,
            max_prompt_chars=max_prompt_chars,
            keep_seconds=parse_age(keep),
            drain_timeout=drain_timeout,
            access_log=access_log,
            ray=ray,
        )
    )
