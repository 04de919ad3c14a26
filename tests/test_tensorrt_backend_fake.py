"""The TensorRT backend's own logic on a CPU: a fake `tensorrt` and a fake cuda-python runtime, with each fake
engine running the same component through ONNX Runtime (fp32) on bytes kept in a fake device memory.

What is real: engine lookup through store + plan.json (written by build_all itself, only the TensorRT build and its
measurement faked), target checks, per-call shape checks, batch padding, the host<->device copies, the shared
activation block, resident vs load-run-free release, CUDA graph capture and replay, hints(), close(). The fakes are
strict where the GPU would be: copies must fit their allocation, an engine refuses shapes outside its profile or a
run without (big enough, still allocated) device memory, and a replayed graph uses the addresses it captured.
"""

from __future__ import annotations

import ctypes
import dataclasses
import enum
import json
import shutil
import sys
import types
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from t2vrt.engine import build, store
from t2vrt.engine.facts import bundle_facts, make_plan
from t2vrt.engine.planner import GiB, MiB, Plan, Request
from t2vrt.errors import T2VError, UsageError
from t2vrt.manifest import load_manifest
from t2vrt.runtime.onnxruntime_backend import OnnxRuntimeBackend, make_session
from t2vrt.runtime.pipeline import Pipeline
from t2vrt.runtime.tokenizer import Tokenizer

TRT_VERSION = "10.13.0"
GPU_NAME, GPU_CC = "NVIDIA Fake RTX 9000", (8, 9)
HERE = store.Target(GPU_NAME, "8.9", TRT_VERSION)
OTHER = store.Target("NVIDIA A100-SXM4-80GB", "8.0", TRT_VERSION)
PROMPT = "a tiny green monster and a big flying UFO"
REQ = Request(frames=3, height=64, width=64)
STEPS = 3


class FakeCudart:
    """cuda.bindings.runtime as `t2vrt.engine.device.cudart()` returns it: every call gives (err, *values)."""

    class cudaMemcpyKind(enum.IntEnum):
        cudaMemcpyHostToDevice = 1
        cudaMemcpyDeviceToHost = 2

    class cudaStreamCaptureMode(enum.IntEnum):
        cudaStreamCaptureModeGlobal = 0

    def __init__(self) -> None:
        self.mem: dict[int, np.ndarray] = {}  # device pointer -> its bytes
        self.calls: Counter[str] = Counter()
        self.streams: set[int] = set()
        self.capturing: dict[int, list[Any]] = {}
        self.execs: set[int] = set()  # live instantiated graphs
        self.replaying = False
        self._next = 0x7F00_0000_0000

    def cudaGetDeviceCount(self) -> tuple[int, int]:
        return 0, 1

    def cudaGetDeviceProperties(self, i: int) -> tuple[int, Any]:
        return 0, types.SimpleNamespace(name=GPU_NAME.encode() + b"\0" * 8, major=GPU_CC[0], minor=GPU_CC[1])

    def cudaMemGetInfo(self) -> tuple[int, int, int]:
        return 0, 20 * GiB, 24 * GiB

    def cudaMalloc(self, n: int) -> tuple[int, int]:
        self.calls["malloc"] += 1
        ptr, self._next = self._next, self._next + ((n + 511) // 256) * 256  # never reused: stale pointers show
        self.mem[ptr] = np.zeros(n, np.uint8)
        return 0, ptr

    def cudaFree(self, ptr: int) -> tuple[int]:
        self.calls["free"] += 1
        if self.mem.pop(ptr, None) is None:
            self.calls["bad_free"] += 1
            return (1,)  # cudaErrorInvalidValue
        return (0,)

    def cudaMemcpyAsync(self, dst: int, src: int, n: int, kind: Any, stream: int) -> tuple[int]:
        assert stream in self.streams and stream not in self.capturing, "copy on a dead or capturing stream"
        dev = self.mem[dst if kind == self.cudaMemcpyKind.cudaMemcpyHostToDevice else src]
        assert n <= dev.nbytes, f"copy of {n} bytes into/out of a {dev.nbytes}-byte allocation"
        host_to_dev = kind == self.cudaMemcpyKind.cudaMemcpyHostToDevice
        ctypes.memmove(dev.ctypes.data, src, n) if host_to_dev else ctypes.memmove(dst, dev.ctypes.data, n)
        self.calls["h2d" if host_to_dev else "d2h"] += 1
        self.calls["h2d_bytes" if host_to_dev else "d2h_bytes"] += n
        return (0,)

    def cudaStreamCreate(self) -> tuple[int, int]:
        self.streams.add(4242)
        return 0, 4242

    def cudaStreamDestroy(self, stream: int) -> tuple[int]:
        self.streams.discard(stream)
        return (0,)

    def cudaStreamSynchronize(self, stream: int) -> tuple[int]:
        assert stream in self.streams
        return (0,)

    def cudaStreamBeginCapture(self, stream: int, mode: Any) -> tuple[int]:
        self.calls["capture"] += 1
        self.capturing[stream] = []
        return (0,)

    def cudaStreamEndCapture(self, stream: int) -> tuple[int, Any]:
        return 0, self.capturing.pop(stream)

    def cudaGraphInstantiate(self, graph: list[Any], flags: int) -> tuple[int, Any]:
        exe = types.SimpleNamespace(work=list(graph))
        self.execs.add(id(exe))
        return 0, exe

    def cudaGraphDestroy(self, graph: Any) -> tuple[int]:
        return (0,)

    def cudaGraphExecDestroy(self, exe: Any) -> tuple[int]:
        self.calls["graph_destroy"] += 1
        self.execs.discard(id(exe))
        return (0,)

    def cudaGraphLaunch(self, exe: Any, stream: int) -> tuple[int]:
        assert id(exe) in self.execs, "launch of a destroyed graph"
        self.calls["launch"] += 1
        self.replaying = True
        try:
            for work in exe.work:
                work()
        finally:
            self.replaying = False
        return (0,)

    def enqueue(self, stream: int, work: Any) -> None:
        assert stream in self.streams
        if stream in self.capturing:
            self.capturing[stream].append(work)
        else:
            work()


class FakeTensorRT:
    """The parts of `tensorrt` the backend touches; engines are JSON naming their component and profile."""

    def __init__(self, cuda: FakeCudart, bundle_sessions: dict[str, Any]) -> None:
        self.cuda, self.sessions = cuda, bundle_sessions
        self.need: dict[str, int] = {"text_encoder": 1 * MiB, "unet": 3 * MiB, "vae_decoder": 2 * MiB}  # per context
        self.measured: dict[str, int] = dict(self.need)  # what the fake build records in the sidecar
        self.engines: list[Any] = []
        self.runs: list[dict[str, Any]] = []  # one per executed engine call (direct or replayed)
        self.module = self._module()

    def _module(self) -> types.ModuleType:
        fake = self
        m = types.ModuleType("tensorrt")
        m.__version__ = TRT_VERSION  # type: ignore[attr-defined]
        m.Builder = object  # type: ignore[attr-defined]  # present: tensorrt_missing() takes it for TensorRT
        m.DataType = enum.Enum("DataType", "FLOAT HALF INT64 INT32 BOOL INT8")  # type: ignore[attr-defined]
        strategy = enum.Enum("ExecutionContextAllocationStrategy", "STATIC ON_PROFILE_CHANGE USER_MANAGED")
        m.ExecutionContextAllocationStrategy = strategy  # type: ignore[attr-defined]

        class Logger:
            WARNING = 2

            def __init__(self, level: int) -> None:
                self.level = level

        class Runtime:
            def __init__(self, logger: Logger) -> None:
                pass

            def deserialize_cuda_engine(self, data: bytes) -> Any:
                engine = FakeEngine(fake, m, json.loads(data))
                fake.engines.append(engine)
                return engine

        m.Logger, m.Runtime = Logger, Runtime  # type: ignore[attr-defined]
        return m

    def engine_bytes(self, ep: Any) -> bytes:
        return json.dumps({"component": ep.component, "dims_min": ep.dims_min, "dims_max": ep.dims_max}).encode()


class FakeEngine:
    def __init__(self, fake: FakeTensorRT, trt: Any, desc: dict[str, Any]) -> None:
        self.fake, self.trt, self.component = fake, trt, desc["component"]
        self.dims_min, self.dims_max = desc["dims_min"], desc["dims_max"]
        self.weight_streaming_budget_v2: int | None = None
        self.contexts = 0

    def get_tensor_dtype(self, name: str) -> Any:
        return self.trt.DataType.INT64 if name == "tokens" else self.trt.DataType.FLOAT

    def create_execution_context(self, strategy: Any) -> FakeContext:
        assert strategy is self.trt.ExecutionContextAllocationStrategy.USER_MANAGED
        self.contexts += 1
        return FakeContext(self)


class FakeContext:
    def __init__(self, engine: FakeEngine) -> None:
        self.e = engine
        self.addr: dict[str, int] = {}
        self.shapes: dict[str, tuple[int, ...]] = {}
        self.block: tuple[int, int] | None = None
        self.set_memory_calls: list[tuple[int, int]] = []

    def set_tensor_address(self, name: str, ptr: int) -> bool:
        self.addr[name] = ptr
        return True

    def set_input_shape(self, name: str, shape: tuple[int, ...]) -> bool:
        self.shapes[name] = tuple(int(d) for d in shape)
        return True

    def update_device_memory_size_for_shapes(self) -> int:
        return self.e.fake.need[self.e.component]

    def set_device_memory(self, ptr: int, size: int) -> None:
        self.block = (ptr, size)
        self.set_memory_calls.append((ptr, size))

    def execute_async_v3(self, stream: int) -> bool:
        # What a graph captures: the addresses and shapes of now; the bytes are read when it runs.
        snap = (dict(self.addr), dict(self.shapes), self.block)
        self.e.fake.cuda.enqueue(stream, lambda: self._compute(*snap))
        return True

    def _compute(self, addr: dict[str, int], shapes: dict[str, tuple[int, ...]], block: tuple[int, int] | None) -> None:
        fake, e = self.e.fake, self.e
        mem = fake.cuda.mem
        need = fake.need[e.component]
        assert block is not None and block[0] in mem and mem[block[0]].nbytes >= max(block[1], need), (
            f"{e.component}: run without live device memory of {need} bytes (block {block})"
        )
        sess = fake.sessions[e.component]
        feeds = {}
        for i in sess.get_inputs():
            dt = np.int64 if i.name == "tokens" else np.float32
            n = int(np.prod(shapes[i.name])) * np.dtype(dt).itemsize
            feeds[i.name] = mem[addr[i.name]][:n].view(dt).reshape(shapes[i.name]).copy()
        # the engine's own profile: TensorRT refuses shapes outside it
        dims = {"text_encoder": {"text_batch": 0}, "unet": {"batch": 0, "frames": 2},
                "vae_decoder": {"vae_batch": 0}}[e.component]  # fmt: skip
        name = next(iter(feeds))
        for sym, axis in dims.items():
            n = feeds[name].shape[axis]
            assert e.dims_min[sym] <= n <= e.dims_max[sym], f"{e.component}: {sym}={n} outside the engine's profile"
        outs = sess.run(None, feeds)
        for o, arr in zip(sess.get_outputs(), outs):
            dev = mem[addr[o.name]]
            assert arr.nbytes <= dev.nbytes
            dev[: arr.nbytes] = np.ascontiguousarray(arr, np.float32).view(np.uint8).reshape(-1)
        fake.runs.append({"component": e.component, "shapes": {k: v.shape for k, v in feeds.items()},
                          "graph": fake.cuda.replaying, "live": len(mem)})  # fmt: skip


@pytest.fixture(scope="module")
def sessions(tiny_bundle: Path) -> dict[str, Any]:
    m = load_manifest(tiny_bundle)
    return {c: make_session(m.components[c].file("fp32").path) for c in m.components}


@pytest.fixture
def env(tmp_path: Path, tiny_bundle: Path, sessions: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> Any:
    bundle = tmp_path / "tiny"
    shutil.copytree(tiny_bundle, bundle, ignore=shutil.ignore_patterns("engines"))
    cuda = FakeCudart()
    fake = FakeTensorRT(cuda, sessions)
    monkeypatch.setitem(sys.modules, "tensorrt", fake.module)
    monkeypatch.setitem(sys.modules, "cuda.bindings.runtime", cuda)
    # build_all as it is; only the TensorRT build and its measurement are faked
    monkeypatch.setattr(build, "build_engine", lambda onnx, ep, *a: fake.engine_bytes(ep))
    monkeypatch.setattr(build, "measure", lambda data, ep: {"device_memory": fake.measured[ep.component],
                                                            "streamable_weights": 0})  # fmt: skip
    return types.SimpleNamespace(bundle=bundle, cuda=cuda, fake=fake)


def make(bundle: Path, residency: str = "resident", g: int = 2, chunk: int | None = None, stream: bool = False,
         req: Request = REQ) -> Plan:  # fmt: skip
    """The planner's plan for the tiny bundle, with residency / guidance batch / VAE chunk / streaming forced."""
    p = make_plan(bundle_facts(bundle), req, 8 * GiB)
    engines = []
    for e in p.engines:
        if e.component == "unet":
            lo, opt, hi = ({**d, "batch": g} for d in (e.dims_min, e.dims_opt, e.dims_max))
            e = dataclasses.replace(e, dims_min=lo, dims_opt=opt, dims_max=hi,
                                    resident_weight_bytes=e.weight_bytes // 2 if stream else e.weight_bytes)  # fmt: skip
        if e.component == "vae_decoder" and chunk:
            e = dataclasses.replace(e, dims_opt={**e.dims_opt, "vae_batch": chunk}, dims_max={**e.dims_max, "vae_batch": chunk})
        engines.append(e)
    return dataclasses.replace(p, residency=residency, guidance_batch=g, vae_chunk=chunk or p.vae_chunk, engines=tuple(engines))


def build_engines(bundle: Path, plan: Plan, target: store.Target = HERE) -> dict[str, Path]:
    return build.build_all(load_manifest(bundle), plan, target, echo=lambda s: None)


def tokenizer(bundle: Path) -> Tokenizer:
    tok = load_manifest(bundle).tokenizer
    return Tokenizer.from_file(bundle / tok["file"], context_length=int(tok["context_length"]))


def generate(bundle: Path, backend: Any, **kw: Any) -> np.ndarray:
    pipe = Pipeline(load_manifest(bundle), backend, tokenizer(bundle))
    size = dict(num_frames=REQ.frames, height=REQ.height, width=REQ.width, num_inference_steps=STEPS, seed=3)
    return pipe(PROMPT, **size, **kw).frames


def ort_frames(bundle: Path, g: int, chunk: int) -> np.ndarray:
    return generate(bundle, OnnxRuntimeBackend(load_manifest(bundle)), guidance_batch=g, vae_chunk=chunk)


def test_available_names_the_problem(env: Any) -> None:
    from t2vrt.runtime.tensorrt_backend import TensorRTBackend, tensorrt_available

    bundle = env.bundle
    none = tensorrt_available(bundle)
    print("\nno engines:", none)
    assert none and f"no TensorRT engines in {bundle} for {GPU_NAME} (sm 8.9)" in none and f"`t2vrt build {bundle}`" in none
    with pytest.raises(T2VError, match="no TensorRT engines"):
        TensorRTBackend(bundle)
    build_engines(bundle, make(bundle), OTHER)
    other = tensorrt_available(bundle)
    print("another GPU's:", other)
    assert other and "built for NVIDIA A100-SXM4-80GB (sm 8.0) with TensorRT 10.13.0" in other and "\n" not in other
    files = build_engines(bundle, make(bundle))
    assert tensorrt_available(bundle) is None
    files["vae_decoder"].unlink()
    assert "incomplete" in (tensorrt_available(bundle) or "")


def test_static_resident_matches_onnxruntime_with_cuda_graph(env: Any) -> None:
    from t2vrt.runtime.tensorrt_backend import TensorRTBackend

    bundle, cuda, fake = env.bundle, env.cuda, env.fake
    build_engines(bundle, make(bundle))
    backend = TensorRTBackend(bundle)
    h = backend.hints()
    assert (h.guidance_batch, h.vae_chunk) == (2, REQ.frames)
    frames = generate(bundle, backend)
    ref = ort_frames(bundle, 2, REQ.frames)
    diff = np.abs(frames.astype(int) - ref.astype(int))
    print(f"\nTensorRT(fake) vs ONNX Runtime CPU: max |diff| {diff.max()} uint8 levels, mean {diff.mean():.4f}")
    assert frames.shape == ref.shape and diff.max() <= 1
    unet = [r for r in fake.runs if r["component"] == "unet"]
    assert [r["graph"] for r in unet] == [False] + [True] * (STEPS - 1)  # captured on call 2, replayed after
    assert cuda.calls["capture"] == 1 and cuda.calls["launch"] == STEPS - 1
    assert all(r["shapes"]["latents"][0] == 2 for r in unet)  # hints: cond + uncond in one call
    assert [r["shapes"]["latents"][0] for r in fake.runs if r["component"] == "vae_decoder"] == [REQ.frames]
    # resident: everything stays open; one activation block, sized once for the largest engine
    assert set(backend.runners) == {"text_encoder", "unet", "vae_decoder"} and len(fake.engines) == 3
    assert [r["live"] for r in fake.runs] == [2 + 1] + [2 + 4 + 1] * STEPS + [2 + 4 + 2 + 1]
    assert backend._block_size == max(fake.measured.values()) and cuda.calls["graph_destroy"] == 0
    # the second generation reuses engines and the captured graph: every UNet call is a replay
    n = len(fake.runs)
    again = generate(bundle, backend)
    assert np.array_equal(again, frames) and len(fake.engines) == 3
    assert all(r["graph"] for r in fake.runs[n:] if r["component"] == "unet") and cuda.calls["capture"] == 1
    mallocs = cuda.calls["malloc"]
    assert mallocs == 2 + 4 + 2 + 1  # I/O buffers once per engine + one block
    backend.close()
    c = cuda.calls
    print(f"device copies: {c['h2d']} up ({c['h2d_bytes']} B), {c['d2h']} down ({c['d2h_bytes']} B)")
    assert cuda.mem == {} and cuda.calls["free"] == mallocs and cuda.calls["bad_free"] == 0
    assert cuda.execs == set() and cuda.streams == set()
    backend.close()  # again (`with Pipeline` plus an explicit close): a no-op, not a sync on a destroyed stream


def test_load_run_free_obeys_hints_and_frees_each_stage(env: Any) -> None:
    from t2vrt.runtime.tensorrt_backend import TensorRTBackend

    bundle, cuda, fake = env.bundle, env.cuda, env.fake
    plan = make(bundle, residency="sequential", g=1, chunk=2, stream=True)
    build_engines(bundle, plan)
    backend = TensorRTBackend(bundle)
    assert (backend.hints().guidance_batch, backend.hints().vae_chunk) == (1, 2)
    frames = generate(bundle, backend)
    ref = ort_frames(bundle, 1, 2)
    diff = np.abs(frames.astype(int) - ref.astype(int))
    print(f"\nload-run-free, guidance batch 1, VAE chunk 2: max |diff| vs ONNX Runtime {diff.max()} levels")
    assert diff.max() <= 1
    unet = [r for r in fake.runs if r["component"] == "unet"]
    assert len(unet) == 2 * STEPS and all(r["shapes"]["latents"][0] == 1 for r in unet)  # two batch-1 calls a step
    assert [r["shapes"]["latents"][0] for r in fake.runs if r["component"] == "vae_decoder"] == [2, 1]
    # only the running engine's buffers (and its own block) are on the card
    live = {r["component"]: r["live"] for r in fake.runs}
    assert live == {"text_encoder": 2 + 1, "unet": 4 + 1, "vae_decoder": 2 + 1}
    assert backend.runners == {} and cuda.mem == {} and cuda.calls["free"] == cuda.calls["malloc"]
    assert cuda.calls["capture"] == 1 and cuda.calls["launch"] == 2 * STEPS - 1  # graphs work within the stage
    assert cuda.execs == set()  # freeing the UNet dropped its graph
    ws = next(e for e in fake.engines if e.component == "unet")
    assert ws.weight_streaming_budget_v2 == plan.engine("unet").resident_weight_bytes > 0
    generate(bundle, backend)
    assert len(fake.engines) == 6  # loaded again: nothing was kept
    backend.close()
    assert cuda.mem == {} and cuda.calls["bad_free"] == 0 and cuda.streams == set()


def test_block_growth_drops_graphs(env: Any) -> None:
    """An engine needing more than the shared block: the block moves and captured graphs must not replay."""
    from t2vrt.runtime.tensorrt_backend import TensorRTBackend

    bundle, cuda, fake = env.bundle, env.cuda, env.fake
    build_engines(bundle, make(bundle))
    fake.need["vae_decoder"] = 16 * MiB  # more than every sidecar measured
    backend = TensorRTBackend(bundle)
    rng = np.random.default_rng(0)
    unet_in = _unet_inputs(backend, rng, batch=2)
    unet = backend.open("unet")
    first = unet.run(unet_in)["eps"]
    unet.run(unet_in)  # captured
    assert cuda.calls["capture"] == 1 and len(cuda.execs) == 1
    old_block = backend._block
    vae = backend.open("vae_decoder")
    vae.run({"latents": rng.standard_normal((1, 4, 8, 8), np.float32)})
    assert backend._block != old_block and backend._block_size == 16 * MiB and old_block not in cuda.mem
    assert cuda.execs == set() and cuda.calls["graph_destroy"] == 1
    out = unet.run(unet_in)["eps"]  # a stale graph would fail in the fake (its block is gone)
    assert np.array_equal(out, first) and fake.runs[-1]["graph"] is False
    unet.run(unet_in)
    assert cuda.calls["capture"] == 2 and fake.runs[-1]["graph"] is True
    assert unet.context.block == (backend._block, 16 * MiB)
    backend.close()
    assert cuda.mem == {} and cuda.calls["bad_free"] == 0


def _unet_inputs(backend: Any, rng: np.random.Generator, batch: int, frames: int = REQ.frames) -> dict[str, np.ndarray]:
    spec = {t.name: t for t in backend.manifest.components["unet"].io.inputs}
    dims = {"batch": batch, "frames": frames, "latent_height": REQ.height // 8, "latent_width": REQ.width // 8}
    out = {n: rng.standard_normal(t.resolve(dims)).astype(np.float32) for n, t in spec.items()}
    out["timestep"] = np.full((batch,), 500.0, np.float32)
    return out


def test_batch1_on_batch2_engine_and_shapes_outside_the_engine(env: Any, sessions: dict[str, Any]) -> None:
    from t2vrt.runtime.tensorrt_backend import TensorRTBackend

    bundle, cuda, fake = env.bundle, env.cuda, env.fake
    build_engines(bundle, make(bundle))
    backend = TensorRTBackend(bundle, cuda_graphs=False)
    unet = backend.open("unet")
    inputs = _unet_inputs(backend, np.random.default_rng(1), batch=1)
    out = unet.run(inputs)["eps"]
    ref = sessions["unet"].run(None, inputs)[0]
    print(f"\nbatch 1 on a batch-2 engine: max |diff| vs unpadded ORT {np.abs(out - ref).max():.3g}")
    assert out.shape == ref.shape and out.shape[0] == 1 and np.allclose(out, ref, atol=1e-5)
    assert fake.runs[-1]["shapes"]["latents"][0] == 2  # the engine saw the padded batch
    for batch, frames in ((3, REQ.frames), (2, REQ.frames + 1), (1, 1)):
        with pytest.raises(UsageError) as err:
            unet.run(_unet_inputs(backend, np.random.default_rng(2), batch=batch, frames=frames))
        msg = str(err.value)
        assert "the unet engine was built for" in msg and f"`t2vrt build {bundle} --frames F" in msg, msg
    print(msg)
    assert len(fake.runs) == 1 and cuda.calls["capture"] == 0  # refused before anything ran; graphs off
    backend.close()
    assert cuda.mem == {} and cuda.calls["free"] == cuda.calls["malloc"]


def test_dynamic_engine_runs_inside_its_range_without_graphs(env: Any, sessions: dict[str, Any]) -> None:
    from t2vrt.runtime.tensorrt_backend import TensorRTBackend

    bundle, cuda, fake = env.bundle, env.cuda, env.fake
    build_engines(bundle, make(bundle, req=dataclasses.replace(REQ, dynamic=True)))
    backend = TensorRTBackend(bundle)
    unet = backend.open("unet")
    assert not unet.static and unet.dims_min["frames"] == 1 and unet.dims_max["frames"] == REQ.frames
    for frames in (1, 2, REQ.frames, 2):
        inputs = _unet_inputs(backend, np.random.default_rng(frames), batch=2, frames=frames)
        assert np.allclose(unet.run(inputs)["eps"], sessions["unet"].run(None, inputs)[0], atol=1e-5)
    assert cuda.calls["capture"] == 0 and [r["shapes"]["latents"][2] for r in fake.runs] == [1, 2, REQ.frames, 2]
    with pytest.raises(UsageError, match=rf"frames in \[1, {REQ.frames}\], got {REQ.frames + 1}"):
        unet.run(_unet_inputs(backend, np.random.default_rng(0), batch=2, frames=REQ.frames + 1))
    backend.close()
    assert cuda.mem == {}
