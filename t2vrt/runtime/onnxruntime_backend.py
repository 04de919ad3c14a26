"""ONNX Runtime backend: CPU anywhere (fp32 bundle), CUDA where onnxruntime-gpu is installed (fp16 bundle)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from t2vrt.errors import T2VError, UsageError
from t2vrt.iospec import IOSpec
from t2vrt.manifest import Manifest
from t2vrt.runtime.backend import Hints


def cpu_threads() -> int:
    """Physical cores where psutil knows them: ORT's intra-op pool gains nothing from hyper-threads on GEMM/conv."""
    try:
        import psutil

        return max(1, psutil.cpu_count(logical=False) or os.cpu_count() or 1)
    except ImportError:
        return max(1, os.cpu_count() or 1)


def make_session(path: Path, device: str = "cpu", threads: int | None = None, prepack: bool = True):
    """One session for one graph file, with the options the benchmarks chose (all graph optimisations, one
    thread per physical core, no spinning, sequential execution: the graphs are chains, so parallel branches buy
    nothing). prepack=False skips ORT's pre-packed weight copies: slower, but a one-off check (the export's parity
    gate) of a 5.6 GB graph then holds its weights once, not twice."""
    import onnxruntime as ort

    ort.set_default_logger_severity(3)  # graph-optimiser chatter (fp16 CPU kernels it lacks) is not the user's business
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.intra_op_num_threads = threads or cpu_threads()
    # Idle pool threads sleep instead of spinning: the fastest setting in the full-size CPU step screen
    # (benchmarks/results/cpu_fullsize_step-*), and kinder to a desktop that is doing other things.
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    if not prepack:
        opts.add_session_config_entry("session.disable_prepacking", "1")
    if device == "cuda":
        providers: list = [("CUDAExecutionProvider", {"cudnn_conv_algo_search": "HEURISTIC"}), "CPUExecutionProvider"]
    else:
        providers = ["CPUExecutionProvider"]
    try:
        return ort.InferenceSession(str(path), sess_options=opts, providers=providers)
    except Exception as e:  # ORT raises its own exception types (Fail, InvalidGraph, NoSuchFile...)
        raise T2VError(f"cannot load {path}: {str(e).splitlines()[0][:300]}") from None


def cuda_available() -> bool:
    try:
        import onnxruntime as ort
    except ImportError:
        return False
    return "CUDAExecutionProvider" in ort.get_available_providers()


class OrtRunner:
    """One component's session; checks every call's inputs against the io spec and its outputs for NaN/inf."""

    def __init__(self, component: str, io: IOSpec, session) -> None:
        self.component = component
        self.io = io
        self.session = session

    def run(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        self.io.bind(inputs)
        feeds = {t.name: np.ascontiguousarray(inputs[t.name], dtype=t.dtype) for t in self.io.inputs}
        try:
            outs = self.session.run(self.io.output_names, feeds)
        except Exception as e:
            raise T2VError(f"{self.component}: ONNX Runtime failed: {str(e).splitlines()[0][:300]}") from None
        return dict(zip(self.io.output_names, outs))


class OnnxRuntimeBackend:
    def __init__(self, manifest: Manifest, device: str = "cpu", precision: str | None = None, threads: int | None = None):
        if device not in ("cpu", "cuda"):
            raise UsageError(f"onnxruntime device must be cpu or cuda, got {device!r}")
        if device == "cuda" and not cuda_available():
            raise UsageError(
                "ONNX Runtime has no CUDA provider here: install onnxruntime-gpu (instead of onnxruntime) or use --backend onnxruntime with the CPU"
            )
        # CPU kernels for fp16 are few (ORT casts around them): fp32 there; fp16 on CUDA when the bundle has it.
        self.precision = precision or ("fp16" if device == "cuda" and "fp16" in manifest.precisions else "fp32")
        self.manifest = manifest
        self.device = device
        self.threads = threads
        self.name = f"onnxruntime-{device}"
        self._runners: dict[str, OrtRunner] = {}

    def open(self, component: str) -> OrtRunner:
        if component not in self._runners:
            c = self.manifest.components[component]
            f = c.file(self.precision)
            for p in (f.path, f.data):
                if p is not None and not p.is_file():
                    raise UsageError(f"bundle file {p} is missing: re-export the bundle")
            self._runners[component] = OrtRunner(component, c.io, make_session(f.path, self.device, self.threads))
        return self._runners[component]

    def release(self, component: str) -> None:
        """ORT sessions stay resident: CPU RAM is not the constraint the TensorRT planner manages."""

    def hints(self) -> Hints:
        return Hints()

    def close(self) -> None:
        self._runners.clear()
