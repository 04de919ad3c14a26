"""The benchmark clock, the device-memory probe and ONNX Runtime's CUDA path, against fakes that behave like
cuda-bindings 13 (no `cuda.cudart`), NVML (its own device order, matched by PCI bus id) and onnxruntime-gpu (a CUDA
provider that silently falls back to the CPU). Against the old code each of these failed."""

from __future__ import annotations

import sys
import types
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fakes.cuda_runtime import FakeCudaRuntime, GiB, install

from t2vrt.errors import T2VError


@pytest.fixture
def cuda(monkeypatch: pytest.MonkeyPatch) -> FakeCudaRuntime:
    rt = FakeCudaRuntime(total=8 * GiB, bus_id="0000:41:00.0")
    install(monkeypatch, rt)
    return rt


def test_gpu_clock_uses_cuda_events_without_cuda_cudart(cuda: FakeCudaRuntime) -> None:
    """cuda-bindings 13 has no cuda.cudart: the old clock silently fell back to the host clock."""
    from t2vrt.benchmark.harness import CudartClock, device_clock

    clock = device_clock(on_gpu=True)
    assert isinstance(clock, CudartClock)
    a, b = clock.mark(), clock.mark()
    assert clock.elapsed(a, b) == pytest.approx(1.5e-3)
    clock.reset()
    assert cuda.events == {}


def test_device_memory_is_read_from_the_nvml_device_with_the_cuda_bus_id(
    cuda: FakeCudaRuntime, monkeypatch: pytest.MonkeyPatch
) -> None:
    """NVML index 0 is another card here: only the PCI bus id names the device CUDA runs on."""
    from t2vrt.benchmark.memory import device_memory_probe

    used = {"00000000:01:00.0": 111, "00000000:41:00.0": 4242}  # NVML's own order: the other card first
    nvml = types.ModuleType("pynvml")
    nvml.nvmlInit = lambda: None  # type: ignore[attr-defined]
    nvml.nvmlDeviceGetHandleByIndex = lambda i: list(used)[i]  # type: ignore[attr-defined]

    def by_bus(bus: str) -> str:
        # NVML accepts domain:bus:device.function in hex, any zero padding of the domain
        want = tuple(int(x, 16) for x in bus.replace(".", ":").split(":"))
        return next(k for k in used if tuple(int(x, 16) for x in k.replace(".", ":").split(":")) == want)

    nvml.nvmlDeviceGetHandleByPciBusId = by_bus  # type: ignore[attr-defined]
    nvml.nvmlDeviceGetMemoryInfo = lambda h: types.SimpleNamespace(used=used[h])  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "pynvml", nvml)
    probe, source = device_memory_probe(0)
    assert source == "nvml" and probe is not None and probe() == 4242


def test_device_memory_falls_back_to_cudamemgetinfo_through_the_helper(
    cuda: FakeCudaRuntime, monkeypatch: pytest.MonkeyPatch
) -> None:
    from t2vrt.benchmark.memory import device_memory_probe

    monkeypatch.setitem(sys.modules, "pynvml", None)
    probe, source = device_memory_probe(0)
    assert source == "cudaMemGetInfo" and probe is not None and probe() == cuda.used()


class _FallbackSession:
    """An InferenceSession whose CUDA provider did not load: it runs, on the CPU, and says so only in get_providers."""

    def __init__(self, path: str, sess_options: Any = None, providers: Any = None) -> None:
        self.providers = providers

    def get_providers(self) -> list[str]:
        return ["CPUExecutionProvider"]


def test_onnxruntime_cuda_refuses_a_silent_cpu_fallback(
    tiny_bundle: Path, monkeypatch: pytest.MonkeyPatch, cuda: FakeCudaRuntime
) -> None:
    import onnxruntime as ort

    from t2vrt.manifest import load_manifest
    from t2vrt.runtime.onnxruntime_backend import OnnxRuntimeBackend

    preloaded: list[bool] = []
    monkeypatch.setattr(ort, "get_available_providers", lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"])
    monkeypatch.setattr(ort, "InferenceSession", _FallbackSession)
    monkeypatch.setattr(ort, "preload_dlls", lambda *a, **k: preloaded.append(True), raising=False)
    backend = OnnxRuntimeBackend(load_manifest(tiny_bundle), "cuda")
    assert preloaded == [True]
    with pytest.raises(T2VError, match=r"CUDA provider did not load .* fell back to the CPU"):
        backend.open("unet")


def test_onnxruntime_cuda_sets_the_arena_from_the_plan(
    tiny_bundle: Path, monkeypatch: pytest.MonkeyPatch, cuda: FakeCudaRuntime
) -> None:
    import onnxruntime as ort

    from t2vrt.manifest import load_manifest
    from t2vrt.runtime.onnxruntime_backend import OnnxRuntimeBackend

    made: list[_CudaSession] = []

    class _CudaSession(_FallbackSession):
        def __init__(self, *a: Any, **k: Any) -> None:
            super().__init__(*a, **k)
            made.append(self)

        def get_providers(self) -> list[str]:
            return ["CUDAExecutionProvider", "CPUExecutionProvider"]

    monkeypatch.setattr(ort, "get_available_providers", lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"])
    monkeypatch.setattr(ort, "InferenceSession", _CudaSession)
    backend = OnnxRuntimeBackend(load_manifest(tiny_bundle), "cuda")
    backend.open("unet")
    opts = dict(made[0].providers[0][1])
    assert (
        opts["arena_extend_strategy"] == "kSameAsRequested" and int(opts["gpu_mem_limit"]) == cuda.total - cuda.used()
    )
    assert backend.one_at_a_time is False  # the tiny model fits an 8 GiB card with all three resident
    cuda.others_used = cuda.total - cuda.used() - (1 << 20)  # 1 MiB left: the planner says one at a time
    small = OnnxRuntimeBackend(load_manifest(tiny_bundle), "cuda")
    assert small.one_at_a_time is True
    small.open("unet")
    small.release("unet")
    assert small._runners == {}
    assert np.isfinite(len(made))
