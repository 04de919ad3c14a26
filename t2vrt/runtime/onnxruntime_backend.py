"""ONNX Runtime backend: CPU anywhere (fp32 bundle), CUDA where onnxruntime-gpu is installed (fp16 bundle).

On CUDA: the CUDA/cuDNN libraries are preloaded without torch (`onnxruntime.preload_dlls()`, onnxruntime-gpu >= 1.21);
every session's `get_providers()` is checked, because a CUDA provider that fails to load falls back to the CPU with
only a warning (microsoft/onnxruntime#21825); the BFC arena gets a `gpu_mem_limit` and grows by what is asked
(`kSameAsRequested`, not powers of two); and when the card cannot hold the three sessions (the planner's residency
for the card's free memory) each is freed after its stage, as the TensorRT backend does.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from t2vrt.errors import T2VError, UsageError
from t2vrt.iospec import IOSpec
from t2vrt.manifest import Manifest, verify_files
from t2vrt.runtime.backend import Hints


def cpu_threads() -> int:
    """Physical cores where psutil knows them: ORT's intra-op pool gains nothing from hyper-threads on GEMM/conv."""
    try:
        import psutil

        return max(1, psutil.cpu_count(logical=False) or os.cpu_count() or 1)
    except ImportError:
        return max(1, os.cpu_count() or 1)


def make_session(
    path: Path,
    device: str = "cpu",
    threads: int | None = None,
    check_only: bool = False,
    gpu_mem_limit: int | None = None,
):
    """One session for one graph file, with the options the benchmarks chose (all graph optimisations, one
    thread per physical core, no spinning, sequential execution: the graphs are chains, so parallel branches buy
    nothing).

    check_only=True is for a one-off run (see run_once): the graph runs as written, without graph rewrites, pre-packed
    weight copies or a memory arena, so it holds its weights once. Optimised, an fp16 graph on the CPU has its
    fp16->fp32 weight casts constant-folded into a second, fp32 copy of every weight: 11.4 GB peak RSS for the full
    UNet's 2.8 GB (benchmarks/results/fullsize-export-20261126T014153Z.md)."""
    import onnxruntime as ort

    ort.set_default_logger_severity(3)  # graph-optimiser chatter (fp16 CPU kernels it lacks) is not the user's business
    opts = ort.SessionOptions()
    level = ort.GraphOptimizationLevel
    opts.graph_optimization_level = level.ORT_DISABLE_ALL if check_only else level.ORT_ENABLE_ALL
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.intra_op_num_threads = threads or cpu_threads()
    # Idle pool threads sleep instead of spinning: the fastest setting in the full-size CPU step screen
    # (benchmarks/results/cpu_fullsize_step-*), and kinder to a desktop that is doing other things.
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    if check_only:
        opts.add_session_config_entry("session.disable_prepacking", "1")
        opts.enable_cpu_mem_arena = False
    if device == "cuda":
        cuda_opts = {"cudnn_conv_algo_search": "HEURISTIC", "arena_extend_strategy": "kSameAsRequested"}
        if gpu_mem_limit:
            cuda_opts["gpu_mem_limit"] = str(int(gpu_mem_limit))
        providers: list = [("CUDAExecutionProvider", cuda_opts), "CPUExecutionProvider"]
    else:
        providers = ["CPUExecutionProvider"]
    try:
        session = ort.InferenceSession(str(path), sess_options=opts, providers=providers)
    except Exception as e:  # ORT raises its own exception types (Fail, InvalidGraph, NoSuchFile...)
        raise T2VError(f"cannot load {path}: {str(e).splitlines()[0][:300]}") from None
    if device == "cuda" and "CUDAExecutionProvider" not in session.get_providers():
        raise T2VError(
            f"ONNX Runtime's CUDA provider did not load for {path} and it fell back to the CPU (providers "
            f"{session.get_providers()}): install the CUDA 12 and cuDNN 9 libraries onnxruntime-gpu needs "
            "(pip install 'onnxruntime-gpu[cuda,cudnn]'), or choose --backend onnxruntime-cpu"
        )
    return session


def owned(outputs: list[np.ndarray]) -> list[np.ndarray]:
    """ORT's outputs copied into numpy's own memory. An output array ORT returns keeps its OrtValue alive, and with
    it the session's memory arena, after the session itself is gone: one text-encoder output held on to pinned
    1.2 GB of a dropped fp16 session (measured)."""
    return [np.array(o, copy=True) for o in outputs]


def run_once(path: Path, inputs: dict[str, np.ndarray], output_names: list[str] | None = None) -> list[np.ndarray]:
    """One call of a graph in a check-only session (see make_session) that is gone, with its memory, on return."""
    return owned(make_session(path, check_only=True).run(output_names, inputs))


def preload_cuda_libraries() -> None:
    """Load the CUDA/cuDNN libraries onnxruntime-gpu needs from its pip extras or the system, without torch."""
    import onnxruntime as ort

    preload = getattr(ort, "preload_dlls", None)  # onnxruntime >= 1.21
    if preload is not None:
        try:
            preload()
        except Exception:
            pass


def cuda_memory_plan(manifest: Manifest, precision: str) -> tuple[int | None, bool]:
    """(gpu_mem_limit, one session at a time) from the card's free memory and the planner's choice for it."""
    from t2vrt.runtime import cuda

    gpu = cuda.probe()
    if isinstance(gpu, str):
        return None, False
    try:
        from t2vrt.engine.facts import bundle_facts, make_plan, request_from

        facts = bundle_facts(manifest.bundle)
        plan = make_plan(facts, request_from(facts, None, None, None, False), gpu.free_bytes, free=True)
        sequential = plan.residency != "resident"
    except T2VError:  # nothing fits even one at a time: try anyway, one at a time
        sequential = True
    return gpu.free_bytes, sequential


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
            outs = owned(self.session.run(self.io.output_names, feeds))
        except Exception as e:
            raise T2VError(f"{self.component}: ONNX Runtime failed: {str(e).splitlines()[0][:300]}") from None
        return dict(zip(self.io.output_names, outs))


class OnnxRuntimeBackend:
    def __init__(
        self, manifest: Manifest, device: str = "cpu", precision: str | None = None, threads: int | None = None
    ):
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
        self.gpu_mem_limit: int | None = None
        self.one_at_a_time = False
        if device == "cuda":
            preload_cuda_libraries()
            self.gpu_mem_limit, self.one_at_a_time = cuda_memory_plan(manifest, self.precision)

    def open(self, component: str) -> OrtRunner:
        if component not in self._runners:
            c = self.manifest.components[component]
            f = c.file(self.precision)
            for p in (f.path, f.data):
                if p is not None and not p.is_file():
                    raise UsageError(f"bundle file {p} is missing: re-export the bundle")
            verify_files(self.manifest, [component], [self.precision])  # sha256, once per file version (cached)
            session = make_session(f.path, self.device, self.threads, gpu_mem_limit=self.gpu_mem_limit)
            self._runners[component] = OrtRunner(component, c.io, session)
        return self._runners[component]

    def release(self, component: str) -> None:
        """On the CPU sessions stay resident (RAM is not the constraint); on a card too small for all three, the
        stage's session (and its arena) is freed."""
        if self.one_at_a_time:
            self._runners.pop(component, None)

    def hints(self) -> Hints:
        return Hints()

    def close(self) -> None:
        self._runners.clear()
