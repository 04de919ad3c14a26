"""The card we are on (name, compute capability, memory, PCI bus id) and the installed TensorRT version. Never raises.

Through the one CUDA helper (t2vrt.runtime.cuda: cuda.bindings.runtime, no torch). `detect_gpu()` is None where
there is no usable device; `gpu_problem()` then says exactly why (cuda-python missing, no driver, a driver too old
for cuda-python's CUDA runtime and which one is needed, no device), so nothing reports a bare "no GPU found".
"""

from __future__ import annotations

import importlib

from t2vrt.runtime.cuda import GpuInfo, probe

__all__ = ["GpuInfo", "detect_gpu", "gpu_problem", "tensorrt_version"]


def detect_gpu(index: int = 0) -> GpuInfo | None:
    found = probe(index)
    return None if isinstance(found, str) else found


def gpu_problem(index: int = 0) -> str | None:
    """None when CUDA device `index` is usable; else the one-line reason."""
    found = probe(index)
    return found if isinstance(found, str) else None


def tensorrt_version() -> str | None:
    try:
        trt = importlib.import_module("tensorrt")
    except ImportError:
        return None
    version = getattr(trt, "__version__", None)  # None: a namespace package of type stubs, not TensorRT
    return str(version) if version else None
