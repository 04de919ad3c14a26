"""What a backend (ONNX Runtime, TensorRT) gives the pipeline: runners of the bundle's three engines.

Inputs and outputs are host numpy arrays named and shaped as the component's IOSpec says; a runner checks every
call against it. The pipeline opens a runner before a stage and releases it after; a backend whose memory plan keeps
engines resident makes `release` cheap, one that loads, runs and frees per stage frees there.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from t2vrt.iospec import IOSpec


@dataclass(frozen=True)
class Hints:
    """Memory choices a backend may impose on the pipeline (from the engine plan); None = the pipeline's default."""

    guidance_batch: int | None = None  # 2: cond + uncond in one UNet call; 1: two calls
    vae_chunk: int | None = None  # frames per VAE call
    notes: tuple[str, ...] = field(default=())


class Runner(Protocol):
    component: str
    io: IOSpec

    def run(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]: ...


class Backend(Protocol):
    name: str  # e.g. "onnxruntime-cpu", "onnxruntime-cuda", "tensorrt"
    precision: str  # "fp32" | "fp16"

    def open(self, component: str) -> Runner: ...

    def release(self, component: str) -> None: ...

    def hints(self) -> Hints: ...

    def close(self) -> None: ...
