"""A plan and its request: what each stage holds on the card, its JSON and its text (t2vrt.engine.planner decides).

What a stage holds on the card: its engines' weights (the resident part under streaming), their I/O buffers, the
activation block, and RUNTIME_RESERVE. The activation block is TensorRT's device memory: estimated activations x
MARGIN plus the workspace limit (the tactics' scratch, which TensorRT counts inside device_memory_size_v2), or the
measured device_memory_size_v2 of an engine already built at these shapes (plan.json), which already includes the
scratch: the workspace is counted once, never on top of a measured figure. The workspace limit is what is left in the
tightest stage, clamped to [MIN_WORKSPACE, MAX_WORKSPACE].

The budget depends on what the memory figure is. cudaMemGetInfo creates this process's CUDA context before it
measures, so its free memory already excludes the context: a budget from measured free memory is all of it. A
`--vram` figure is the card's memory as sold: the CUDA context (CONTEXT_RESERVE) comes out of it first.

Building needs more than running on a small card: TensorRT's builder holds an engine's weights (all of them, even
for a streaming engine) and the tensors it times on the card, beside its own kernel library. The plan says when that
does not fit its budget, before anything is built, and what would.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

from t2vrt.errors import UsageError
from t2vrt.iospec import IOSpec

GiB, MiB = 1 << 30, 1 << 20
# The CUDA context this process creates (only when the budget is the card's size, not measured free memory): TensorRT
# logs it at about 260 MiB ("[MemUsageChange] Init CUDA"); it grows with the SM count (local memory is reserved per
# SM), so a margin above that.
CONTEXT_RESERVE = 320 * MiB
# Per stage, what TensorRT and CUDA allocate besides weights, I/O and the activation block: engine kernels loaded on
# first use (CUDA lazy loading, the default since 12.2), the execution contexts' own state (USER_MANAGED contexts get
# no activation memory of their own), CUDA graph executables, cudaMalloc's 2 MiB rounding per buffer. No cuBLAS or
# cuDNN handles or workspaces: TensorRT 10 leaves those tactic sources off by default (deprecated; gone in 11).
RUNTIME_RESERVE = 128 * MiB
# TensorRT's builder kernel library, on the card while an engine builds ("Init builder kernel library" logs 180-312
# MiB of GPU memory across TensorRT 9-10).
BUILDER_RESERVE = 320 * MiB
MARGIN = 1.25  # on estimated activations: TensorRT's tactics may keep more alive than the ONNX order suggests
MIN_WORKSPACE = 256 * MiB
MAX_WORKSPACE = 2 * GiB
MAX_VAE_CHUNK = 8
MIN_STREAM_BUDGET = 512 * MiB  # resident UNet weights under weight streaming; below this it crawls


def parse_bytes(text: str) -> int:
    """'6GiB', '6 GB', '6144MiB', '6' (GiB) -> bytes."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]i?B?)?\s*", text, re.IGNORECASE)
    if not m:
        raise UsageError(f"--vram {text!r}: expected a size like 6GiB, 8GB or 6144MiB")
    unit = (m.group(2) or "GiB").upper().rstrip("B")
    scale = {
        "K": 10**3,
        "M": 10**6,
        "G": 10**9,
        "T": 10**12,
        "KI": 1 << 10,
        "MI": 1 << 20,
        "GI": 1 << 30,
        "TI": 1 << 40,
    }
    value = int(float(m.group(1)) * scale[unit])
    if value <= 0:
        raise UsageError(f"--vram {text!r} must be positive")
    return value


def fmt(n: int | float) -> str:
    return f"{n / GiB:.2f} GiB" if abs(n) >= GiB else f"{n / MiB:.0f} MiB"


def streaming_budget(resident: int, weights: int, streamable: int) -> int:
    """weight_streaming_budget_v2 that keeps `resident` of an engine's `weights` bytes on the card. TensorRT counts
    only the streamable part (`streamable` bytes; the rest never leaves the card) and turns streaming off at a budget
    >= streamable, so: resident minus the non-streamable weights, clamped to [0, streamable - 1]."""
    return max(0, min(resident - (weights - streamable), streamable - 1))


@dataclass(frozen=True)
class Request:
    frames: int
    height: int
    width: int
    dynamic: bool = False  # a profile range up to the request instead of exactly it
    unguided: bool = False  # a few-step bundle's sampler: one batch-1 UNet call per step, never a batch-2 guidance call


@dataclass(frozen=True)
class EnginePlan:
    component: str
    dims_min: dict[str, int]  # io-spec symbol sizes of the optimisation profile
    dims_opt: dict[str, int]
    dims_max: dict[str, int]
    weight_bytes: int  # all of its weights (measured on the card once built)
    resident_weight_bytes: int  # on the card (less than weight_bytes under weight streaming)
    activation_bytes: int  # planned device memory (activations, with margin unless measured)
    activation_source: str  # "analytic" | "onnx" | "measured"
    io_bytes: int
    streamable_bytes: int = 0  # TensorRT's streamable_weights_size of the built streaming engine; 0: not known yet

    @property
    def weight_streaming(self) -> bool:
        return self.resident_weight_bytes < self.weight_bytes

    @property
    def measured(self) -> bool:
        return self.activation_source == "measured"

    def device_bytes(self, workspace: int) -> int:
        """Its TensorRT device memory: a measured figure already holds the tactics' scratch; an estimate does not."""
        return self.activation_bytes if self.measured else self.activation_bytes + workspace

    @property
    def build_bytes(self) -> int:
        """On the card while TensorRT builds it: all its weights, the tensors it times, the builder's kernel library."""
        return self.weight_bytes + self.activation_bytes + BUILDER_RESERVE

    @property
    def stream_budget(self) -> int | None:
        """weight_streaming_budget_v2 for this plan, once TensorRT has said how much of the engine can stream."""
        if not self.weight_streaming or self.streamable_bytes <= 0:
            return None
        return streaming_budget(self.resident_weight_bytes, self.weight_bytes, self.streamable_bytes)

    def profile(self, io: IOSpec) -> dict[str, tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]]:
        """TensorRT optimisation profile: input name -> (min, opt, max) shapes, derived from the io spec."""
        return {
            t.name: (t.resolve(self.dims_min), t.resolve(self.dims_opt), t.resolve(self.dims_max)) for t in io.inputs
        }

    def to_json(self) -> dict[str, Any]:
        return {
            "component": self.component,
            "dims_min": self.dims_min,
            "dims_opt": self.dims_opt,
            "dims_max": self.dims_max,
            "weight_bytes": self.weight_bytes,
            "resident_weight_bytes": self.resident_weight_bytes,
            "activation_bytes": self.activation_bytes,
            "activation_source": self.activation_source,
            "io_bytes": self.io_bytes,
            "streamable_bytes": self.streamable_bytes,
            "stream_budget": self.stream_budget,
        }

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> EnginePlan:
        return cls(
            str(d["component"]),
            dict(d["dims_min"]),
            dict(d["dims_opt"]),
            dict(d["dims_max"]),
            int(d["weight_bytes"]),
            int(d["resident_weight_bytes"]),
            int(d["activation_bytes"]),
            str(d["activation_source"]),
            int(d["io_bytes"]),
            int(d.get("streamable_bytes", 0)),
        )


@dataclass(frozen=True)
class Plan:
    vram: int
    budget: int  # vram, less CONTEXT_RESERVE when vram is the card's size
    request: Request
    residency: str  # "resident" | "sequential"
    guidance_batch: int
    vae_chunk: int
    workspace: int
    engines: tuple[EnginePlan, ...]
    reasons: tuple[str, ...]
    free: bool = (
        False  # vram is measured free memory (this process's CUDA context already out of it), not the card's size
    )
    build_note: str = ""  # why `t2vrt build` would not fit this budget, and what would; "" when it fits

    def engine(self, component: str) -> EnginePlan:
        return next(e for e in self.engines if e.component == component)

    def parts(self) -> dict[str, tuple[int, int, int | None]]:
        """Per stage: (weights + I/O + RUNTIME_RESERVE, the largest measured device memory, the largest estimated
        activations or None): the activation block is the larger of the measured figure and estimate + workspace."""
        if self.residency == "resident":
            fixed = sum(e.resident_weight_bytes + e.io_bytes for e in self.engines) + RUNTIME_RESERVE
            meas = max((e.activation_bytes for e in self.engines if e.measured), default=0)
            est = max((e.activation_bytes for e in self.engines if not e.measured), default=None)
            return {e.component: (fixed, meas, est) for e in self.engines}
        return {
            e.component: (
                e.resident_weight_bytes + e.io_bytes + RUNTIME_RESERVE,
                e.activation_bytes if e.measured else 0,
                None if e.measured else e.activation_bytes,
            )
            for e in self.engines
        }

    def stage_bytes(self) -> dict[str, int]:
        """Peak device bytes while each stage runs (all resident: the same total for all three)."""
        return {c: f + max(m, 0 if est is None else est + self.workspace) for c, (f, m, est) in self.parts().items()}

    @property
    def peak(self) -> int:
        return max(self.stage_bytes().values())

    @property
    def context_reserve(self) -> int:
        return 0 if self.free else CONTEXT_RESERVE

    @property
    def build_peak(self) -> int:
        return max(e.build_bytes for e in self.engines)

    def with_measured(self, measured: Mapping[str, Any]) -> Plan:
        """This arrangement in TensorRT's own figures (sizes.Measured per component: device memory, weights on the
        card, streamable bytes and the streaming budget set) for the engines that have them."""
        engines = []
        for e in self.engines:
            m = measured.get(e.component)
            if m is None:
                engines.append(e)
                continue
            w = e.weight_bytes if m.weights is None else m.weights
            # streaming: on the card are the weights TensorRT cannot stream plus the budget it was measured at
            resident = w - m.streamable + m.stream_budget if e.weight_streaming and m.streamable else w
            engines.append(
                replace(
                    e,
                    weight_bytes=w,
                    resident_weight_bytes=resident,
                    activation_bytes=m.device_memory,
                    activation_source="measured",
                    streamable_bytes=m.streamable,
                )
            )
        return replace(self, engines=tuple(engines))

    def overrun(self) -> str | None:
        """None when the peak fits the budget; else one line naming the stage that does not fit and what fills it."""
        stages = self.stage_bytes()
        if self.peak <= self.budget:
            return None
        if self.residency == "resident":
            big = max(self.engines, key=lambda e: e.device_bytes(self.workspace))
            what = (
                f"all engines resident need {fmt(self.peak)} (weights {fmt(sum(e.resident_weight_bytes for e in self.engines))} "
                f"on the card + the {big.component} engine's device memory {fmt(big.device_bytes(self.workspace))}"
            )
        else:
            e = max(self.engines, key=lambda e: stages[e.component])
            what = (
                f"the {e.component} stage needs {fmt(stages[e.component])} (weights {fmt(e.resident_weight_bytes)} on the "
                f"card + device memory {fmt(e.device_bytes(self.workspace))}"
            )
        return f"{what} + I/O and runtime), which does not fit the {fmt(self.budget)} budget ({self._budget_text()})"

    def _budget_text(self) -> str:
        if self.free:
            return f"free memory {fmt(self.vram)}: this process's CUDA context is already out of it"
        return f"card {fmt(self.vram)} - CUDA context {fmt(CONTEXT_RESERVE)}"

    def table(self) -> str:
        head = f"{'engine':<13}{'weights':>12}{'on card':>12}{'activations':>13}{'workspace':>11}{'I/O':>10}{'stage peak':>12}"
        rows = [head]
        stages = self.stage_bytes()
        for e in self.engines:
            ws = "measured" if e.measured else fmt(self.workspace)
            rows.append(
                f"{e.component:<13}{fmt(e.weight_bytes):>12}{fmt(e.resident_weight_bytes):>12}"
                f"{fmt(e.activation_bytes):>13}{ws:>11}{fmt(e.io_bytes):>10}{fmt(stages[e.component]):>12}"
            )
        rows.append(
            f"stage peaks include {fmt(RUNTIME_RESERVE)} for the TensorRT runtime (kernels, contexts, CUDA graphs); "
            "a measured activation figure already holds the workspace"
        )
        rows.append(f"peak {fmt(self.peak)} of budget {fmt(self.budget)} ({self._budget_text()})")
        worst = max(self.engines, key=lambda e: e.build_bytes)
        rows.append(
            self.build_note
            or f"build: fits (the {worst.component} engine needs about {fmt(worst.build_bytes)} "
            "while TensorRT builds it)"
        )
        return "\n".join(rows)

    def summary(self) -> str:
        r = self.request
        lines = [
            f"{r.frames} frames at {r.width}x{r.height} on {fmt(self.vram)}{' free' if self.free else ''}: engines "
            f"{self.residency}, guidance batch {self.guidance_batch}, VAE chunk {self.vae_chunk}, workspace "
            f"{fmt(self.workspace)}, shapes {'dynamic up to the request' if r.dynamic else 'static'}"
        ]
        unet = self.engine("unet")
        if unet.weight_streaming:
            lines.append(
                f"weight streaming: {fmt(unet.resident_weight_bytes)} of the UNet's {fmt(unet.weight_bytes)} on the card"
            )
        lines += [f"- {why}" for why in self.reasons]
        return "\n".join(lines)

    def to_json(self) -> dict[str, Any]:
        r = self.request
        return {
            "vram": self.vram,
            "free": self.free,
            "budget": self.budget,
            "margin": MARGIN,
            "context_reserve": self.context_reserve,
            "runtime_reserve": RUNTIME_RESERVE,
            "builder_reserve": BUILDER_RESERVE,
            "request": {
                "frames": r.frames,
                "height": r.height,
                "width": r.width,
                "dynamic": r.dynamic,
                "unguided": r.unguided,
            },
            "residency": self.residency,
            "guidance_batch": self.guidance_batch,
            "vae_chunk": self.vae_chunk,
            "workspace": self.workspace,
            "engines": [e.to_json() for e in self.engines],
            "reasons": list(self.reasons),
            "peak": self.peak,
            "build_peak": self.build_peak,
            "build_note": self.build_note,
        }

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> Plan:
        r = d["request"]
        return cls(
            int(d["vram"]),
            int(d["budget"]),
            Request(int(r["frames"]), int(r["height"]), int(r["width"]), bool(r["dynamic"]), bool(r.get("unguided"))),
            str(d["residency"]),
            int(d["guidance_batch"]),
            int(d["vae_chunk"]),
            int(d["workspace"]),
            tuple(EnginePlan.from_json(e) for e in d["engines"]),
            tuple(d.get("reasons", ())),
            bool(d.get("free", False)),
            str(d.get("build_note", "")),
        )
