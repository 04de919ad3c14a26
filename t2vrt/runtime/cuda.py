"""The one CUDA helper: cuda-python's runtime bindings, for the TensorRT backend, the builder and the benchmarks.

Torch-free. Only `cuda.bindings.runtime` (cuda-bindings 12.9 and 13.x): cuda-bindings 13 removed the old
`cuda.cudart` module, and `int(handle)` is deprecated there in favour of `get_cuda_native_handle`. Every binding
returns `(err, *values)`; `check` turns a non-zero err into a CudaError naming the call and CUDA's own error name.

`probe()` says which card we are on, or exactly why not: no cuda-python, no driver, a driver too old for the CUDA
runtime cuda-python links (CUDA 13 needs R580+), no device. NVML is matched to the CUDA device by PCI bus id (NVML
numbers devices its own way and ignores CUDA_VISIBLE_DEVICES).
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from t2vrt.errors import T2VError

# The oldest driver branch each CUDA major's runtime runs on (minor-version compatibility; NVIDIA's CUDA release notes).
MIN_DRIVER = {12: "R525", 13: "R580"}
CU12_STACK = "pip install 't2vrt[gpu-cu12]'"
CU13_STACK = "pip install 't2vrt[gpu]'"

# cudaError_t values this module names (stable across CUDA 12 and 13).
SUCCESS, INSUFFICIENT_DRIVER, NO_DEVICE = 0, 35, 100


class CudaError(T2VError):
    """A CUDA runtime call failed: `code` is the cudaError_t value, `name` its symbolic name."""

    def __init__(self, message: str, code: int, name: str) -> None:
        super().__init__(message)
        self.code, self.name = code, name


def bindings() -> Any | None:
    """cuda.bindings.runtime, or None where cuda-python (cuda-bindings >= 12.9) is not installed."""
    try:
        return importlib.import_module("cuda.bindings.runtime")
    except ImportError:
        return None


def missing() -> str | None:
    if bindings() is None:
        return f"cuda-python is not installed ({CU13_STACK}, or {CU12_STACK} for a CUDA 12 driver)"
    return None


def native(handle: Any) -> int:
    """The address behind a cuda-python handle (stream, event, graph) as an int, the way cuda-bindings 13 wants it."""
    if isinstance(handle, int):
        return handle
    utils = importlib.import_module("cuda.bindings.utils")
    return int(utils.get_cuda_native_handle(handle))


def error_name(rt: Any, err: Any) -> str:
    try:
        status, name = rt.cudaGetErrorName(err)
        if int(status) == SUCCESS:
            return name.decode() if isinstance(name, bytes) else str(name)
    except Exception:
        pass
    return f"cudaError {int(err)}"


def check(rt: Any, result: Any, what: str) -> Any:
    """Unpack (err, *values): the value (or tuple of values), or CudaError '<what> failed: <cudaErrorName>'."""
    err, *values = result if isinstance(result, tuple) else (result,)
    if int(err) != SUCCESS:
        name = error_name(rt, err)
        raise CudaError(f"{what} failed: {name}", int(err), name)
    if not values:
        return None
    return values[0] if len(values) == 1 else tuple(values)


def _major(version: int) -> int:
    return version // 1000  # CUDA encodes 13.0 as 13000


def _fmt(version: int) -> str:
    return f"{version // 1000}.{version % 1000 // 10}"


def driver_problem(rt: Any, code: int) -> str:
    """One line for cudaErrorInsufficientDriver / cudaErrorNoDevice / anything else from cudaGetDeviceCount."""
    name = error_name(rt, code)
    if code == NO_DEVICE:
        visible = os.environ.get("CUDA_VISIBLE_DEVICES")
        hidden = f" (CUDA_VISIBLE_DEVICES={visible!r})" if visible is not None else ""
        return f"no CUDA device is visible{hidden}: {name}"
    if code != INSUFFICIENT_DRIVER:
        return f"CUDA cannot start: {name}"
    runtime = int(check(rt, rt.cudaRuntimeGetVersion(), "cudaRuntimeGetVersion"))
    try:
        driver = int(check(rt, rt.cudaDriverGetVersion(), "cudaDriverGetVersion"))
    except CudaError:
        driver = 0
    need = MIN_DRIVER.get(_major(runtime), f"one for CUDA {_fmt(runtime)}")
    have = f"the installed driver supports CUDA {_fmt(driver)}" if driver else "no NVIDIA driver is loaded"
    other = (
        f"; or use the CUDA 12 stack: {CU12_STACK}"
        if _major(runtime) >= 13 and (not driver or _major(driver) == 12)
        else ""
    )
    return (
        f"{name}: cuda-python uses the CUDA {_fmt(runtime)} runtime, which needs an NVIDIA driver {need} or newer, "
        f"and {have}: install a newer driver{other}"
    )


@dataclass(frozen=True)
class GpuInfo:
    name: str
    compute_capability: str  # "8.6"
    total_bytes: int
    free_bytes: int  # cudaMemGetInfo: already excludes this process's CUDA context
    pci_bus_id: str = ""  # "0000:01:00.0", what NVML is matched by
    index: int = 0  # CUDA device ordinal (after CUDA_VISIBLE_DEVICES)

    @property
    def memory_gib(self) -> int:
        """The card's size as sold: RTX 3060 8 GB and 12 GB share a name, not this."""
        return max(1, round(self.total_bytes / (1 << 30)))


def probe(index: int = 0) -> GpuInfo | str:
    """This machine's CUDA device `index`, or one line saying exactly why there is none. Never raises."""
    rt = bindings()
    if rt is None:
        return missing() or "cuda-python is not installed"
    try:
        err, count = rt.cudaGetDeviceCount()
        if int(err) != SUCCESS:
            return driver_problem(rt, int(err))
        if count <= index:
            return f"no CUDA device {index}: cuda-python sees {count}"
        check(rt, rt.cudaSetDevice(index), "cudaSetDevice")
        props = check(rt, rt.cudaGetDeviceProperties(index), "cudaGetDeviceProperties")
        free, total = check(rt, rt.cudaMemGetInfo(), "cudaMemGetInfo")
        bus = check(rt, rt.cudaDeviceGetPCIBusId(32, index), "cudaDeviceGetPCIBusId")
    except CudaError as e:
        return str(e)
    except Exception as e:
        return f"cuda-python failed: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
    name = props.name.decode(errors="replace") if isinstance(props.name, bytes) else str(props.name)
    bus_id = bus.decode(errors="replace") if isinstance(bus, bytes) else str(bus)
    return GpuInfo(
        name.strip("\x00 "), f"{props.major}.{props.minor}", int(total), int(free), bus_id.strip("\x00 "), index
    )


def find_gpu(index: int = 0) -> GpuInfo:
    """The device, or T2VError with the reason probe() gives."""
    found = probe(index)
    if isinstance(found, str):
        raise T2VError(f"no usable NVIDIA GPU: {found}")
    return found


def free_bytes() -> int:
    rt = bindings()
    if rt is None:
        raise T2VError(missing() or "cuda-python is not installed")
    free, _ = check(rt, rt.cudaMemGetInfo(), "cudaMemGetInfo")
    return int(free)


def nvml_used_probe(bus_id: str) -> Callable[[], int] | None:
    """A function giving the used bytes of the NVML device at this PCI bus id (whole card, every process), or None."""
    try:
        import pynvml  # type: ignore[import-not-found,unused-ignore]

        pynvml.nvmlInit()
        handle = pynvml.nvmlDeviceGetHandleByPciBusId(bus_id)
    except Exception:
        return None
    return lambda: int(pynvml.nvmlDeviceGetMemoryInfo(handle).used)


class Device:
    """One CUDA stream and the few runtime calls the TensorRT backend makes on it."""

    def __init__(self) -> None:
        rt = bindings()
        if rt is None:
            raise T2VError(missing() or "cuda-python is not installed")
        self.rt = rt
        self.stream = check(rt, rt.cudaStreamCreate(), "cudaStreamCreate")
        self.handle = native(self.stream)  # what TensorRT's execute_async_v3 takes

    def malloc(self, nbytes: int, what: str) -> int:
        try:
            return native(
                check(self.rt, self.rt.cudaMalloc(max(nbytes, 1)), f"cudaMalloc of {nbytes >> 20} MiB for {what}")
            )
        except CudaError as e:
            free = self.rt.cudaMemGetInfo()
            left = f" ({int(free[1]) >> 20} MiB free)" if int(free[0]) == SUCCESS else ""
            raise CudaError(f"{e}{left}", e.code, e.name) from None

    def free(self, ptr: int) -> None:
        check(self.rt, self.rt.cudaFree(ptr), "cudaFree")

    def to_device(self, dst: int, ptr: int, nbytes: int) -> None:
        kind = self.rt.cudaMemcpyKind.cudaMemcpyHostToDevice
        check(self.rt, self.rt.cudaMemcpyAsync(dst, ptr, nbytes, kind, self.stream), "cudaMemcpyAsync to the device")

    def to_host(self, ptr: int, src: int, nbytes: int) -> None:
        kind = self.rt.cudaMemcpyKind.cudaMemcpyDeviceToHost
        check(self.rt, self.rt.cudaMemcpyAsync(ptr, src, nbytes, kind, self.stream), "cudaMemcpyAsync to the host")

    def sync(self) -> None:
        check(self.rt, self.rt.cudaStreamSynchronize(self.stream), "cudaStreamSynchronize")

    def capture(self, fn: Callable[[], None]) -> Any:
        """fn()'s work on the stream as an instantiated CUDA graph. On any failure everything made so far is
        destroyed, the stream is left out of capture mode, and CudaError/T2VError says what failed."""
        rt = self.rt
        mode = rt.cudaStreamCaptureMode.cudaStreamCaptureModeThreadLocal
        check(rt, rt.cudaStreamBeginCapture(self.stream, mode), "cudaStreamBeginCapture")
        failure: BaseException | None = None
        try:
            fn()
        except BaseException as e:
            failure = e
        err, *graph = rt.cudaStreamEndCapture(self.stream)
        g = graph[0] if graph else None
        if failure is not None or int(err) != SUCCESS:
            if g is not None and int(err) == SUCCESS:
                rt.cudaGraphDestroy(g)
            if failure is not None:
                raise failure
            name = error_name(rt, err)
            raise CudaError(f"cudaStreamEndCapture failed: {name}", int(err), name)
        try:
            return check(rt, rt.cudaGraphInstantiate(g, 0), "cudaGraphInstantiate")
        finally:
            rt.cudaGraphDestroy(g)

    def launch(self, exe: Any) -> None:
        check(self.rt, self.rt.cudaGraphLaunch(exe, self.stream), "cudaGraphLaunch")

    def destroy_graph(self, exe: Any) -> None:
        self.rt.cudaGraphExecDestroy(exe)

    def close(self) -> None:
        self.rt.cudaStreamDestroy(self.stream)
