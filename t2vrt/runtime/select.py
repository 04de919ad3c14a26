"""Which backend runs a bundle: asked for by name, or "auto" (TensorRT > ONNX Runtime CUDA > ONNX Runtime CPU)."""

from __future__ import annotations

from t2vrt.errors import UsageError
from t2vrt.manifest import Manifest
from t2vrt.runtime.backend import Backend

BACKENDS = ("auto", "tensorrt", "onnxruntime", "onnxruntime-cuda", "onnxruntime-cpu")


def _tensorrt_reason(manifest: Manifest) -> str | None:
    """None when TensorRT engines for this GPU can run; else the one-line reason why not."""
    try:
        from t2vrt.runtime.tensorrt_backend import tensorrt_available
    except ImportError as e:  # the backend module itself is importable without tensorrt; this is a broken install
        return f"the TensorRT backend cannot be imported ({e})"
    return tensorrt_available(manifest.bundle)


def select_backend(manifest: Manifest, backend: str = "auto", **options: object) -> tuple[Backend, str]:
    """Return the backend and a short note saying which was chosen and why."""
    from t2vrt.runtime.onnxruntime_backend import OnnxRuntimeBackend, cuda_available

    if backend not in BACKENDS:
        raise UsageError(f"backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
    if backend == "tensorrt":
        reason = _tensorrt_reason(manifest)
        if reason:
            raise UsageError(f"--backend tensorrt: {reason}")
        from t2vrt.runtime.tensorrt_backend import TensorRTBackend

        return TensorRTBackend(manifest.bundle, **options), "tensorrt (asked for)"
    if backend == "onnxruntime-cpu":
        return OnnxRuntimeBackend(manifest, "cpu", **options), "onnxruntime on CPU (asked for)"  # type: ignore[arg-type]
    if backend == "onnxruntime-cuda":
        return OnnxRuntimeBackend(manifest, "cuda", **options), "onnxruntime on CUDA (asked for)"  # type: ignore[arg-type]
    if backend == "onnxruntime":
        device = "cuda" if cuda_available() else "cpu"
        return OnnxRuntimeBackend(manifest, device, **options), f"onnxruntime on {device.upper()}"  # type: ignore[arg-type]
    # auto
    reason = _tensorrt_reason(manifest)
    if reason is None:
        from t2vrt.runtime.tensorrt_backend import TensorRTBackend

        return TensorRTBackend(manifest.bundle, **options), "auto: tensorrt (engines for this GPU found)"
    if cuda_available():
        return OnnxRuntimeBackend(manifest, "cuda", **options), f"auto: onnxruntime on CUDA (no TensorRT: {reason})"  # type: ignore[arg-type]
    return OnnxRuntimeBackend(manifest, "cpu", **options), f"auto: onnxruntime on CPU (no TensorRT: {reason})"  # type: ignore[arg-type]
