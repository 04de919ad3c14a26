"""A fake `cuda.bindings.runtime` (+ `cuda.bindings.utils`) that fails the way the real one does.

Modelled on cuda-bindings 12.9 / 13.x as installed and called: every call returns `(cudaError_t, *values)` with
None values on error; handles are objects (`getPtr()`, `get_cuda_native_handle`), not ints; `cudaMemGetInfo`'s
free memory already excludes this process's context (made by the first call that needs one); `cudaMalloc` fails
with cudaErrorMemoryAllocation past the card's memory; with no driver or an old one `cudaGetDeviceCount` returns
cudaErrorInsufficientDriver (35), with no device cudaErrorNoDevice (100); stream capture refuses synchronous work
(cudaErrorStreamCaptureUnsupported, invalidating the capture, so EndCapture returns cudaErrorStreamCaptureInvalidated)
and can be told to fail at instantiate. Device memory is real host memory, so copies and kernels move real bytes.
"""

from __future__ import annotations

import ctypes
import enum
import sys
import types
import warnings
from collections import Counter
from collections.abc import Callable
from typing import Any

import numpy as np

GiB, MiB = 1 << 30, 1 << 20


class cudaError_t(enum.IntEnum):  # the values of CUDA 12/13's cudaError_t
    cudaSuccess = 0
    cudaErrorInvalidValue = 1
    cudaErrorMemoryAllocation = 2
    cudaErrorInsufficientDriver = 35
    cudaErrorNoDevice = 100
    cudaErrorInvalidResourceHandle = 400
    cudaErrorStreamCaptureUnsupported = 900
    cudaErrorStreamCaptureInvalidated = 901


OK = cudaError_t.cudaSuccess


class cudaMemcpyKind(enum.IntEnum):
    cudaMemcpyHostToDevice = 1
    cudaMemcpyDeviceToHost = 2


class cudaStreamCaptureMode(enum.IntEnum):
    cudaStreamCaptureModeGlobal = 0
    cudaStreamCaptureModeThreadLocal = 1
    cudaStreamCaptureModeRelaxed = 2


class _Handle:
    """cudaStream_t / cudaEvent_t / cudaGraph_t / cudaGraphExec_t: an opaque object with getPtr()."""

    def __init__(self, fake: FakeCudaRuntime, ptr: int) -> None:
        self._fake, self._ptr = fake, ptr

    def getPtr(self) -> int:
        return self._ptr

    def __int__(self) -> int:  # works in 12.9 and 13.x, deprecated in 13: count it so a test can forbid it
        self._fake.calls["int(handle)"] += 1
        warnings.warn("int(cuda handle) is deprecated: use get_cuda_native_handle", DeprecationWarning, stacklevel=2)
        return self._ptr


class FakeCudaRuntime(types.ModuleType):
    cudaError_t = cudaError_t
    cudaMemcpyKind = cudaMemcpyKind
    cudaStreamCaptureMode = cudaStreamCaptureMode

    def __init__(
        self,
        name: str = "NVIDIA Fake RTX 9000",
        cc: tuple[int, int] = (8, 9),
        total: int = 24 * GiB,
        driver: str = "ok",
        devices: int = 1,
        runtime_version: int = 13000,
        context_bytes: int = 300 * MiB,
        bus_id: str = "0000:41:00.0",
    ) -> None:
        super().__init__("cuda.bindings.runtime")
        self.name, self.cc, self.total, self.driver, self.devices = name, cc, total, driver, devices
        self.runtime_version, self.context_bytes, self.bus_id = runtime_version, context_bytes, bus_id
        self.others_used = 0  # bytes other processes hold on the card
        self.context = False
        self.mem: dict[int, np.ndarray] = {}  # device pointer -> its bytes
        self.owner: dict[int, str] = {}  # device pointer -> what it is (for messages)
        self.calls: Counter[str] = Counter()
        self.streams: dict[int, _Handle] = {}
        self.capturing: dict[int, dict[str, Any]] = {}  # stream -> {"work": [...], "invalid": bool}
        self.graphs: dict[int, list[Callable[[], None]]] = {}
        self.execs: dict[int, list[Callable[[], None]]] = {}
        self.events: dict[int, float] = {}
        self.fail_instantiate: cudaError_t | None = None
        self.replaying = False
        self.clock_ms = 0.0
        self._next = 0x7F00_0000_0000

    # -- errors and versions
    def cudaGetErrorName(self, err: Any) -> tuple[cudaError_t, bytes]:
        return OK, cudaError_t(int(err)).name.encode()

    def cudaGetErrorString(self, err: Any) -> tuple[cudaError_t, bytes]:
        return OK, cudaError_t(int(err)).name.encode()

    def cudaRuntimeGetVersion(self) -> tuple[cudaError_t, int]:
        return OK, self.runtime_version

    def cudaDriverGetVersion(self) -> tuple[cudaError_t, int]:
        return OK, {"ok": self.runtime_version, "old": 12040, "none": 0}[self.driver]

    def _start(self) -> cudaError_t:
        """What every call that needs the driver does first: fail as CUDA would, or make the primary context."""
        if self.driver != "ok":
            return cudaError_t.cudaErrorInsufficientDriver
        if self.devices < 1:
            return cudaError_t.cudaErrorNoDevice
        self.context = True
        return OK

    def _unsafe_during_capture(self, what: str) -> bool:
        """Global-mode capture makes potentially unsafe calls (cudaMalloc, synchronisation) fail and invalidates it."""
        bad = [c for c in self.capturing.values() if c["mode"] == cudaStreamCaptureMode.cudaStreamCaptureModeGlobal]
        for c in bad:
            c["invalid"] = True
            self.calls[f"unsafe {what} during capture"] += 1
        return bool(bad)

    # -- device
    def cudaGetDeviceCount(self) -> tuple[cudaError_t, int | None]:
        err = self._start()
        return (err, None) if err else (OK, self.devices)

    def cudaSetDevice(self, i: int) -> tuple[cudaError_t]:
        err = self._start()
        return (err,) if err else ((OK,) if 0 <= i < self.devices else (cudaError_t.cudaErrorInvalidValue,))

    def cudaGetDeviceProperties(self, i: int) -> tuple[cudaError_t, Any]:
        err = self._start()
        if err:
            return err, None
        return OK, types.SimpleNamespace(
            name=self.name.encode() + b"\0" * 8, major=self.cc[0], minor=self.cc[1], totalGlobalMem=self.total
        )

    def cudaDeviceGetPCIBusId(self, length: int, device: int) -> tuple[cudaError_t, bytes | None]:
        err = self._start()
        return (err, None) if err else (OK, self.bus_id.encode() + b"\0")

    def used(self) -> int:
        return sum(a.nbytes for a in self.mem.values()) + (self.context_bytes if self.context else 0) + self.others_used

    def cudaMemGetInfo(self) -> tuple[cudaError_t, int | None, int | None]:
        err = self._start()
        return (err, None, None) if err else (OK, self.total - self.used(), self.total)

    # -- memory
    def cudaMalloc(self, n: int, what: str = "") -> tuple[cudaError_t, int | None]:
        err = self._start()
        if err:
            return err, None
        if self._unsafe_during_capture("cudaMalloc"):
            return cudaError_t.cudaErrorStreamCaptureUnsupported, None
        if n > self.total - self.used():
            self.calls["malloc_failed"] += 1
            return cudaError_t.cudaErrorMemoryAllocation, None
        self.calls["malloc"] += 1
        ptr, self._next = self._next, self._next + ((n + 511) // 256) * 256  # never reused: stale pointers show
        self.mem[ptr] = np.zeros(n, np.uint8)
        self.owner[ptr] = what
        return OK, ptr

    def cudaFree(self, ptr: int) -> tuple[cudaError_t]:
        self.calls["free"] += 1
        if self.mem.pop(int(ptr), None) is None:
            self.calls["bad_free"] += 1
            return (cudaError_t.cudaErrorInvalidValue,)
        return (OK,)

    def cudaMemcpyAsync(self, dst: int, src: int, n: int, kind: Any, stream: Any) -> tuple[cudaError_t]:
        s = self._stream(stream)
        assert s in self.streams, "copy on a dead stream"
        if s in self.capturing:  # pageable host memory cannot be captured
            self.capturing[s]["invalid"] = True
            return (cudaError_t.cudaErrorStreamCaptureUnsupported,)
        host_to_dev = kind == cudaMemcpyKind.cudaMemcpyHostToDevice
        dev = self.mem.get(dst if host_to_dev else src)
        if dev is None or n > dev.nbytes:
            return (cudaError_t.cudaErrorInvalidValue,)
        ctypes.memmove(dev.ctypes.data, src, n) if host_to_dev else ctypes.memmove(dst, dev.ctypes.data, n)
        self.calls["h2d" if host_to_dev else "d2h"] += 1
        self.calls["h2d_bytes" if host_to_dev else "d2h_bytes"] += n
        return (OK,)

    # -- streams and graphs
    def _stream(self, stream: Any) -> int:
        return stream.getPtr() if isinstance(stream, _Handle) else int(stream)

    def _handle(self) -> _Handle:
        self._next += 256
        return _Handle(self, self._next)

    def cudaStreamCreate(self) -> tuple[cudaError_t, _Handle | None]:
        err = self._start()
        if err:
            return err, None
        h = self._handle()
        self.streams[h.getPtr()] = h
        return OK, h

    def cudaStreamDestroy(self, stream: Any) -> tuple[cudaError_t]:
        return (OK,) if self.streams.pop(self._stream(stream), None) else (cudaError_t.cudaErrorInvalidResourceHandle,)

    def cudaStreamSynchronize(self, stream: Any) -> tuple[cudaError_t]:
        s = self._stream(stream)
        if s not in self.streams:
            return (cudaError_t.cudaErrorInvalidResourceHandle,)
        if s in self.capturing:
            self.capturing[s]["invalid"] = True
            return (cudaError_t.cudaErrorStreamCaptureUnsupported,)
        return (OK,)

    def cudaStreamBeginCapture(self, stream: Any, mode: Any) -> tuple[cudaError_t]:
        s = self._stream(stream)
        if s not in self.streams or s in self.capturing:
            return (cudaError_t.cudaErrorInvalidValue,)
        self.calls["capture"] += 1
        self.capturing[s] = {"work": [], "invalid": False, "mode": cudaStreamCaptureMode(int(mode))}
        return (OK,)

    def cudaStreamEndCapture(self, stream: Any) -> tuple[cudaError_t, _Handle | None]:
        c = self.capturing.pop(self._stream(stream), None)
        if c is None:
            return cudaError_t.cudaErrorInvalidValue, None
        if c["invalid"]:
            return cudaError_t.cudaErrorStreamCaptureInvalidated, None
        h = self._handle()
        self.graphs[h.getPtr()] = c["work"]
        return OK, h

    def cudaGraphInstantiate(self, graph: Any, flags: int) -> tuple[cudaError_t, _Handle | None]:
        if not isinstance(graph, _Handle) or graph.getPtr() not in self.graphs:
            return cudaError_t.cudaErrorInvalidValue, None
        if self.fail_instantiate is not None:
            return self.fail_instantiate, None
        h = self._handle()
        self.execs[h.getPtr()] = list(self.graphs[graph.getPtr()])
        return OK, h

    def cudaGraphDestroy(self, graph: Any) -> tuple[cudaError_t]:
        return (OK,) if self.graphs.pop(graph.getPtr(), None) is not None else (cudaError_t.cudaErrorInvalidValue,)

    def cudaGraphExecDestroy(self, exe: Any) -> tuple[cudaError_t]:
        self.calls["graph_destroy"] += 1
        return (OK,) if self.execs.pop(exe.getPtr(), None) is not None else (cudaError_t.cudaErrorInvalidValue,)

    def cudaGraphLaunch(self, exe: Any, stream: Any) -> tuple[cudaError_t]:
        work = self.execs.get(exe.getPtr())
        if work is None:
            return (cudaError_t.cudaErrorInvalidResourceHandle,)
        self.calls["launch"] += 1
        self.replaying = True
        try:
            for w in work:
                w()
        finally:
            self.replaying = False
        return (OK,)

    # -- events (the benchmark's clock)
    def cudaEventCreate(self) -> tuple[cudaError_t, _Handle | None]:
        err = self._start()
        if err:
            return err, None
        h = self._handle()
        self.events[h.getPtr()] = 0.0
        return OK, h

    def cudaEventRecord(self, event: Any, stream: Any) -> tuple[cudaError_t]:
        self.clock_ms += 1.5
        self.events[event.getPtr()] = self.clock_ms
        return (OK,)

    def cudaEventSynchronize(self, event: Any) -> tuple[cudaError_t]:
        return (OK,) if event.getPtr() in self.events else (cudaError_t.cudaErrorInvalidResourceHandle,)

    def cudaEventElapsedTime(self, a: Any, b: Any) -> tuple[cudaError_t, float]:
        return OK, self.events[b.getPtr()] - self.events[a.getPtr()]

    def cudaEventDestroy(self, event: Any) -> tuple[cudaError_t]:
        self.events.pop(event.getPtr(), None)
        return (OK,)

    # -- what a fake kernel does on a stream
    def enqueue(self, stream: int, work: Callable[[], None]) -> cudaError_t:
        if stream not in self.streams:
            return cudaError_t.cudaErrorInvalidResourceHandle
        if stream in self.capturing:
            self.capturing[stream]["work"].append(work)
        else:
            work()
        return OK


def install(monkeypatch: Any, rt: FakeCudaRuntime) -> None:
    """Put the fake where `importlib.import_module("cuda.bindings.runtime")` finds it (and hide cuda.cudart: gone in 13)."""
    utils = types.ModuleType("cuda.bindings.utils")
    utils.get_cuda_native_handle = lambda h: h.getPtr()  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "cuda.bindings.runtime", rt)
    monkeypatch.setitem(sys.modules, "cuda.bindings.utils", utils)
    monkeypatch.setitem(sys.modules, "cuda.cudart", None)  # import raises ImportError, as on cuda-bindings 13
