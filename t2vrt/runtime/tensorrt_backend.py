"""TensorRT backend: the engines `t2vrt build` made for this GPU, run on one CUDA stream. No torch.

- Refuses engines built for another GPU or TensorRT version (one line, with the rebuild command).
- Follows the plan in the target's plan.json: all engines resident with ONE activation block shared by their
  USER_MANAGED contexts (they run one after another), or load, run and free one engine at a time; weight
  streaming budget for the UNet when planned; the pipeline's guidance batch and VAE chunk come from `hints()`.
- I/O buffers through cuda-python (cudaMalloc/cudaMemcpyAsync), allocated once per engine at its profile's max.
- Static-shape UNet calls are captured into a CUDA graph on the second call and replayed after (the first call
  lets TensorRT do its deferred setup outside the capture).
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from t2vrt.engine import store
from t2vrt.engine.build import tensorrt_missing
from t2vrt.engine.device import check, cudart, detect_gpu
from t2vrt.errors import T2VError, UsageError
from t2vrt.iospec import IOSpec
from t2vrt.manifest import load_manifest
from t2vrt.runtime.backend import Hints

if TYPE_CHECKING:
    import tensorrt as trt


def _rebuild(bundle: Path) -> str:
    return f"`t2vrt build {bundle}`"


def tensorrt_available(bundle: str | Path) -> str | None:
    """None when TensorRT can run this bundle here; else the one-line reason (with the command that fixes it)."""
    bundle = Path(bundle)
    missing = tensorrt_missing()
    if missing:
        return missing
    trt_mod = importlib.import_module("tensorrt")
    if cudart() is None:
        return "cuda-python is not installed (pip install 't2vrt[gpu]'): TensorRT needs it for device buffers"
    gpu = detect_gpu()
    if gpu is None:
        return "no NVIDIA GPU found: TensorRT needs one"
    target = store.Target(gpu.name, gpu.compute_capability, str(trt_mod.__version__))
    return _engines_problem(bundle, target)


def _engines_problem(bundle: Path, target: store.Target) -> str | None:
    here = f"{target.gpu} (sm {target.compute_capability}) with TensorRT {target.tensorrt}"
    rows = [r for r in store.bundle_engine_summary(bundle) if r["stale"] is None]
    mine = [r for r in rows if r["target"] == target.dirname]
    if not mine:
        others = sorted({f"{r['gpu']} (sm {r['compute_capability']}) with TensorRT {r['tensorrt']}" for r in rows})
        built = f"; its engines were built for {', '.join(others)}" if others else ""
        return f"no TensorRT engines in {bundle} for {here}{built}: build them with {_rebuild(bundle)}"
    plan = store.read_plan(bundle, target)
    files = (plan or {}).get("engine_files", {})
    missing = [c for c in ("text_encoder", "unet", "vae_decoder") if c not in files]
    if missing or not all((store.target_dir(bundle, target) / f).is_file() for f in files.values()):
        return f"the TensorRT engines in {bundle} for {here} are incomplete ({missing or 'files missing'}): {_rebuild(bundle)}"
    return None


class _Cuda:
    """The few CUDA runtime calls the backend needs, through cuda-python."""

    def __init__(self) -> None:
        self.rt = cudart()
        if self.rt is None:
            raise T2VError("cuda-python is not installed (pip install 't2vrt[gpu]'): TensorRT needs it for device buffers")
        self.stream = check(self.rt.cudaStreamCreate())

    def malloc(self, nbytes: int) -> int:
        return int(check(self.rt.cudaMalloc(max(nbytes, 1))))

    def free(self, ptr: int) -> None:
        self.rt.cudaFree(ptr)

    def to_device(self, dst: int, arr: np.ndarray) -> None:
        kind = self.rt.cudaMemcpyKind.cudaMemcpyHostToDevice
        check(self.rt.cudaMemcpyAsync(dst, arr.ctypes.data, arr.nbytes, kind, self.stream))

    def to_host(self, arr: np.ndarray, src: int) -> None:
        kind = self.rt.cudaMemcpyKind.cudaMemcpyDeviceToHost
        check(self.rt.cudaMemcpyAsync(arr.ctypes.data, src, arr.nbytes, kind, self.stream))

    def sync(self) -> None:
        check(self.rt.cudaStreamSynchronize(self.stream))

    def capture(self, fn: Any) -> Any:
        """Record fn()'s work on the stream into an instantiated CUDA graph."""
        mode = self.rt.cudaStreamCaptureMode.cudaStreamCaptureModeGlobal
        check(self.rt.cudaStreamBeginCapture(self.stream, mode))
        try:
            fn()
        finally:
            graph = check(self.rt.cudaStreamEndCapture(self.stream))
        exe = check(self.rt.cudaGraphInstantiate(graph, 0))
        self.rt.cudaGraphDestroy(graph)
        return exe

    def launch(self, exe: Any) -> None:
        check(self.rt.cudaGraphLaunch(exe, self.stream))

    def close(self) -> None:
        self.rt.cudaStreamDestroy(self.stream)


def _numpy_dtype(dt: trt.DataType) -> np.dtype[Any]:
    import tensorrt as trt

    table = {trt.DataType.FLOAT: np.float32, trt.DataType.HALF: np.float16, trt.DataType.INT64: np.int64,
             trt.DataType.INT32: np.int32, trt.DataType.BOOL: np.bool_, trt.DataType.INT8: np.int8}  # fmt: skip
    if dt not in table:
        raise T2VError(f"engine I/O tensor of TensorRT type {dt} has no numpy equivalent here")
    return np.dtype(table[dt])


class TensorRTRunner:
    """One engine: its context, its I/O buffers (at the profile's max), the checks on every call."""

    def __init__(self, backend: TensorRTBackend, component: str, engine: trt.ICudaEngine, io: IOSpec, meta: dict[str, Any]):
        import tensorrt as trt

        self.component, self.io, self.engine, self._b = component, io, engine, backend
        self.dims_min: dict[str, int] = dict(meta["dims_min"])
        self.dims_max: dict[str, int] = dict(meta["dims_max"])
        self.static = self.dims_min == self.dims_max
        self.context = engine.create_execution_context(trt.ExecutionContextAllocationStrategy.USER_MANAGED)
        if self.context is None:
            raise T2VError(f"TensorRT could not create an execution context for {component} (out of GPU memory?)")
        self.dtypes = {t.name: _numpy_dtype(engine.get_tensor_dtype(t.name)) for t in io.tensors()}
        self.buffers: dict[str, int] = {}
        try:
            for t in io.tensors():
                nbytes = int(np.prod(t.resolve(self.dims_max))) * self.dtypes[t.name].itemsize
                self.buffers[t.name] = backend.cuda.malloc(nbytes)
                self.context.set_tensor_address(t.name, self.buffers[t.name])
        except BaseException:  # out of memory part-way: give back what was taken
            for ptr in self.buffers.values():
                backend.cuda.free(ptr)
            raise
        self._graph: Any = None
        self._calls = 0

    def _check(self, dims: dict[str, int]) -> None:
        for sym, n in dims.items():
            lo, hi = self.dims_min.get(sym, n), self.dims_max.get(sym, n)
            if not lo <= n <= hi:
                raise UsageError(
                    f"the {self.component} engine was built for {sym} in [{lo}, {hi}], got {n}: rebuild for these "
                    f"shapes with `t2vrt build {self._b.bundle} --frames F --height H --width W` (or --dynamic)"
                )

    def run(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        dims = self.io.bind(inputs)
        pad = 0
        if "batch" in dims and dims["batch"] < self.dims_min.get("batch", 0):  # e.g. guidance 1.0 on a batch-2 UNet
            pad, dims = self.dims_min["batch"] - dims["batch"], {**dims, "batch": self.dims_min["batch"]}
            inputs = {k: np.concatenate([v] + [v[-1:]] * pad) for k, v in inputs.items()}
        self._check(dims)
        for t in self.io.inputs:
            arr = np.ascontiguousarray(inputs[t.name], dtype=self.dtypes[t.name])
            self.context.set_input_shape(t.name, arr.shape)
            self._b.cuda.to_device(self.buffers[t.name], arr)
        self._b.bind_device_memory(self)
        self._execute()
        shapes = self.io.shapes(dims)
        out = {t.name: np.empty(shapes[t.name], self.dtypes[t.name]) for t in self.io.outputs}
        for name, arr in out.items():
            self._b.cuda.to_host(arr, self.buffers[name])
        self._b.cuda.sync()
        result = {k: v.astype(np.float32, copy=False) for k, v in out.items()}
        return {k: v[: v.shape[0] - pad] for k, v in result.items()} if pad else result

    def _execute(self) -> None:
        self._calls += 1
        capture = self._b.cuda_graphs and self.static and self.component == "unet"
        if self._graph is not None:
            self._b.cuda.launch(self._graph)
        elif capture and self._calls >= 2:
            self._graph = self._b.cuda.capture(self._enqueue)
            self._b.cuda.launch(self._graph)
        else:
            self._enqueue()

    def _enqueue(self) -> None:
        if not self.context.execute_async_v3(int(self._b.cuda.stream)):
            raise T2VError(f"TensorRT failed to run the {self.component} engine")

    def drop_graph(self) -> None:
        if self._graph is not None:
            self._b.cuda.rt.cudaGraphExecDestroy(self._graph)
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
        reason = tensorrt_available(self.bundle)
        if reason:
            raise T2VError(reason)
        gpu = detect_gpu()
        assert gpu is not None  # tensorrt_available checked
        self.target = store.Target(gpu.name, gpu.compute_capability, str(trt.__version__))
        self.manifest = load_manifest(self.bundle)
        record = store.read_plan(self.bundle, self.target) or {}
        self.plan: dict[str, Any] = record["plan"]
        self.files: dict[str, str] = record["engine_files"]
        self.cuda_graphs = cuda_graphs
        self.cuda = _Cuda()
        self.logger = trt.Logger(trt.Logger.WARNING)
        self.runtime = trt.Runtime(self.logger)
        self.resident = self.plan["residency"] == "resident"
        self.runners: dict[str, TensorRTRunner] = {}
        self._block, self._block_size = 0, 0  # the shared activation block
        measured = record.get("measured", {})
        # resident: size the block once for the largest engine, so it never moves under a captured CUDA graph
        self._want = max((int(v.get("device_memory", 0)) for v in measured.values()), default=0) if self.resident else 0
        self._bound: dict[str, int] = {}
        self._closed = False

    def hints(self) -> Hints:
        notes = (f"TensorRT engines for {self.target.gpu}: {self.plan['residency']}",)
        return Hints(guidance_batch=int(self.plan["guidance_batch"]), vae_chunk=int(self.plan["vae_chunk"]), notes=notes)

    def open(self, component: str) -> TensorRTRunner:
        if component in self.runners:
            return self.runners[component]
        tdir = store.target_dir(self.bundle, self.target)
        path = tdir / self.files[component]
        meta = store.read_json(path.with_suffix(".json"))
        if meta is None or meta.get("target") != self.target.to_json():
            raise T2VError(f"{path} was not built for {self.target.gpu} with TensorRT {self.target.tensorrt}: {_rebuild(self.bundle)}")
        engine = self.runtime.deserialize_cuda_engine(path.read_bytes())
        if engine is None:
            raise T2VError(f"TensorRT could not load {path} (built by another TensorRT version?): {_rebuild(self.bundle)}")
        planned = next(e for e in self.plan["engines"] if e["component"] == component)
        if meta.get("weight_streaming"):
            engine.weight_streaming_budget_v2 = int(planned["resident_weight_bytes"])
        runner = TensorRTRunner(self, component, engine, self.manifest.components[component].io, meta)
        self.runners[component] = runner
        return runner

    def bind_device_memory(self, runner: TensorRTRunner) -> None:
        """Give the runner's context the shared activation block, growing it if this engine needs more."""
        need = max(int(runner.context.update_device_memory_size_for_shapes()), self._want)
        if need > self._block_size:
            if self._block:
                self.cuda.sync()
                self.cuda.free(self._block)
                for r in self.runners.values():  # graphs captured with the old block's addresses are invalid now
                    r.drop_graph()
            self._block, self._block_size = self.cuda.malloc(need), need
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
