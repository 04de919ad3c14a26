"""The CLI's subcommands, one module each, and the error handling they share."""

from __future__ import annotations

import functools
import importlib
import sys
from collections.abc import Callable
from typing import Any, TypeVar

import click

from t2vrt.errors import T2VError

F = TypeVar("F", bound=Callable[..., Any])

# Packages only some installs have, and the extra that brings each (pyproject.toml).
_EXTRAS = {
    "torch": "export",
    "open_clip": "export",
    "onnx": "export",
    "safetensors": "export",
    "huggingface_hub": "export",
    "onnx_graphsurgeon": "export",
    "polygraphy": "export",
    "tensorrt": "gpu",
    "cuda": "gpu",
    "pynvml": "gpu",
    "matplotlib": "bench",
    "fastapi": "serve",
    "uvicorn": "serve",
    "multipart": "serve",
    "starlette": "serve",
}


def reports_errors(fn: F) -> F:
    """Turn a T2VError into one line on stderr and its exit code (2 usage, 1 runtime); never a traceback."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except T2VError as e:
            click.echo(f"error: {e}", err=True)
            sys.exit(e.exit_code)
        except ModuleNotFoundError as e:
            top = (e.name or "").split(".")[0]
            if top not in _EXTRAS:
                raise
            click.echo(f"error: this needs the {top!r} package: pip install 't2vrt[{_EXTRAS[top]}]'", err=True)
            sys.exit(2)
        except KeyboardInterrupt as e:  # Ctrl-C, or SIGTERM/SIGHUP turned into one by t2vrt.safety.signals
            from t2vrt.safety.signals import Terminated, exit_status

            click.echo(
                f"error: interrupted ({e.name})" if isinstance(e, Terminated) else "error: interrupted", err=True
            )
            sys.exit(exit_status(e))

    return wrapper  # type: ignore[return-value]


_NAMES = ("info", "export", "plan", "build", "generate", "upscale", "extend", "bench", "serve")


def _load() -> list[click.Command]:
    commands = []
    for name in _NAMES:
        try:
            module = importlib.import_module(f"t2vrt.commands.{name}")
        except ModuleNotFoundError as e:
            if e.name == f"t2vrt.commands.{name}":
                continue  # not written yet
            raise
        commands.append(module.command)
    return commands


COMMANDS = _load()
