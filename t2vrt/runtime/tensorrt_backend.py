"""TensorRT backend: the engines `t2vrt build` made for this GPU, run on one CUDA stream. No torch.

- Refuses engines built for another GPU, card size or TensorRT version (one line, with the rebuild command), and a
  plan that no longer fits the memory free now (another program took part of the card).
- Follows the plan in the target's plan.json: all engines resident with ONE activation block shared by their
  USER_MANAGED contexts (they run one after another), or load, run and free one engine at a time. The block is at
  least every engine's `device_memory_size_v2` (TensorRT requires it; it includes weight-streaming scratch). The
  weight-streaming budget recorded at build is set on load and read back (the binding drops a refusal).
- Per call, trtexec's order: set input shapes (only when they change, checking TensorRT accepts them), then
  `update_device_memory_size_for_shapes`, then bind memory, then enqueue. Every refused shape or address is a one-line
  error naming the engine and tensor; the engine's tensor names are checked against the bundle's io spec at load.
- I/O buffers through the CUDA helper (t2vrt.runtime.cuda), allocated once per engine at its profile's max.
- Static-shape UNet calls are captured into a CUDA graph on the second call and replayed after (the first lets
  TensorRT do its deferred setup outside the capture), except for a weight-streaming engine: its enqueue is
  synchronous and cannot be captured. If capture or instantiation fails, what was made is destroyed, the reason is
  logged once, and that runner runs eagerly for good.
"""

from __future__ import annotations

import importlib
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from t2vrt.engine import store
from t2vrt.engine.build import set_streaming_budget, tensorrt_missing, trt_factory
from t2vrt.errors import T2VError, UsageError
from t2vrt.iospec import IOSpec
from t2vrt.manifest import load_manifest
from t2vrt.runtime import cuda
from t2vrt.runtime.backend import Hints
from t2vrt.safety.paths import confine

if TYPE_CHECKING:
    import tensorrt as trt

log = logging.getLogger(__name__)
MiB = 1 << 20


def _rebuild(bundle: Path) -> str:
    return f"`t2vrt build {bundle}`"


def _this_target(trt_version: str) -> store.Target | str:
    found = cuda.probe()
    if isinstance(found, str):
        return f"no usable NVIDIA GPU for TensorRT: {found}"
    return store.Target(found.name, found.compute_capability, trt_version, found.memory_gib)


def why_tensorrt_unavailable(bundle: str | Path) -> str | None:
    """None when TensorRT can run this bundle here; else the one-line reason (with the command that fixes it)."""
    bundle = Path(bundle)
    missing = tensorrt_missing()
    if missing:
        return missing
    trt_mod = importlib.import_module("tensorrt")
    target = _this_target(str(trt_mod.__version__))
    if isinstance(target, str):
        return target
    return _engines_problem(bundle, target)


def _engines_problem(bundle: Path, target: store.Target) -> str | None:
    here = target.describe()
    rows = [r for r in store.bundle_engine_summary(bundle) if r["stale"] is None]
    mine = [r for r in rows if r["target"] == target.dirname]
    if not mine:
        others = sorted(
            {
                store.Target(r["gpu"], r["compute_capability"], r["tensorrt"], int(r.get("memory_gib") or 0)).describe()
                for r in rows
                if r["gpu"]
            }
        )
        built = f"; its engines were built for {', '.join(others)}" if others else ""
        return f"no TensorRT engines in {bundle} for {here}{built}: build them with {_rebuild(bundle)}"
    plan = store.read_plan(bundle, target)
    files = (plan or {}).get("engine_files", {})
    missing = [c for c in ("text_encoder", "unet", "vae_decoder") if c not in files]
    tdir = store.target_dir(bundle, target)
    if missing or not all(confine(tdir, f, "engine file", str(tdir / "plan.json")).is_file() for f in files.values()):
        return f"the TensorRT engines in {bundle} for {here} are incomplete ({missing or 'files missing'}): {_rebuild(bundle)}"
    return None


def _numpy_dtype(dt: trt.DataType) -> np.dtype[Any]:
    import tensorrt as trt

    table = {
        trt.DataType.FLOAT: np.float32,
        trt.DataType.HALF: np.float16,
        trt.DataType.INT64: np.int64,
        trt.DataType.INT32: np.int32,
        trt.DataType.BOOL: np.bool_,
        trt.DataType.INT8: np.int8,
    }
    if dt not in table:
        raise T2VError(f"engine I/O tensor of TensorRT type {dt} has no numpy equivalent here")
    return np.dtype(table[dt])


class TensorRTRunner:
    """One engine: its context, its I/O buffers (at the profile's max), the checks on every call."""

    def __init__(
        self, backend: TensorRTBackend, component: str, engine: trt.ICudaEngine, io: IOSpec, meta: dict[str, Any]
    ):
        import tensorrt as trt

        self.component, self.io, self.engine, self._b = component, io, engine, backend
        names = {engine.get_tensor_name(i) for i in range(engine.num_io_tensors)}
        want = {t.name for t in io.tensors()}
        if names != want:
            raise T2VError(
                f"the {component} engine's tensors {sorted(names)} do not match the bundle's io spec {sorted(want)}: "
                f"it was built from another export; {_rebuild(backend.bundle)}"
            )
        self.dims_min: dict[str, int] = dict(meta["dims_min"])
        self.dims_max: dict[str, int] = dict(meta["dims_max"])
        self.static = self.dims_min == self.dims_max
        self.streaming = bool(meta.get("weight_streaming"))
        self.context = engine.create_execution_context(trt.ExecutionContextAllocationStrategy.USER_MANAGED)
        if self.context is None:
            raise T2VError(f"TensorRT could not create an execution context for {component} (out of GPU memory?)")
        self.dtypes = {t.name: _numpy_dtype(engine.get_tensor_dtype(t.name)) for t in io.tensors()}
        self.buffers: dict[str, int] = {}
        try:
            for t in io.tensors():
                nbytes = int(np.prod(t.resolve(self.dims_max))) * self.dtypes[t.name].itemsize
                self.buffers[t.name] = backend.cuda.malloc(nbytes, f"{component}.{t.name}")
                if not self.context.set_tensor_address(t.name, self.buffers[t.name]):
                    raise T2VError(f"TensorRT refused the device address of {t.name} for the {component} engine")
        except BaseException:  # out of memory part-way: give back what was taken
            for ptr in self.buffers.values():
                backend.cuda.free(ptr)
            self.buffers.clear()
            raise
        self.need = 0  # update_device_memory_size_for_shapes at the current shapes
        self._shapes: dict[str, tuple[int, ...]] = {}
        self._graph: Any = None
        self._graphs_ok = True
        self._calls = 0

    def _check(self, dims: dict[str, int]) -> None:
        for sym, n in dims.items():
            lo, hi = self.dims_min.get(sym, n), self.dims_max.get(sym, n)
            if not lo <= n <= hi:
                raise UsageError(
                    f"the {self.component} engine was built for {sym} in [{lo}, {hi}], got {n}: rebuild for these "
                    f"shapes with `t2vrt build {self._b.bundle} --frames F --height H --width W` (or --dynamic)"
                )

    def _set_shapes(self, arrays: dict[str, np.ndarray]) -> None:
        """Input shapes, and update_device_memory_size_for_shapes only when one changed (trtexec's order)."""
        changed = False
        for name, arr in arrays.items():
            shape = tuple(int(d) for d in arr.shape)
            if self._shapes.get(name) == shape:
                continue
            if not self.context.set_input_shape(name, shape):
                raise T2VError(f"TensorRT refused shape {shape} for input {name} of the {self.component} engine")
            self._shapes[name] = shape
            changed = True
        if changed:
            self.need = int(self.context.update_device_memory_size_for_shapes())
            if self.need <= 0:
                raise T2VError(
                    f"TensorRT could not size the {self.component} engine's memory for shapes {self._shapes}"
                )
            self.drop_graph()  # a graph replays the shapes it captured

    def run(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        dims = self.io.bind(inputs)
        pad = 0
        if "batch" in dims and dims["batch"] < self.dims_min.get("batch", 0):  # e.g. guidance 1.0 on a batch-2 UNet
            pad, dims = self.dims_min["batch"] - dims["batch"], {**dims, "batch": self.dims_min["batch"]}
            inputs = {k: np.concatenate([v] + [v[-1:]] * pad) for k, v in inputs.items()}
        self._check(dims)
        arrays = {t.name: np.ascontiguousarray(inputs[t.name], dtype=self.dtypes[t.name]) for t in self.io.inputs}
        self._set_shapes(arrays)
        for name, arr in arrays.items():
            self._b.cuda.to_device(self.buffers[name], arr.ctypes.data, arr.nbytes)
        self._b.bind_device_memory(self)
        self._execute()
        shapes = self.io.shapes(dims)
        out = {t.name: np.empty(shapes[t.name], self.dtypes[t.name]) for t in self.io.outputs}
        for name, arr in out.items():
            self._b.cuda.to_host(arr.ctypes.data, self.buffers[name], arr.nbytes)
        self._b.cuda.sync()
        result = {k: v.astype(np.float32, copy=False) for k, v in out.items()}
        return {k: v[: v.shape[0] - pad] for k, v in result.items()} if pad else result

    def _execute(self) -> None:
        self._calls += 1
        capture = (
            self._b.cuda_graphs and self.static and self.component == "unet" and not self.streaming and self._graphs_ok
        )
        if self._graph is not None:
            self._b.cuda.launch(self._graph)
        elif capture and self._calls >= 2:
            try:
                self._graph = self._b.cuda.capture(self._enqueue)
            except T2VError as e:  # CudaError included: capture or instantiate refused
                self._graphs_ok = False
                log.warning(
                    "CUDA graph capture of the %s engine failed (%s): running it without graphs", self.component, e
                )
                self._enqueue()
                return
            self._b.cuda.launch(self._graph)
        else:
            self._enqueue()

    def _enqueue(self) -> None:
        if not self.context.execute_async_v3(self._b.cuda.handle):
            raise T2VError(f"TensorRT failed to run the {self.component} engine (its messages above say why)")

    def drop_graph(self) -> None:
        if self._graph is not None:
            self._b.cuda.destroy_graph(self._graph)
        self._graph, self._calls = None, 0

    def free(self) -> None:
        self.drop_graph()
        for ptr in self.buffers.values():
            self._b.cuda.free(ptr)
        self.buffers.clear()
        del self.context, self.engine


class TensorRTBackend:
    name = "tensorrt"
    precision = "fp16"

    def __init__(self, bundle_dir: str | Path, cuda_graphs: bool = True) -> None:
        import tensorrt as trt

        self.bundle = Path(bundle_dir)
        reason = why_tensorrt_unavailable(self.bundle)
        if reason:
            raise T2VError(reason)
        target = _this_target(str(trt.__version__))
        assert not isinstance(target, str)  # why_tensorrt_unavailable checked
        self.target = target
        self.manifest = load_manifest(self.bundle)
        record = store.read_plan(self.bundle, self.target) or {}
        self.plan: dict[str, Any] = record["plan"]
        self.files: dict[str, str] = record["engine_files"]
        self.measured: dict[str, dict[str, int]] = record.get("measured", {})
        self.resident = self.plan["residency"] == "resident"
        self._check_free_memory()
        self.cuda_graphs = cuda_graphs
        self.logger = trt.Logger(trt.Logger.WARNING)
        self.runtime = trt_factory("runtime", lambda: trt.Runtime(self.logger))
        self.cuda = cuda.Device()
        self.runners: dict[str, TensorRTRunner] = {}
        self._block, self._block_size = 0, 0  # the shared activation block
        # resident: size the block once for the largest engine, so it never moves under a captured CUDA graph
        self._want = (
            max((int(v.get("device_memory", 0)) for v in self.measured.values()), default=0) if self.resident else 0
        )
        self._bound: dict[str, int] = {}
        self._closed = False

    def _check_free_memory(self) -> None:
        """The plan was made for the card's memory at build time: re-check what is free now."""
        m = self.measured
        if not m:
            return
        on_card = {c: int(v.get("weights_on_card", v.get("engine_bytes", 0))) for c, v in m.items()}
        act = {c: int(v.get("device_memory", 0)) for c, v in m.items()}
        if self.resident:
            need = sum(on_card.values()) + max(act.values(), default=0)
        else:
            need = max(on_card[c] + act[c] for c in m)
        free = cuda.free_bytes()
        if need > free:
            raise T2VError(
                f"the TensorRT plan needs {need / (1 << 30):.2f} GiB on the card but only {free / (1 << 30):.2f} GiB is "
                f"free now (other programs are using the GPU): close them, or plan for less with "
                f"`t2vrt build {self.bundle} --vram {max(free >> 20, 1)}MiB`"
            )

    def hints(self) -> Hints:
        notes = (f"TensorRT engines for {self.target.gpu}: {self.plan['residency']}",)
        return Hints(
            guidance_batch=int(self.plan["guidance_batch"]), vae_chunk=int(self.plan["vae_chunk"]), notes=notes
        )

    def open(self, component: str) -> TensorRTRunner:
        if component in self.runners:
            return self.runners[component]
        tdir = store.target_dir(self.bundle, self.target)
        path = confine(tdir, self.files[component], f"{component} engine file", str(tdir / "plan.json"))
        meta = store.read_json(path.with_suffix(".json"))
        if (
            meta is None
            or store.Target.from_json(meta.get("target", {"gpu": "", "compute_capability": "", "tensorrt": ""}))
            != self.target
        ):
            raise T2VError(f"{path} was not built for {self.target.describe()}: {_rebuild(self.bundle)}")
        engine = self.runtime.deserialize_cuda_engine(path.read_bytes())
        if engine is None:
            raise T2VError(
                f"TensorRT could not load {path} (built by another TensorRT version, or no room for its weights: "
                f"{cuda.free_bytes() >> 20} MiB free): {_rebuild(self.bundle)}"
            )
        if meta.get("weight_streaming"):
            set_streaming_budget(engine, int(meta["weight_streaming_budget"]), component)
        runner = TensorRTRunner(self, component, engine, self.manifest.components[component].io, meta)
        self.runners[component] = runner
        return runner

    def bind_device_memory(self, runner: TensorRTRunner) -> None:
        """Give the runner's context the shared activation block, growing it if this engine needs more. TensorRT
        needs at least device_memory_size_v2 (whatever smaller shapes would need)."""
        need = max(runner.need, int(runner.engine.device_memory_size_v2), self._want)
        if need > self._block_size:
            if self._block:
                self.cuda.sync()
                self.cuda.free(self._block)
                for r in self.runners.values():  # graphs captured with the old block's addresses are invalid now
                    r.drop_graph()
            self._block, self._block_size = 0, 0
            self._block, self._block_size = self.cuda.malloc(need, "the shared activation block"), need
            self._bound.clear()
        if self._bound.get(runner.component) != self._block:
            runner.context.set_device_memory(self._block, self._block_size)
            self._bound[runner.component] = self._block

    def release(self, component: str) -> None:
        if self.resident or component not in self.runners:
            return
        self.cuda.sync()
        self.runners.pop(component).free()
        self._bound.pop(component, None)
        if self._block:  # load-run-free: the next stage sizes its own block
            self.cuda.free(self._block)
            self._block, self._block_size = 0, 0
            self._bound.clear()

    def close(self) -> None:
        if self._closed:  # a second close (`with` plus an explicit close) must not touch the destroyed stream
            return
        self._closed = True
        self.cuda.sync()
        for runner in self.runners.values():
            runner.free()
        self.runners.clear()
        if self._block:
            self.cuda.free(self._block)
            self._block, self._block_size = 0, 0
        self.cuda.close()
