"""Peak memory while a benchmark runs: host RSS sampled by a thread (psutil), device memory through NVML
(nvidia-ml-py, the NVML device matched to the CUDA device by PCI bus id: NVML numbers devices its own way and ignores
CUDA_VISIBLE_DEVICES) or, without it, cudaMemGetInfo through the one CUDA helper. Torch-free; every path optional."""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from dataclasses import dataclass


def rss_bytes() -> int:
    import psutil

    return int(psutil.Process(os.getpid()).memory_info().rss)


def _nvml_used(index: int) -> Callable[[], int] | None:
    from t2vrt.runtime import cuda

    gpu = cuda.probe(index)
    if isinstance(gpu, str) or not gpu.pci_bus_id:
        return None
    return cuda.nvml_used_probe(gpu.pci_bus_id)


def _cudart_used() -> Callable[[], int] | None:
    from t2vrt.runtime import cuda

    rt = cuda.bindings()
    if rt is None or int(rt.cudaMemGetInfo()[0]) != 0:
        return None

    def used() -> int:
        _, free, total = rt.cudaMemGetInfo()
        return int(total) - int(free)

    return used


def device_memory_probe(index: int = 0) -> tuple[Callable[[], int] | None, str]:
    """A function returning the GPU's used bytes now (whole device, every process), and its source's name."""
    probe = _nvml_used(index)
    if probe is not None:
        return probe, "nvml"
    probe = _cudart_used()
    if probe is not None:
        return probe, "cudaMemGetInfo"
    return None, "none"


@dataclass(frozen=True)
class MemoryPeaks:
    host_rss_peak: int  # bytes, sampled
    host_rss_start: int
    device_used_peak: int | None  # bytes used on the whole device at the peak sample (None without a GPU)
    device_used_start: int | None
    device_source: str  # "nvml" | "cudaMemGetInfo" | "none"
    samples: int

    @property
    def device_increase(self) -> int | None:
        """What this run added on the device: the peak over the level before it started."""
        if self.device_used_peak is None or self.device_used_start is None:
            return None
        return self.device_used_peak - self.device_used_start

    def to_json(self) -> dict:
        return {
            "host_rss_peak_bytes": self.host_rss_peak,
            "host_rss_start_bytes": self.host_rss_start,
            "device_used_peak_bytes": self.device_used_peak,
            "device_used_start_bytes": self.device_used_start,
            "device_increase_bytes": self.device_increase,
            "device_source": self.device_source,
            "samples": self.samples,
        }


class MemorySampler:
    """Context manager: samples RSS (and device use) every `interval` seconds on a daemon thread; `.peaks` after.

    Sampling misses spikes shorter than the interval; the OS's own high-water mark (ru_maxrss) is added as a floor
    when the sampler is the first to run in the process.
    """

    def __init__(self, interval: float = 0.02, device: bool = False, device_index: int = 0) -> None:
        self.interval = interval
        self._probe, self._source = device_memory_probe(device_index) if device else (None, "none")
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._rss_peak = self._rss_start = 0
        self._dev_peak: int | None = None
        self._dev_start: int | None = None
        self._n = 0
        self.peaks: MemoryPeaks | None = None

    def _sample(self) -> None:
        self._rss_peak = max(self._rss_peak, rss_bytes())
        if self._probe is not None:
            used = self._probe()
            self._dev_peak = used if self._dev_peak is None else max(self._dev_peak, used)
        self._n += 1

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            self._sample()

    def __enter__(self) -> MemorySampler:
        self._rss_start = rss_bytes()
        self._dev_start = self._probe() if self._probe is not None else None
        self._sample()
        self._thread = threading.Thread(target=self._loop, name="t2vrt-memory", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self._sample()
        self.peaks = MemoryPeaks(
            self._rss_peak, self._rss_start, self._dev_peak, self._dev_start, self._source, self._n
        )
