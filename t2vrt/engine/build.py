"""`t2vrt build`: strongly typed FP16 TensorRT engines from a bundle's fp16 ONNX, shaped and sized by the plan.

Per engine: parse the ONNX from its path (so external data is found), one optimisation profile from the io spec
and the plan, the workspace limit from the plan, weight streaming when planned, the timing cache shared by the
three engines (per target: caches do not cross GPUs), then serialise to a temp name and rename. An engine whose
key already exists is reused. After each build the engine is deserialised once to record what TensorRT says it
needs (device_memory_size_v2, streamable weights) in its sidecar and in plan.json.

TensorRT is imported lazily: this module imports on machines without it, and says so in one line when asked to build.
"""

from __future__ import annotations

import importlib
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from t2vrt.engine import store
from t2vrt.engine.device import GpuInfo, detect_gpu
from t2vrt.engine.planner import EnginePlan, Plan
from t2vrt.errors import T2VError, UsageError
from t2vrt.manifest import Manifest

if TYPE_CHECKING:
    import tensorrt as trt

OPT_LEVEL = 3  # TensorRT's default; 4-5 buy little for convolutional UNets and double build time
TIMING_CACHE = "timing.cache"
Echo = Callable[[str], None]


def import_tensorrt() -> Any:
    """The tensorrt module, or a T2VError saying how to get it (type stubs alone are not TensorRT)."""
    reason = tensorrt_missing()
    if reason:
        raise T2VError(reason)
    import tensorrt

    return tensorrt


def tensorrt_missing() -> str | None:
    """None when the real TensorRT Python package imports; else why not, in one line."""
    try:
        mod = importlib.import_module("tensorrt")
    except ImportError as e:
        return f"TensorRT is not installed ({e}): pip install 't2vrt[gpu]' (tensorrt from NVIDIA's index) on a machine with an NVIDIA GPU"
    if not hasattr(mod, "Builder") or not hasattr(mod, "__version__"):
        return (
            "TensorRT is not installed (a `tensorrt` package without TensorRT in it, e.g. only tensorrt-stubs): "
            "pip install 't2vrt[gpu]' (tensorrt from NVIDIA's index) on a machine with an NVIDIA GPU"
        )
    return None


def current_target(trt_version: str | None = None) -> tuple[store.Target, GpuInfo]:
    """This machine's (GPU, compute capability, TensorRT version), or a T2VError naming what is missing."""
    if trt_version is None:
        trt_version = str(import_tensorrt().__version__)
    gpu = detect_gpu()
    if gpu is None:
        raise T2VError("no NVIDIA GPU found (cuda-python sees no device): TensorRT engines can only be built on one")
    return store.Target(gpu.name, gpu.compute_capability, trt_version), gpu


def _progress_monitor(echo: Echo) -> trt.IProgressMonitor:
    """Builder phases as indented lines (TensorRT calls this from its own threads; printing is all it does)."""
    import tensorrt as trt

    class Monitor(trt.IProgressMonitor):
        def __init__(self) -> None:
            trt.IProgressMonitor.__init__(self)
            self.depth: dict[str, int] = {}

        def phase_start(self, phase_name: str, parent_phase: str, num_steps: int) -> None:
            self.depth[phase_name] = self.depth.get(parent_phase, 0) + 1 if parent_phase else 1
            if self.depth[phase_name] <= 2:
                echo(f"    {'  ' * (self.depth[phase_name] - 1)}{phase_name} ({num_steps} steps)")

        def step_complete(self, phase_name: str, step: int) -> bool:
            return True  # False would cancel the build

        def phase_finish(self, phase_name: str) -> None:
            self.depth.pop(phase_name, None)

    return Monitor()


def build_engine(onnx_path: Path, ep: EnginePlan, profile: store.Profile, workspace: int, cache_path: Path, echo: Echo) -> bytes:
    """One strongly typed engine; returns its serialised bytes (T2VError with TensorRT's own message on failure)."""
    import tensorrt as trt

    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED))
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise T2VError(f"TensorRT could not parse {onnx_path}: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace)
    config.builder_optimization_level = OPT_LEVEL
    cache = config.create_timing_cache(cache_path.read_bytes() if cache_path.is_file() else b"")
    config.set_timing_cache(cache, ignore_mismatch=False)
    if ep.weight_streaming:
        config.set_flag(trt.BuilderFlag.WEIGHT_STREAMING)
    p = builder.create_optimization_profile()
    for name, (lo, opt, hi) in profile.items():
        p.set_shape(name, trt.Dims(list(lo)), trt.Dims(list(opt)), trt.Dims(list(hi)))
    config.add_optimization_profile(p)
    monitor = _progress_monitor(echo)  # must outlive the build
    config.progress_monitor = monitor
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise T2VError(f"TensorRT failed to build the {ep.component} engine (see its messages above)")
    tmp = cache_path.with_name(f".{cache_path.name}.tmp")
    tmp.write_bytes(bytes(cache.serialize()))
    tmp.replace(cache_path)
    return bytes(serialized)


def measure(data: bytes, ep: EnginePlan) -> dict[str, int]:
    """What TensorRT says the engine needs: activations + scratch, and weights that can stream."""
    import tensorrt as trt

    runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
    engine = runtime.deserialize_cuda_engine(data)
    if engine is None:
        raise T2VError(f"the freshly built {ep.component} engine does not deserialise")
    out = {"device_memory": int(engine.device_memory_size_v2), "streamable_weights": int(engine.streamable_weights_size)}
    if ep.weight_streaming:
        engine.weight_streaming_budget_v2 = ep.resident_weight_bytes
        out["device_memory"] = int(engine.device_memory_size_v2)
        out["weight_streaming_scratch"] = int(engine.weight_streaming_scratch_memory_size)
    del engine, runtime
    return out


def build_all(manifest: Manifest, plan: Plan, target: store.Target, echo: Echo = print) -> dict[str, Path]:
    """Build (or reuse) the plan's three engines for `target`; write plan.json; return component -> engine path."""
    import_tensorrt()
    bundle = manifest.bundle
    tdir = store.target_dir(bundle, target)
    tdir.mkdir(parents=True, exist_ok=True)
    files: dict[str, Path] = {}
    measured: dict[str, dict[str, int]] = {}
    for ep in plan.engines:
        comp = manifest.components[ep.component]
        src = comp.file("fp16")
        profile = ep.profile(comp.io)
        stem = store.engine_stem(ep.component, ep.dims_min, ep.dims_max, profile, src.sha256, ep.weight_streaming, OPT_LEVEL)
        path = tdir / f"{stem}.plan"
        meta = store.read_json(path.with_suffix(".json"))
        if path.is_file() and meta is not None:
            echo(f"{ep.component}: reusing {path.name}")
        else:
            echo(f"{ep.component}: building {path.name} (workspace {plan.workspace >> 20} MiB"
                 f"{', weight streaming' if ep.weight_streaming else ''})")  # fmt: skip
            t0 = time.perf_counter()
            data = build_engine(src.path, ep, profile, plan.workspace, tdir / TIMING_CACHE, echo)
            meta = {
                "component": ep.component, "target": target.to_json(), "onnx_sha256": src.sha256,
                "dims_min": ep.dims_min, "dims_opt": ep.dims_opt, "dims_max": ep.dims_max,
                "profile": {k: [list(s) for s in v] for k, v in profile.items()},
                "weight_streaming": ep.weight_streaming, "opt_level": OPT_LEVEL, "workspace": plan.workspace,
                "build_seconds": round(time.perf_counter() - t0, 1), **measure(data, ep),
            }  # fmt: skip
            store.write_engine(path, data, meta)
            echo(f"{ep.component}: {len(data) >> 20} MiB engine, device memory {int(meta['device_memory']) >> 20} MiB "
                 f"(planned {ep.activation_bytes >> 20} MiB) in {meta['build_seconds']} s")  # fmt: skip
        files[ep.component] = path
        measured[ep.component] = {k: int(meta[k]) for k in ("device_memory", "streamable_weights") if k in meta}
        measured[ep.component]["engine_bytes"] = path.stat().st_size
    store.write_plan(bundle, target, {
        "target": target.to_json(), "plan": plan.to_json(), "measured": measured,
        "engine_files": {c: p.name for c, p in files.items()},
    })  # fmt: skip
    return files


def check_buildable(manifest: Manifest) -> None:
    if "fp16" not in manifest.precisions:
        raise UsageError(f"bundle {manifest.bundle} has no fp16 ONNX: re-export with --precision fp16 to build engines")
