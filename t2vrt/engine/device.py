"""The card we are on: name, compute capability, memory; and the installed TensorRT version. Never raises.

Through cuda-python (cuda.bindings.runtime, or the older cuda.cudart), no torch. Returns None where there is no
cuda-python, no driver or no device, so the planner can ask for --vram instead.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class GpuInfo:
    name: str
    compute_capability: str  # "8.6"
    total_bytes: int
    free_bytes: int


def cudart() -> Any:
    """The CUDA runtime module of cuda-python, or None."""
    for name in ("cuda.bindings.runtime", "cuda.cudart"):
        try:
            return importlib.import_module(name)
        except ImportError:
            continue
    return None


def check(result: Any) -> Any:
    """cuda-python returns (err, *values): raise on err, else the value(s)."""
    from t2vrt.errors import T2VError

    err, *values = result if isinstance(result, tuple) else (result,)
    if int(err) != 0:
        raise T2VError(f"CUDA error {err}")
    return values[0] if len(values) == 1 else tuple(values)


def detect_gpu() -> GpuInfo | None:
    rt = cudart()
    if rt is None:
        return None
    try:
        if check(rt.cudaGetDeviceCount()) < 1:
            return None
        props = check(rt.cudaGetDeviceProperties(0))
        free, total = check(rt.cudaMemGetInfo())
        name = props.name.decode() if isinstance(props.name, bytes) else str(props.name)
        return GpuInfo(name.strip("\x00 "), f"{props.major}.{props.minor}", int(total), int(free))
    except Exception:  # noqa: BLE001 - no driver, no device, a broken install: all mean "no GPU" here
        return None


def tensorrt_version() -> str | None:
    try:
        trt = importlib.import_module("tensorrt")
    except ImportError:
        return None
    version = getattr(trt, "__version__", None)  # None: a namespace package of type stubs, not TensorRT
    return str(version) if version else None
