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
            raise UsageError(f"--bundle {v!r}: model name {name!r} must be letters, digits, '.', '_' or '-' "
                             f"(use NAME=PATH)")
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
@click.option("--bundle", "-b", "bundles", multiple=True, required=True, metavar="[NAME=]DIR",
              help="A bundle to serve (repeat for several; the first is the default model).")
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to listen on; anything but loopback needs --api-key.")
@click.option("--port", type=int, default=8000, show_default=True, help="Port (0 picks a free one).")
@click.option("--state", type=click.Path(path_type=Path), default=Path("t2vrt-state"), show_default=True,
              help="Directory for the job database, uploads and results.")
@click.option("--api-key", envvar="T2VRT_API_KEY", default=None,
              help="Require 'Authorization: Bearer KEY' on /v1 (env T2VRT_API_KEY).")
@click.option("--backend", type=click.Choice(["auto", "tensorrt", "onnxruntime", "onnxruntime-cuda", "onnxruntime-cpu"]),
              default="auto", show_default=True)
@click.option("--max-queue", type=int, default=64, show_default=True,
              help="Jobs queued or running at once; more get 429 with Retry-After.")
@click.option("--max-upload-mb", type=int, default=64, show_default=True, help="Largest input_reference.")
@click.option("--max-prompt-chars", type=int, default=2000, show_default=True)
@click.option("--keep", default="7d", show_default=True, help="Age at which finished jobs expire (or 'never').")
@click.option("--drain-timeout", type=float, default=60.0, show_default=True,
              help="On SIGTERM, seconds to let the running job finish before requeueing it.")
@click.option("--access-log", is_flag=True, help="Log every request.")
@reports_errors
def command(bundles: tuple[str, ...], host: str, port: int, state: Path, api_key: str | None, backend: str,
            max_queue: int, max_upload_mb: int, max_prompt_chars: int, keep: str, drain_timeout: float,
            access_log: bool) -> None:
    """Serve bundles over HTTP: a web page at / and OpenAI's Videos API at /v1/videos."""
    from t2vrt.serve.server import ServeConfig, serve

    serve(ServeConfig(bundles=parse_bundles(bundles), host=host, port=port, state=state, api_key=api_key or None,
                      backend=backend, max_queue=max_queue, max_upload_mb=max_upload_mb,
                      max_prompt_chars=max_prompt_chars, keep_seconds=parse_age(keep), drain_timeout=drain_timeout,
                      access_log=access_log))
