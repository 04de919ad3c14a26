"""`t2vrt build`: strongly typed FP16 TensorRT engines from a bundle's fp16 ONNX, shaped and sized by the plan.

Per engine: parse the ONNX from its path (so external data is found), one optimisation profile from the io spec
and the plan, the workspace limit from the plan, weight streaming when planned, the timing cache shared by the
three engines (per target: caches do not cross GPUs), then write TensorRT's IHostMemory (no host copy) to a temp
name and rename. An engine whose key already exists is reused. Before each build the card must have room for what the
builder holds while it times tactics (the engine's weights and activations); after it the engine is deserialised
once to record what TensorRT says it needs (device_memory_size_v2 with any streaming scratch, the bytes its weights
take on the card, the weight-streaming budget it accepted). When those measured figures do not fit the card's
budget the build fails here, naming them, and no plan.json is written: never a surprise at `generate`.

Weight streaming: `weight_streaming_budget_v2` counts streamable bytes only (`streamable_weights_size`, a part of
the weights) and a value >= streamable turns streaming off; the planner plans resident bytes of all the UNet's
weights, so the budget is the planned resident bytes minus the weights that cannot stream, clamped at 0. The Python
setter drops TensorRT's success flag: the budget is read back and a refused one is an error.

TensorRT is imported lazily: this module imports on machines without it, and says so in one line when asked to build.
"""

from __future__ import annotations

import importlib
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from t2vrt.engine import store
from t2vrt.engine.planner import EnginePlan, Plan, fmt
from t2vrt.errors import T2VError, UsageError
from t2vrt.manifest import Manifest
from t2vrt.runtime import cuda

if TYPE_CHECKING:
    import tensorrt as trt

MIN_TENSORRT = (10, 1)  # 10.0 lacks device_memory_size_v2, set_device_memory and weight_streaming_budget_v2
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
    version = str(mod.__version__)
    parts = tuple(int(p) for p in version.split(".")[:2] if p.isdigit())
    if parts < MIN_TENSORRT:
        return f"TensorRT {version} is too old: t2vrt needs TensorRT >= 10.1 (pip install 't2vrt[gpu]')"
    return None


def current_target(trt_version: str | None = None) -> tuple[store.Target, cuda.GpuInfo]:
    """This machine's (GPU, card size, compute capability, TensorRT version), or a T2VError naming the real cause."""
    if trt_version is None:
        trt_version = str(import_tensorrt().__version__)
    found = cuda.probe()
    if isinstance(found, str):
        raise T2VError(f"TensorRT engines are built on the NVIDIA GPU they run on, and this machine has none usable: {found}")
    return store.Target(found.name, found.compute_capability, trt_version, found.memory_gib), found


T = TypeVar("T")


def trt_factory(what: str, make: Callable[[], T]) -> T:
    """trt.Runtime(logger) / trt.Builder(logger): TensorRT's factory returns null where it cannot use the CUDA driver
    (pybind then raises TypeError). One line naming the likely cause instead."""
    try:
        return make()
    except TypeError:
        import tensorrt as trt

        why = cuda.probe()
        cause = why if isinstance(why, str) else (
            f"CUDA works for cuda-python on {why.name}, so this TensorRT build likely wants another CUDA major than "
            "the driver offers (tensorrt-cu13 needs an R580+ driver; use the CUDA 12 stack on older drivers: "
            f"{cuda.CU12_STACK})"
        )  # fmt: skip
        raise T2VError(f"TensorRT {trt.__version__} could not create its {what} (no CUDA driver it can use): {cause}") from None


def set_streaming_budget(engine: trt.ICudaEngine, budget: int, component: str) -> None:
    """Set weight_streaming_budget_v2 and read it back: the binding drops TensorRT's refusal."""
    engine.weight_streaming_budget_v2 = budget
    got = int(engine.weight_streaming_budget_v2)
    if got != budget:
        raise T2VError(
            f"TensorRT refused the {component} engine's weight streaming budget of {budget} bytes (it reads back "
            f"{got}; streamable {int(engine.streamable_weights_size)}): rebuild with `t2vrt build BUNDLE --clean` then `t2vrt build`"
        )


def streaming_budget(ep: EnginePlan, streamable: int) -> int:
    """weight_streaming_budget_v2 for the planned resident bytes: only streamable bytes count toward it."""
    if streamable <= 0:
        raise T2VError(f"the {ep.component} engine was built for weight streaming but TensorRT reports no streamable weights")
    return max(0, min(ep.resident_weight_bytes - (ep.weight_bytes - streamable), streamable - 1))


def check_builder_memory(ep: EnginePlan, free: int) -> None:
    """The builder keeps the engine's weights (all of them) and its activations on the card while it times tactics."""
    need = ep.weight_bytes + ep.activation_bytes
    if need > free:
        raise T2VError(
            f"building the {ep.component} engine needs about {fmt(need)} free on the card ({fmt(ep.weight_bytes)} of "
            f"weights + {fmt(ep.activation_bytes)} of activations while TensorRT times tactics), but only {fmt(free)} "
            "is free: close other programs using the GPU, or build at a smaller --frames/--height/--width"
        )


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


def build_engine(
    onnx_path: Path, ep: EnginePlan, profile: store.Profile, workspace: int, cache_path: Path, echo: Echo
) -> trt.IHostMemory:
    """One strongly typed engine; returns TensorRT's serialised IHostMemory (T2VError with its message on failure)."""
    import tensorrt as trt

    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt_factory("builder", lambda: trt.Builder(logger))
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
        try:
            p.set_shape(name, trt.Dims(list(lo)), trt.Dims(list(opt)), trt.Dims(list(hi)))
        except RuntimeError as e:
            raise T2VError(f"the {ep.component} optimisation profile for {name} {lo}..{hi} was refused: {e}") from None
    if config.add_optimization_profile(p) < 0:
        raise T2VError(f"TensorRT refused the {ep.component} optimisation profile {dict(profile)}")
    monitor = _progress_monitor(echo)  # must outlive the build
    config.progress_monitor = monitor
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise T2VError(f"TensorRT failed to build the {ep.component} engine (see its messages above)")
    tmp = cache_path.with_name(f".{cache_path.name}.tmp")
    with open(tmp, "wb") as f:
        f.write(cache.serialize())
    tmp.replace(cache_path)
    return serialized


def measure(data: Any, ep: EnginePlan) -> dict[str, int]:
    """What the engine takes on this card: device_memory_size_v2 (activations, tactic scratch, streaming scratch),
    the bytes its weights occupy (cudaMemGetInfo before and after loading it), the streaming budget it accepted."""
    import tensorrt as trt

    runtime = trt_factory("runtime", lambda: trt.Runtime(trt.Logger(trt.Logger.WARNING)))
    free0 = cuda.free_bytes()
    engine = runtime.deserialize_cuda_engine(data)
    if engine is None:
        raise T2VError(
            f"the freshly built {ep.component} engine does not load on this card ({fmt(free0)} free; TensorRT's "
            "messages above say why)"
        )
    streamable = int(engine.streamable_weights_size)
    out = {"streamable_weights": streamable}
    if ep.weight_streaming:
        budget = streaming_budget(ep, streamable)
        set_streaming_budget(engine, budget, ep.component)
        out["weight_streaming_budget"] = budget
        out["weight_streaming_scratch"] = int(engine.weight_streaming_scratch_memory_size)
    out["device_memory"] = int(engine.device_memory_size_v2)  # after the budget: it includes the streaming scratch
    out["weights_on_card"] = max(0, free0 - cuda.free_bytes())
    del engine, runtime
    return out


def reality_problem(plan: Plan, measured: dict[str, dict[str, int]]) -> str | None:
    """None when what TensorRT measured fits the plan's budget; else one line naming the stage that does not."""
    on_card = {e.component: measured[e.component].get("weights_on_card", measured[e.component]["engine_bytes"]) for e in plan.engines}
    act = {e.component: measured[e.component]["device_memory"] for e in plan.engines}
    io = {e.component: e.io_bytes for e in plan.engines}
    if plan.residency == "resident":
        worst = max(act, key=lambda c: act[c])
        peak = sum(on_card.values()) + sum(io.values()) + act[worst]
        what = f"all engines resident: weights {fmt(sum(on_card.values()))} + {worst} device memory {fmt(act[worst])}"
    else:
        worst = max(act, key=lambda c: on_card[c] + io[c] + act[c])
        peak = on_card[worst] + io[worst] + act[worst]
        what = f"{worst} stage: weights {fmt(on_card[worst])} + device memory {fmt(act[worst])}"
    if peak <= plan.budget:
        return None
    return (
        f"the engines as built do not fit the card: TensorRT measured the {what} + I/O = {fmt(peak)}, which does not fit "
        f"the {fmt(plan.budget)} budget of a {fmt(plan.vram)} card; these measurements are kept, so run `t2vrt build` "
        "again to plan with them, or ask for fewer frames or a smaller size"
    )


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
        wkey = store.weights_key(src)
        stem = store.engine_stem(ep.component, ep.dims_min, ep.dims_max, profile, src.sha256, ep.weight_streaming, OPT_LEVEL, wkey)
        path = tdir / f"{stem}.plan"
        meta = store.read_json(path.with_suffix(".json"))
        if path.is_file() and meta is not None:
            echo(f"{ep.component}: reusing {path.name}")
        else:
            echo(f"{ep.component}: building {path.name} (workspace {plan.workspace >> 20} MiB"
                 f"{', weight streaming' if ep.weight_streaming else ''})")  # fmt: skip
            check_builder_memory(ep, cuda.free_bytes())
            t0 = time.perf_counter()
            data = build_engine(src.path, ep, profile, plan.workspace, tdir / TIMING_CACHE, echo)
            meta = {
                "component": ep.component, "target": target.to_json(), "onnx_sha256": src.sha256, "weights_key": wkey,
                "dims_min": ep.dims_min, "dims_opt": ep.dims_opt, "dims_max": ep.dims_max,
                "profile": {k: [list(s) for s in v] for k, v in profile.items()},
                "weight_streaming": ep.weight_streaming, "opt_level": OPT_LEVEL, "workspace": plan.workspace,
                "build_seconds": round(time.perf_counter() - t0, 1), **measure(data, ep),
            }  # fmt: skip
            store.write_engine(path, data, meta)
            del data
            echo(f"{ep.component}: {path.stat().st_size >> 20} MiB engine, device memory {int(meta['device_memory']) >> 20} MiB "
                 f"(planned {ep.activation_bytes >> 20} MiB) in {meta['build_seconds']} s")  # fmt: skip
        files[ep.component] = path
        keys = ("device_memory", "streamable_weights", "weights_on_card", "weight_streaming_budget")
        measured[ep.component] = {k: int(meta[k]) for k in keys if k in meta}
        measured[ep.component]["engine_bytes"] = path.stat().st_size
    problem = reality_problem(plan, measured)
    if problem:
        raise T2VError(problem)
    store.write_plan(bundle, target, {
        "target": target.to_json(), "plan": plan.to_json(), "measured": measured,
        "engine_files": {c: p.name for c, p in files.items()},
    })  # fmt: skip
    return files


def check_buildable(manifest: Manifest) -> None:
    if "fp16" not in manifest.precisions:
        raise UsageError(f"bundle {manifest.bundle} has no fp16 ONNX: re-export with --precision fp16 to build engines")
