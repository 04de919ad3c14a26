"""A fake `tensorrt` module that behaves like TensorRT 10.1-11 where t2vrt touches it, failures included.

Semantics taken from NvInferRuntime.h and python/src/infer/pyCore.cpp (release/10.1 .. 11.1):
- `trt.Runtime(logger)` / `trt.Builder(logger)` with no usable driver: the C++ factory returns null and pybind raises
  TypeError. `deserialize_cuda_engine` returns None on bad bytes or when the weights do not fit on the card.
- An engine's weights live on the device from deserialisation until it is destroyed (non-streamable ones always;
  streamable ones up to the weight-streaming budget). `streamable_weights_size` is a part of the weights only.
- `weight_streaming_budget_v2` counts streamable bytes only; >= streamable_weights_size turns streaming off; the
  property setter drops TensorRT's bool, so a refused budget (no WEIGHT_STREAMING flag, negative, live contexts)
  changes nothing and raises nothing. `device_memory_size_v2` includes the streaming scratch.
- `update_device_memory_size_for_shapes` depends on the input shapes set (0 until all are set);
  `set_device_memory(ptr, size)` with size < device_memory_size_v2 is refused (logged, not raised).
- `set_input_shape` / `set_tensor_address` return False for unknown names or shapes outside the profile.
- `execute_async_v3` returns False without every input shape, every I/O address and (USER_MANAGED) device memory;
  for a streaming engine it is synchronous, so inside a stream capture it invalidates the capture and fails.
- `build_serialized_network` returns an IHostMemory (buffer protocol, `nbytes`, no len(); `bytes()` is a copy,
  counted) or None when the builder runs out of device memory: it holds the weights on the card while it times
  tactics, beside its kernel library, which a Builder keeps on the card while it lives (TensorRT logs "[MemUsageChange]
  Init builder kernel library: ... GPU +180 MiB" and more).
Each engine runs its component's fp32 graph in ONNX Runtime on bytes kept in the fake device memory.
"""

from __future__ import annotations

import enum
import json
import math
import types
import weakref
from pathlib import Path
from typing import Any

import numpy as np

from fakes.cuda_runtime import OK, FakeCudaRuntime, MiB

NULL_FACTORY = "__init__(): incompatible constructor arguments / factory function returned nullptr"


class FakeHostMemory(bytearray):
    """IHostMemory: the buffer protocol and `nbytes`; no len()."""

    copies = 0

    @property
    def nbytes(self) -> int:
        return bytearray.__len__(self)

    def __len__(self) -> int:
        raise TypeError("object of type 'tensorrt.IHostMemory' has no len()")

    def __bytes__(self) -> bytes:
        FakeHostMemory.copies += 1
        return bytes(memoryview(self))


class FakeTensorRT:
    """One fake TensorRT installation bound to a fake CUDA runtime and the ORT sessions its engines run."""

    def __init__(self, cuda: FakeCudaRuntime, sessions: dict[str, Any], version: str = "10.13.0") -> None:
        self.cuda, self.sessions, self.version = cuda, sessions, version
        self.weights: dict[str, int] = {}  # engine weight bytes; default: the ONNX graph + data file sizes
        self.activation: dict[str, int] = {
            "text_encoder": 1 * MiB,
            "unet": 3 * MiB,
            "vae_decoder": 2 * MiB,
            "vae_encoder": 2 * MiB,
        }
        self.streamable_fraction = 0.75  # "may not include all the weights"
        self.scratch = 4 * MiB  # weight-streaming scratch per context
        self.builder_library = 180 * MiB  # device memory a live Builder holds for its kernel library
        self.factory_fails = False
        self.refuse_budget = False
        self.rename: dict[str, tuple[str, str]] = {}  # component -> (io-spec name, the engine's name)
        self.builds: list[dict[str, Any]] = []
        self.engines: weakref.WeakSet[FakeEngine] = weakref.WeakSet()  # the live ones (TensorRT frees a dropped engine)
        self.loads = 0
        self.runs: list[dict[str, Any]] = []
        self.log: list[str] = []
        self.module = self._module()

    def _module(self) -> types.ModuleType:
        fake = self
        m = types.ModuleType("tensorrt")
        m.__version__ = self.version  # type: ignore[attr-defined]
        m.DataType = enum.Enum("DataType", "FLOAT HALF INT64 INT32 BOOL INT8")  # type: ignore[attr-defined]
        m.TensorIOMode = enum.Enum("TensorIOMode", "NONE INPUT OUTPUT")  # type: ignore[attr-defined]
        m.ExecutionContextAllocationStrategy = enum.Enum(  # type: ignore[attr-defined]
            "ExecutionContextAllocationStrategy", "STATIC ON_PROFILE_CHANGE USER_MANAGED"
        )
        m.MemoryPoolType = enum.Enum("MemoryPoolType", "WORKSPACE")  # type: ignore[attr-defined]
        m.BuilderFlag = enum.Enum("BuilderFlag", "WEIGHT_STREAMING")  # type: ignore[attr-defined]
        m.NetworkDefinitionCreationFlag = enum.IntEnum("NetworkDefinitionCreationFlag", {"STRONGLY_TYPED": 1})  # type: ignore[attr-defined]
        m.Dims = lambda shape: tuple(int(d) for d in shape)  # type: ignore[attr-defined]

        class Logger:
            ERROR, WARNING, INFO = 1, 2, 3

            def __init__(self, level: int = 2) -> None:
                self.level = level

        class IProgressMonitor:
            def __init__(self) -> None:
                pass

        def factory() -> None:
            if fake.factory_fails or fake.cuda.cudaGetDeviceCount()[0] != OK:
                raise TypeError(NULL_FACTORY)

        class Runtime:
            def __init__(self, logger: Logger) -> None:
                factory()

            def deserialize_cuda_engine(self, data: Any) -> FakeEngine | None:
                try:
                    desc = json.loads(bytes(memoryview(data)))
                except (ValueError, TypeError):
                    fake.log.append("ERROR: deserialize: invalid serialized engine")
                    return None
                engine = FakeEngine(fake, m, desc)
                if not engine.load_weights():
                    fake.log.append("ERROR: out of device memory loading the engine's weights")
                    return None
                fake.engines.add(engine)
                fake.loads += 1
                return engine

        class Network:
            def __init__(self, flags: int) -> None:
                self.flags, self.path, self.inputs, self.outputs = flags, None, [], []

        class OnnxParser:
            def __init__(self, network: Network, logger: Logger) -> None:
                self.network, self.errors = network, []

            @property
            def num_errors(self) -> int:
                return len(self.errors)

            def get_error(self, i: int) -> str:
                return self.errors[i]

            def parse_from_file(self, path: str) -> bool:
                p = Path(path)
                if not p.is_file():
                    self.errors.append(f"ERROR: {path}: no such file")
                    return False
                comp = p.parent.parent.name
                sess = fake.sessions[comp]
                self.network.path, self.network.component = str(p), comp
                self.network.inputs = [i.name for i in sess.get_inputs()]
                self.network.outputs = [o.name for o in sess.get_outputs()]
                return True

        class Profile:
            def __init__(self) -> None:
                self.shapes: dict[str, tuple[tuple[int, ...], ...]] = {}

            def set_shape(self, name: str, lo: Any, opt: Any, hi: Any) -> None:
                if not all(a <= b <= c for a, b, c in zip(lo, opt, hi)) or not len(lo) == len(opt) == len(hi):
                    raise RuntimeError("Shape provided for min is inconsistent with other shapes.")
                self.shapes[name] = (tuple(lo), tuple(opt), tuple(hi))

        class TimingCache:
            def __init__(self, data: bytes) -> None:
                self.data = bytes(data) or b"{}"

            def serialize(self) -> FakeHostMemory:
                return FakeHostMemory(self.data)

        class Config:
            def __init__(self) -> None:
                self.pools: dict[Any, int] = {}
                self.flags: set[Any] = set()
                self.profiles: list[Profile] = []
                self.builder_optimization_level = 3
                self.progress_monitor: Any = None
                self.cache: TimingCache | None = None

            def set_memory_pool_limit(self, pool: Any, size: int) -> None:
                self.pools[pool] = int(size)

            def create_timing_cache(self, data: bytes) -> TimingCache:
                return TimingCache(data)

            def set_timing_cache(self, cache: TimingCache, ignore_mismatch: bool) -> bool:
                self.cache = cache
                return True

            def set_flag(self, flag: Any) -> None:
                self.flags.add(flag)

            def add_optimization_profile(self, p: Profile) -> int:
                if not p.shapes:
                    return -1
                self.profiles.append(p)
                return len(self.profiles) - 1

        class Builder:
            _library: int | None = None  # stays None when the factory refuses (no half-made builder to free)

            def __init__(self, logger: Logger) -> None:
                factory()
                err, ptr = fake.cuda.cudaMalloc(fake.builder_library, "the builder's kernel library")
                self._library = None if err else ptr

            def __del__(self) -> None:
                if self._library is not None and self._library in fake.cuda.mem:
                    fake.cuda.cudaFree(self._library)

            def create_network(self, flags: int) -> Network:
                return Network(flags)

            def create_builder_config(self) -> Config:
                return Config()

            def create_optimization_profile(self) -> Profile:
                return Profile()

            def build_serialized_network(self, network: Network, config: Config) -> FakeHostMemory | None:
                comp = network.component
                if len(config.profiles) != 1 or set(config.profiles[0].shapes) != set(network.inputs):
                    fake.log.append(f"ERROR: {comp}: the profile must give every input a shape")
                    return None
                workspace = config.pools.get(m.MemoryPoolType.WORKSPACE, 0)
                p = Path(network.path)
                weights = fake.weights.get(comp) or sum(f.stat().st_size for f in p.parent.iterdir() if f.is_file())
                need = weights + fake.activation[comp]
                free = fake.cuda.total - fake.cuda.used()
                if (
                    need > free or self._library is None
                ):  # the builder holds the weights on the card while it times tactics
                    fake.log.append(f"ERROR: {comp}: out of device memory while timing tactics ({need} > {free})")
                    return None
                streaming = m.BuilderFlag.WEIGHT_STREAMING in config.flags
                rename = fake.rename.get(comp)
                names = lambda ns: [rename[1] if rename and n == rename[0] else n for n in ns]  # noqa: E731
                desc = {
                    "component": comp,
                    "inputs": names(network.inputs),
                    "outputs": names(network.outputs),
                    "profile": {n: [list(s) for s in sh] for n, sh in config.profiles[0].shapes.items()},
                    "weights": weights,
                    "activation": fake.activation[comp],
                    "weight_streaming": streaming,
                    "workspace": workspace,
                }
                fake.builds.append(desc)
                if config.progress_monitor is not None:
                    config.progress_monitor.phase_start("Building engine", "", 1)
                    config.progress_monitor.step_complete("Building engine", 0)
                    config.progress_monitor.phase_finish("Building engine")
                return FakeHostMemory(json.dumps(desc).encode())

        for name, value in (
            ("Logger", Logger),
            ("IProgressMonitor", IProgressMonitor),
            ("Runtime", Runtime),
            ("Builder", Builder),
            ("OnnxParser", OnnxParser),
        ):
            setattr(m, name, value)
        return m


class FakeEngine:
    def __init__(self, fake: FakeTensorRT, trt: Any, desc: dict[str, Any]) -> None:
        self.fake, self.trt, self.desc = fake, trt, desc
        self.component: str = desc["component"]
        self.inputs: list[str] = desc["inputs"]
        self.outputs: list[str] = desc["outputs"]
        self.profile = {n: tuple(tuple(s) for s in v) for n, v in desc["profile"].items()}
        self.weights: int = desc["weights"]
        self.streaming_built: bool = desc["weight_streaming"]
        self.streamable_weights_size = int(self.weights * fake.streamable_fraction) if self.streaming_built else 0
        self._budget = self.streamable_weights_size
        self.contexts = 0
        self._weights_ptr: int | None = None
        self.budget_sets: list[int] = []

    # -- weights on the device
    def _resident(self, budget: int) -> int:
        return self.weights - self.streamable_weights_size + min(budget, self.streamable_weights_size)

    def load_weights(self, budget: int | None = None) -> bool:
        err, ptr = self.fake.cuda.cudaMalloc(
            self._resident(self._budget if budget is None else budget), f"{self.component} weights"
        )
        if err != OK:
            return False
        if self._weights_ptr is not None:
            self.fake.cuda.cudaFree(self._weights_ptr)
        self._weights_ptr = ptr
        return True

    def __del__(self) -> None:
        if self._weights_ptr is not None and self._weights_ptr in self.fake.cuda.mem:
            self.fake.cuda.cudaFree(self._weights_ptr)

    @property
    def streaming(self) -> bool:
        return self.streaming_built and self._budget < self.streamable_weights_size

    @property
    def weight_streaming_budget_v2(self) -> int:
        return self._budget

    @weight_streaming_budget_v2.setter
    def weight_streaming_budget_v2(self, value: int) -> None:  # the C++ bool is dropped by the binding
        self.budget_sets.append(int(value))
        if not self.streaming_built or value < 0 or self.contexts or self.fake.refuse_budget:
            self.fake.log.append(f"ERROR: {self.component}: weight streaming budget {value} refused")
            return
        new = min(int(value), self.streamable_weights_size)
        if self.load_weights(new):
            self._budget = new

    @property
    def weight_streaming_scratch_memory_size(self) -> int:
        return self.fake.scratch if self.streaming else 0

    @property
    def device_memory_size_v2(self) -> int:
        return self.desc["activation"] + self.weight_streaming_scratch_memory_size

    # -- tensors
    @property
    def num_io_tensors(self) -> int:
        return len(self.inputs) + len(self.outputs)

    def get_tensor_name(self, i: int) -> str:
        return (self.inputs + self.outputs)[i]

    def get_tensor_mode(self, name: str) -> Any:
        mode = self.trt.TensorIOMode
        return mode.INPUT if name in self.inputs else mode.OUTPUT if name in self.outputs else mode.NONE

    def get_tensor_dtype(self, name: str) -> Any:
        return self.trt.DataType.INT64 if name == "tokens" else self.trt.DataType.FLOAT

    def create_execution_context(self, strategy: Any = None) -> FakeContext:
        assert strategy is self.trt.ExecutionContextAllocationStrategy.USER_MANAGED, "t2vrt shares one block"
        self.contexts += 1
        return FakeContext(self)


class FakeContext:
    def __init__(self, engine: FakeEngine) -> None:
        self.e = engine
        self.addr: dict[str, int] = {}
        self.shapes: dict[str, tuple[int, ...]] = {}
        self.block: tuple[int, int] | None = None
        self.calls: list[str] = []  # the order of the calls that matter

    def __del__(self) -> None:
        self.e.contexts -= 1

    def set_tensor_address(self, name: str, ptr: int) -> bool:
        if name not in self.e.inputs + self.e.outputs:
            return False
        self.addr[name] = int(ptr)
        return True

    def set_input_shape(self, name: str, shape: Any) -> bool:
        prof = self.e.profile.get(name)
        shape = tuple(int(d) for d in shape)
        if (
            prof is None
            or len(shape) != len(prof[0])
            or not all(lo <= n <= hi for lo, n, hi in zip(prof[0], shape, prof[2]))
        ):
            return False
        if self.shapes.get(name) != shape:
            self.calls.append("shape")
        self.shapes[name] = shape
        return True

    def update_device_memory_size_for_shapes(self) -> int:
        self.calls.append("update")
        if set(self.shapes) != set(self.e.inputs):
            return 0  # "0 if error occurred": not every input shape is set
        frac = max(math.prod(s) / math.prod(self.e.profile[n][2]) for n, s in self.shapes.items())
        return int(self.e.desc["activation"] * frac) + self.e.weight_streaming_scratch_memory_size

    def set_device_memory(self, ptr: int, size: int) -> None:
        self.calls.append("memory")
        if size < self.e.device_memory_size_v2:  # "must be at least as large as device_memory_size_v2"
            self.e.fake.log.append(f"ERROR: {self.e.component}: device memory {size} < {self.e.device_memory_size_v2}")
            self.block = None
            return
        self.block = (int(ptr), int(size))

    def execute_async_v3(self, stream_handle: int) -> bool:
        fake, e = self.e.fake, self.e
        if not isinstance(stream_handle, int):
            raise TypeError("execute_async_v3(): incompatible function arguments (stream_handle: int)")
        self.calls.append("enqueue")
        missing = [n for n in e.inputs if n not in self.shapes] + [
            n for n in e.inputs + e.outputs if n not in self.addr
        ]
        if missing or self.block is None:
            fake.log.append(f"ERROR: {e.component}: enqueue without {missing or 'device memory'}")
            return False
        if e.streaming and stream_handle in fake.cuda.capturing:
            fake.cuda.capturing[stream_handle]["invalid"] = True  # synchronous: not capturable
            fake.log.append(f"ERROR: {e.component}: weight streaming enqueue cannot be captured")
            return False
        snap = (dict(self.addr), dict(self.shapes), self.block)  # what a graph captures: the addresses of now
        return fake.cuda.enqueue(stream_handle, lambda: self._compute(*snap)) == OK

    def _compute(self, addr: dict[str, int], shapes: dict[str, tuple[int, ...]], block: tuple[int, int]) -> None:
        fake, e = self.e.fake, self.e
        mem = fake.cuda.mem
        assert block[0] in mem and mem[block[0]].nbytes >= max(block[1], e.device_memory_size_v2), (
            f"{e.component}: ran on freed or too small device memory"
        )
        assert e._weights_ptr in mem, f"{e.component}: its weights are gone"
        sess = fake.sessions[e.component]
        feeds = {}
        for i in sess.get_inputs():
            dt = np.int64 if i.name == "tokens" else np.float32
            n = int(np.prod(shapes[i.name])) * np.dtype(dt).itemsize
            assert addr[i.name] in mem and mem[addr[i.name]].nbytes >= n, f"{i.name}: freed or short input buffer"
            feeds[i.name] = mem[addr[i.name]][:n].view(dt).reshape(shapes[i.name]).copy()
        outs = sess.run(None, feeds)
        names = [o.name for o in sess.get_outputs()]
        for name, arr in zip(names, outs):
            name = (
                fake.rename.get(e.component, (None, name))[1]
                if fake.rename.get(e.component, ("",))[0] == name
                else name
            )
            dev = mem[addr[name]]
            assert arr.nbytes <= dev.nbytes
            dev[: arr.nbytes] = np.ascontiguousarray(arr, np.float32).view(np.uint8).reshape(-1)
        fake.runs.append(
            {
                "component": e.component,
                "shapes": {k: v.shape for k, v in feeds.items()},
                "graph": fake.cuda.replaying,
                "live": len(mem),
            }
        )
