"""`t2vrt build`: strongly typed FP16 TensorRT engines from a bundle's fp16 ONNX, shaped and sized by the plan.

Per engine: parse the ONNX from its path (so external data is found), one optimisation profile from the io spec
and the plan, the workspace limit from the plan, weight streaming when planned, the timing cache shared by the
three engines (per target: caches do not cross GPUs), then write TensorRT's IHostMemory (no host copy) to a temp
name and rename. An engine whose key already exists is reused.

Memory, decided by the planner (t2vrt/engine/planner.py), checked here against the card:
- before anything is built, every engine still to build must fit what is free now beside the builder (its
  `build_bytes`: all its weights, the tensors it times, the builder's kernel library); else one line, with the plan's
  note on what would build;
- after each build the engine is deserialised once to record what TensorRT says it needs: device_memory_size_v2
  (with any streaming scratch), the bytes its weights take on the card, its streamable bytes and the streaming budget
  the planner derives from them (`EnginePlan.stream_budget`);
- the plan restated in those figures must fit its budget. When it does not and the command gave the planner's facts,
  it re-plans with the measurements (a slower arrangement, built in turn) up to MAX_PLANS times; else it fails here
  naming the stage, and no plan.json is written: never a surprise at `generate`. plan.json holds the plan in
  TensorRT's own figures.

The streaming budget's setter drops TensorRT's success flag: the budget is read back and a refused one is an error.

TensorRT is imported lazily: this module imports on machines without it, and says so in one line when asked to build.
"""

from __future__ import annotations

import importlib
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from t2vrt.engine import store
from t2vrt.engine.plans import EnginePlan, Plan, fmt, streaming_budget
from t2vrt.engine.sizes import Measured
from t2vrt.errors import T2VError, UsageError
from t2vrt.manifest import Manifest, write_json_atomic
from t2vrt.runtime import cuda
from t2vrt.safety.diskfull import reraise_disk_full

if TYPE_CHECKING:
    import tensorrt as trt

    from t2vrt.engine.facts import Facts

MIN_TENSORRT = (10, 1)  # 10.0 lacks device_memory_size_v2, set_device_memory and weight_streaming_budget_v2
OPT_LEVEL = 3  # TensorRT's default; 4-5 buy little for convolutional UNets and double build time
TIMING_CACHE = "timing.cache"
MAX_PLANS = 3  # plans built in one `t2vrt build`: the first, then re-plans from what TensorRT measured
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
        raise T2VError(
            f"TensorRT engines are built on the NVIDIA GPU they run on, and this machine has none usable: {found}"
        )
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
        cause = (
            why
            if isinstance(why, str)
            else (
                f"CUDA works for cuda-python on {why.name}, so this TensorRT build likely wants another CUDA major than "
                "the driver offers (tensorrt-cu13 needs an R580+ driver; use the CUDA 12 stack on older drivers: "
                f"{cuda.CU12_STACK})"
            )
        )
        raise T2VError(
            f"TensorRT {trt.__version__} could not create its {what} (no CUDA driver it can use): {cause}"
        ) from None


def set_streaming_budget(engine: trt.ICudaEngine, budget: int, component: str) -> None:
    """Set weight_streaming_budget_v2 and read it back: the binding drops TensorRT's refusal."""
    engine.weight_streaming_budget_v2 = budget
    got = int(engine.weight_streaming_budget_v2)
    if got != budget:
        raise T2VError(
            f"TensorRT refused the {component} engine's weight streaming budget of {budget} bytes (it reads back "
            f"{got}; streamable {int(engine.streamable_weights_size)}): rebuild with `t2vrt build BUNDLE --clean` then `t2vrt build`"
        )


def stream_budget_for(ep: EnginePlan, streamable: int) -> int:
    """weight_streaming_budget_v2 for the plan's resident bytes of this engine, now that TensorRT has said how much
    of it can stream (the planner's rule: only streamable bytes count)."""
    if streamable <= 0:
        raise T2VError(
            f"the {ep.component} engine was built for weight streaming but TensorRT reports no streamable weights"
        )
    return streaming_budget(ep.resident_weight_bytes, ep.weight_bytes, streamable)


def check_builder_memory(ep: EnginePlan, free: int, note: str = "") -> None:
    """The builder keeps the engine's weights (all of them), the tensors it times and its kernel library on the card."""
    if ep.build_bytes > free:
        raise T2VError(
            f"building the {ep.component} engine needs about {fmt(ep.build_bytes)} free on the card ({fmt(ep.weight_bytes)} "
            f"of weights + {fmt(ep.activation_bytes)} of activations + the builder's kernel library while TensorRT times "
            f"tactics), but only {fmt(free)} is free: close other programs using the GPU, or build at a smaller "
            "--frames/--height/--width" + (f" ({note.split('; ', 1)[1]})" if "; what builds" in note else "")
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
    try:
        with reraise_disk_full(cache_path.parent), open(tmp, "wb") as f:
            f.write(cache.serialize())
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    tmp.replace(cache_path)
    return serialized


def measure(data: Any, ep: EnginePlan) -> dict[str, int]:
    """What the engine takes on this card: device_memory_size_v2 (activations, tactic scratch, streaming scratch),
    the bytes its weights occupy (cudaMemGetInfo before and after loading it), its streamable bytes and the streaming
    budget it accepted."""
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
        budget = stream_budget_for(ep, streamable)
        set_streaming_budget(engine, budget, ep.component)
        out["weight_streaming_budget"] = budget
        out["weight_streaming_scratch"] = int(engine.weight_streaming_scratch_memory_size)
    out["device_memory"] = int(engine.device_memory_size_v2)  # after the budget: it includes the streaming scratch
    out["weights_on_card"] = max(0, free0 - cuda.free_bytes())
    del engine, runtime
    return out


@dataclass(frozen=True)
class Built:
    plan: Plan  # the plan in TensorRT's own figures: what plan.json holds and the backend follows
    files: dict[str, Path]  # component -> engine file


def _arrangement(p: Plan) -> tuple[object, ...]:
    """What a re-plan may change: residency, guidance batch, VAE chunk, and each engine's shapes, streaming and share
    of its weights on the card."""
    engines = tuple(
        (e.component, sorted(e.dims_max.items()), e.weight_streaming, e.resident_weight_bytes) for e in p.engines
    )
    return p.residency, p.guidance_batch, p.vae_chunk, engines


def _build_engines(
    manifest: Manifest, plan: Plan, target: store.Target, echo: Echo
) -> tuple[dict[str, Path], dict[str, Measured], dict[str, dict[str, int]]]:
    """Build (or reuse) the plan's engines; return their files, what TensorRT measured for each, and those figures as
    the backend reads them from plan.json."""
    tdir = store.target_dir(manifest.bundle, target)
    tdir.mkdir(parents=True, exist_ok=True)
    jobs = []
    for ep in plan.engines:
        comp = manifest.components[ep.component]
        src = comp.file("fp16")
        profile = ep.profile(comp.io)
        wkey = store.weights_key(src)
        stem = store.engine_stem(
            ep.component, ep.dims_min, ep.dims_max, profile, src.sha256, ep.weight_streaming, OPT_LEVEL, wkey
        )
        path = tdir / f"{stem}.plan"
        meta = store.read_json(path.with_suffix(".json")) if path.is_file() else None
        jobs.append((ep, src, profile, wkey, path, meta))
    todo = sorted((j[0] for j in jobs if j[5] is None), key=lambda ep: -ep.build_bytes)
    if todo:  # before building anything: the builder needs more than the engines will at run time
        free = cuda.free_bytes()
        for ep in todo:
            check_builder_memory(ep, free, plan.build_note)
    files: dict[str, Path] = {}
    measured: dict[str, Measured] = {}
    raw: dict[str, dict[str, int]] = {}
    for ep, src, profile, wkey, path, meta in jobs:
        if meta is None:
            echo(
                f"{ep.component}: building {path.name} (workspace {plan.workspace >> 20} MiB"
                f"{', weight streaming' if ep.weight_streaming else ''})"
            )
            t0 = time.perf_counter()
            data = build_engine(
                src.path, ep, profile, plan.workspace, store.target_dir(manifest.bundle, target) / TIMING_CACHE, echo
            )
            meta = {
                "component": ep.component,
                "target": target.to_json(),
                "onnx_sha256": src.sha256,
                "weights_key": wkey,
                "dims_min": ep.dims_min,
                "dims_opt": ep.dims_opt,
                "dims_max": ep.dims_max,
                "profile": {k: [list(s) for s in v] for k, v in profile.items()},
                "weight_streaming": ep.weight_streaming,
                "opt_level": OPT_LEVEL,
                "workspace": plan.workspace,
                "build_seconds": round(time.perf_counter() - t0, 1),
                **measure(data, ep),
            }
            store.write_engine(path, data, meta)
            del data
            echo(
                f"{ep.component}: {path.stat().st_size >> 20} MiB engine, device memory {int(meta['device_memory']) >> 20} MiB "
                f"(planned {ep.activation_bytes >> 20} MiB) in {meta['build_seconds']} s"
            )
        else:
            echo(f"{ep.component}: reusing {path.name}")
            if ep.weight_streaming and meta.get("weight_streaming_budget") != stream_budget_for(
                ep, int(meta.get("streamable_weights", 0))
            ):
                meta = {**meta, **measure(path.read_bytes(), ep)}  # this plan keeps another share of it on the card
                write_json_atomic(path.with_suffix(".json"), meta)
        files[ep.component] = path
        measured[ep.component] = store.measured_of(meta)
        keys = ("device_memory", "streamable_weights", "weights_on_card", "weight_streaming_budget")
        raw[ep.component] = {k: int(meta[k]) for k in keys if k in meta} | {"engine_bytes": path.stat().st_size}
    return files, measured, raw


def build(
    manifest: Manifest, plan: Plan, target: store.Target, echo: Echo = print, facts: Facts | None = None
) -> Built:
    """Build (or reuse) the plan's engines for `target` and write plan.json. When what TensorRT measured does not fit
    the budget: with `facts` (what the plan was made from), re-plan with the measurements and build that, at most
    MAX_PLANS plans in all; without, or when nothing fits, a T2VError naming the stage and what would fit."""
    import_tensorrt()
    problem = ""
    for attempt in range(1, MAX_PLANS + 1):
        files, measured, raw = _build_engines(manifest, plan, target, echo)
        real = plan.with_measured(measured)
        over = real.overrun()
        if over is None:
            store.write_plan(
                manifest.bundle,
                target,
                {
                    "target": target.to_json(),
                    "plan": real.to_json(),
                    "measured": raw,
                    "engine_files": {c: p.name for c, p in files.items()},
                },
            )
            return Built(real, files)
        problem = f"the engines as built do not fit the card: as TensorRT measured them, {over}"
        if facts is None or attempt == MAX_PLANS:
            break
        new = _replan(facts, plan, manifest, target, problem)
        if _arrangement(new) == _arrangement(plan):
            break  # the planner chose what was just measured not to fit: never loop on it
        echo(f"re-planning ({problem})")
        echo(new.summary())
        plan = new
    raise T2VError(
        f"{problem}; these measurements are kept, so `t2vrt build` plans with them next time"
        + (f" (tried {MAX_PLANS} plans)" if facts is not None else "")
        + ": ask for fewer frames or a smaller size, or free memory on the card"
    )


def _replan(facts: Facts, plan: Plan, manifest: Manifest, target: store.Target, problem: str) -> Plan:
    from t2vrt.engine.facts import make_plan

    sizes = replace(facts.sizes, measured=store.measured_memory(manifest.bundle, target))
    try:
        return make_plan(replace(facts, sizes=sizes), plan.request, plan.vram, plan.free)
    except UsageError as e:
        raise T2VError(f"{problem}; planned again with TensorRT's measurements: {e}") from None


def build_all(
    manifest: Manifest, plan: Plan, target: store.Target, echo: Echo = print, facts: Facts | None = None
) -> dict[str, Path]:
    """`build`, returning only component -> engine path (plan.json holds the plan as built)."""
    return build(manifest, plan, target, echo, facts).files


def check_buildable(manifest: Manifest) -> None:
    if "fp16" not in manifest.precisions:
        raise UsageError(f"bundle {manifest.bundle} has no fp16 ONNX: re-export with --precision fp16 to build engines")
