"""Timing: clocks (host, or CUDA events when the work runs on a GPU), summary statistics, and the alternating
schedule that runs the contenders round by round in one process, so slow phases of a noisy machine hit all of them.

Torch-free: the CUDA event clock for t2vrt's backends uses the one CUDA helper (t2vrt.runtime.cuda:
cuda.bindings.runtime; `cuda.cudart` is gone in cuda-bindings 13); the baseline brings its own torch clock.
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Protocol

Samples = dict[str, list[float]]  # figure name -> seconds, one per repetition


class Clock(Protocol):
    """mark() returns an opaque timestamp; elapsed(a, b) the seconds between two marks (synchronising if needed)."""

    name: str

    def mark(self) -> object: ...

    def elapsed(self, a: object, b: object) -> float: ...


class HostClock:
    name = "host perf_counter"

    def mark(self) -> float:
        return time.perf_counter()

    def elapsed(self, a: object, b: object) -> float:
        return float(b) - float(a)  # type: ignore[arg-type]


class CudartClock:
    """CUDA events recorded on the legacy default stream, which orders itself against every blocking stream: an
    event pair brackets the device work queued between the marks on any stream that ORT or TensorRT uses."""

    name = "CUDA events (cuda-python)"

    def __init__(self) -> None:
        from t2vrt.runtime import cuda

        rt = cuda.bindings()
        if rt is None:
            raise ImportError(cuda.missing() or "cuda-python is not installed")
        self._rt, self._cuda = rt, cuda
        self._events: list[object] = []

    def _check(self, result: tuple, what: str) -> object:
        return self._cuda.check(self._rt, result, what)

    def mark(self) -> object:
        ev = self._check(self._rt.cudaEventCreate(), "cudaEventCreate")
        self._check(self._rt.cudaEventRecord(ev, 0), "cudaEventRecord")
        self._events.append(ev)
        return ev

    def elapsed(self, a: object, b: object) -> float:
        self._check(self._rt.cudaEventSynchronize(b), "cudaEventSynchronize")
        return float(self._check(self._rt.cudaEventElapsedTime(a, b), "cudaEventElapsedTime")) / 1e3  # type: ignore[arg-type]

    def reset(self) -> None:
        """Destroy the events of a finished repetition."""
        for ev in self._events:
            self._rt.cudaEventDestroy(ev)
        self._events.clear()


def device_clock(on_gpu: bool) -> Clock:
    """CUDA events when the work runs on a GPU and cuda-python is importable, else the host clock (and says why)."""
    if on_gpu:
        try:
            return CudartClock()
        except ImportError as e:
            import logging

            logging.getLogger(__name__).warning("timing GPU work with the host clock: %s", e)
    return HostClock()


@dataclass(frozen=True)
class Stats:
    n: int
    mean: float
    p50: float
    p95: float
    min: float
    max: float
    stdev: float

    def to_json(self) -> dict[str, float]:
        return asdict(self)


def percentile(values: Sequence[float], q: float) -> float:
    """Linear-interpolated percentile (numpy's default), q in [0, 100]."""
    if not values:
        raise ValueError("percentile of no values")
    xs = sorted(values)
    pos = (len(xs) - 1) * q / 100.0
    lo, hi = math.floor(pos), math.ceil(pos)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


def summarize(values: Sequence[float]) -> Stats:
    if not values:
        raise ValueError("no samples to summarise")
    vals = [float(v) for v in values]
    return Stats(
        n=len(vals),
        mean=statistics.fmean(vals),
        p50=percentile(vals, 50),
        p95=percentile(vals, 95),
        min=min(vals),
        max=max(vals),
        stdev=statistics.stdev(vals) if len(vals) > 1 else 0.0,
    )


def alternate(
    contenders: Mapping[str, Callable[[], Mapping[str, float | Sequence[float]]]],
    warmup: int = 1,
    repeat: int = 3,
    progress: Callable[[str], None] = lambda s: None,
) -> dict[str, Samples]:
    """Run every contender `warmup` times (discarded), then `repeat` rounds in which each runs once.

    The order flips every round (A B, B A, A B...), so neither side always follows the other's cache and memory
    state. A contender returns its figures for one run (a figure may be a list, e.g. every step's time); the result
    is contender -> figure -> all samples of the timed rounds.
    """
    if warmup < 0 or repeat < 1:
        raise ValueError(f"warmup must be >= 0 and repeat >= 1, got {warmup}, {repeat}")
    names = list(contenders)
    for name in names:
        for i in range(warmup):
            progress(f"{name}: warm-up {i + 1}/{warmup}")
            contenders[name]()
    out: dict[str, Samples] = {n: {} for n in names}
    for r in range(repeat):
        for name in names if r % 2 == 0 else reversed(names):
            progress(f"{name}: run {r + 1}/{repeat}")
            for fig, v in contenders[name]().items():
                out[name].setdefault(fig, []).extend(v if isinstance(v, Sequence) else [v])
    return out


def ratio(a: float, b: float) -> float | None:
    """b / a: how many times faster `a` is than `b` (None when a is zero)."""
    return b / a if a > 0 else None
