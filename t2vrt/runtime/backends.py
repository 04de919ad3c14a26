"""The backends, declared once: name -> when it can run, and how to make one.

`t2vrt generate --backend`, `Pipeline.from_bundle(backend=)`, the bench and the server all read BACKENDS. A new
backend is a class implementing t2vrt.runtime.backend.Backend and one `BackendDef` here. "auto" takes the first
usable entry in order; "onnxruntime" the first usable ONNX Runtime entry.

Each backend's module is imported only when it is asked about: TensorRT and ONNX Runtime load CUDA libraries.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from t2vrt.errors import UsageError
from t2vrt.manifest import Manifest
from t2vrt.runtime.backend import Backend


@dataclass(frozen=True)
class BackendOptions:
    """What a caller may choose beyond the backend's name; each backend reads the fields that concern it."""

    precision: str | None = None  # onnxruntime: "fp32" | "fp16" (default: fp16 on CUDA when the bundle has it)
    threads: int | None = None  # onnxruntime on the CPU: intra-op threads (default: ORT's)
    cuda_graphs: bool = True  # tensorrt: replay static-shape UNet calls as CUDA graphs


@dataclass(frozen=True)
class BackendDef:
    name: str
    doc: str
    why_unavailable: Callable[[Manifest], str | None]  # None when it can run this bundle here, else the reason
    create: Callable[[Manifest, BackendOptions], Backend]


def _tensorrt_reason(manifest: Manifest) -> str | None:
    from t2vrt.runtime.tensorrt_backend import why_tensorrt_unavailable  # importable without tensorrt

    return why_tensorrt_unavailable(manifest.bundle)


def _tensorrt(manifest: Manifest, o: BackendOptions) -> Backend:
    from t2vrt.runtime.tensorrt_backend import TensorRTBackend

    return TensorRTBackend(manifest.bundle, cuda_graphs=o.cuda_graphs)


def _ort_cuda_reason(manifest: Manifest) -> str | None:
    from t2vrt.runtime.onnxruntime_backend import cuda_available

    return None if cuda_available() else "ONNX Runtime has no CUDA provider here (install onnxruntime-gpu)"


def _ort(device: str) -> Callable[[Manifest, BackendOptions], Backend]:
    def create(manifest: Manifest, o: BackendOptions) -> Backend:
        from t2vrt.runtime.onnxruntime_backend import OnnxRuntimeBackend

        return OnnxRuntimeBackend(manifest, device, precision=o.precision, threads=o.threads)

    return create


BACKENDS: dict[str, BackendDef] = {
    b.name: b
    for b in (  # in the order "auto" prefers them
        BackendDef("tensorrt", "FP16 TensorRT engines built for this GPU (t2vrt build)", _tensorrt_reason, _tensorrt),
        BackendDef("onnxruntime-cuda", "ONNX Runtime with its CUDA provider", _ort_cuda_reason, _ort("cuda")),
        BackendDef("onnxruntime-cpu", "ONNX Runtime on the CPU", lambda m: None, _ort("cpu")),
    )
}
CHOICES: tuple[str, ...] = ("auto", "onnxruntime", *BACKENDS)


def select_backend(
    manifest: Manifest, backend: str = "auto", options: BackendOptions | None = None
) -> tuple[Backend, str]:
    """Return the backend and a short note saying which was chosen and why."""
    o = options or BackendOptions()
    if backend not in CHOICES:
        raise UsageError(f"backend must be one of {', '.join(CHOICES)}, got {backend!r}")
    if backend in BACKENDS:
        reason = BACKENDS[backend].why_unavailable(manifest)
        if reason:
            raise UsageError(f"--backend {backend}: {reason}")
        return BACKENDS[backend].create(manifest, o), f"{backend} (asked for)"
    candidates = [b for b in BACKENDS.values() if backend == "auto" or b.name.startswith("onnxruntime")]
    skipped: list[str] = []
    for b in candidates:
        reason = b.why_unavailable(manifest)
        if reason is None:
            why = f" (no {', '.join(skipped)})" if skipped else ""
            return b.create(manifest, o), f"{backend}: {b.name}{why}"
        skipped.append(f"{b.name}: {reason}")
    raise UsageError(f"--backend {backend}: nothing can run here ({'; '.join(skipped)})")  # the CPU always can
