"""The VRAM planner: given a card's memory, the engines' sizes and the requested video, decide how to run it.

Pure Python: no GPU, no TensorRT. Decisions, tried fastest first until one fits the budget:
1. residency: all three engines resident (one shared activation block, the largest engine's) or load, run and free
   one engine at a time ("sequential": each stage needs only its own weights);
2. guidance: cond + uncond as one batch-2 UNet call, or two batch-1 calls (half the UNet activations);
3. VAE chunk: the most frames per decoder call (at most 8, more buys nothing) that still fits;
4. weight streaming: when even the cheapest of the above leaves the UNet's weights too big, TensorRT keeps a budget
   of them on the card and streams the rest per call (slow, but it runs).
Shapes are static (min = opt = max: fastest) unless asked for a range.

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
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any

from t2vrt.engine.sizes import Sizes
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
_ITEMSIZE = {"float32": 4, "float16": 2, "int64": 8, "int32": 4}


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

    def _parts(self) -> dict[str, tuple[int, int, int | None]]:
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
        return {c: f + max(m, 0 if est is None else est + self.workspace) for c, (f, m, est) in self._parts().items()}

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


def _dims(component: str, req: Request, g: int, chunk: int, downscale: int) -> tuple[dict[str, int], ...]:
    lh, lw = req.height // downscale, req.width // downscale
    if component == "text_encoder":
        return {"text_batch": 1}, {"text_batch": 2}, {"text_batch": 2}
    if component in ("vae_decoder", "vae_encoder"):  # frames as a batch of images, chunked alike
        lo = {
            "vae_batch": 1,
            "latent_height": min(8, lh) if req.dynamic else lh,
            "latent_width": min(8, lw) if req.dynamic else lw,
        }
        hi = {"vae_batch": chunk, "latent_height": lh, "latent_width": lw}
        return lo, hi, hi
    hi = {"batch": g, "frames": req.frames, "latent_height": lh, "latent_width": lw}
    if not req.dynamic:
        return hi, hi, hi
    return {"batch": g, "frames": 1, "latent_height": min(8, lh), "latent_width": min(8, lw)}, hi, hi


def _io_bytes(io: IOSpec, dims: Mapping[str, int]) -> int:
    total = 0
    for t in io.tensors():
        n = 1
        for d in t.resolve(dims):
            n *= d
        total += n * _ITEMSIZE.get(t.dtype, 4)
    return total


def _engine(
    component: str, io: IOSpec, sizes: Sizes, req: Request, g: int, chunk: int, downscale: int, stream: bool = False
) -> EnginePlan:
    """Measured figures of an engine built at these shapes (a streaming build is a different engine) when there is
    one; else the estimate with MARGIN and the bundle's weight bytes."""
    lo, opt, hi = _dims(component, req, g, chunk, downscale)
    io_bytes = _io_bytes(io, hi)
    w = sizes.weights[component]
    m = sizes.measured_for(component, hi, stream)
    if m is not None:
        mw = w if m.weights is None else m.weights
        return EnginePlan(component, lo, opt, hi, mw, mw, m.device_memory, "measured", io_bytes, m.streamable)
    return EnginePlan(component, lo, opt, hi, w, w, int(sizes.estimate(component, hi) * MARGIN), sizes.source, io_bytes)


def _workspace(p: Plan) -> int | None:
    """The largest workspace in [MIN_WORKSPACE, MAX_WORKSPACE] that keeps every stage within the budget; None if
    none does. Only stages with estimated activations grow with it."""
    parts = p._parts().values()
    if any(f + m > p.budget for f, m, _ in parts):
        return None
    rooms = [p.budget - f - est for f, _, est in parts if est is not None]
    if not rooms:  # all measured: the workspace only matters to an engine that gets rebuilt
        return min(MAX_WORKSPACE, max(MIN_WORKSPACE, min(p.budget - f - m for f, m, _ in parts)))
    room = min(rooms)
    return None if room < MIN_WORKSPACE else min(room, MAX_WORKSPACE)


def _streamed(p: Plan) -> Plan | None:
    """`p` with as much of the UNet's weights on the card as its stage leaves room for, the rest streamed; None when
    that is less than MIN_STREAM_BUDGET or than the weights TensorRT cannot stream."""
    unet = p.engine("unet")
    bare = replace(
        p,
        workspace=MIN_WORKSPACE,
        engines=tuple(replace(e, resident_weight_bytes=0) if e is unet else e for e in p.engines),
    )
    keep = min(unet.weight_bytes, p.budget - bare.stage_bytes()["unet"])
    fixed = unet.weight_bytes - unet.streamable_bytes if unet.streamable_bytes else 0
    if keep < max(MIN_STREAM_BUDGET, fixed):
        return None
    return replace(p, engines=tuple(replace(e, resident_weight_bytes=keep) if e is unet else e for e in p.engines))


def _fit(
    io: Mapping[str, IOSpec],
    sizes: Sizes,
    req: Request,
    vram: int,
    free: bool,
    residency: str,
    g: int,
    downscale: int,
    stream: bool,
) -> Plan | None:
    budget = vram if free else vram - CONTEXT_RESERVE
    for chunk in range(min(req.frames, MAX_VAE_CHUNK), 0, -1):
        engines = tuple(_engine(c, io[c], sizes, req, g, chunk, downscale, stream and c == "unet") for c in io)
        p: Plan | None = Plan(vram, budget, req, residency, g, chunk, 0, engines, (), free)
        if stream and p is not None:
            p = _streamed(p)
        ws = None if p is None else _workspace(p)
        if p is not None and ws is not None:
            return replace(p, workspace=ws)
    return None


_ORDER = (
    ("resident", 2, False),
    ("sequential", 2, False),
    ("resident", 1, False),
    ("sequential", 1, False),
    ("sequential", 2, True),
    ("sequential", 1, True),
)


def plan(
    io: Mapping[str, IOSpec],
    sizes: Sizes,
    req: Request,
    vram: int,
    downscale: int = 8,
    multiple: int = 64,
    free: bool = False,
) -> Plan:
    """The fastest way to run `req` within `vram` bytes (the card's size, or with free=True its measured free
    memory); UsageError saying what would fit when nothing does. The plan says when building will not fit."""
    for name, value in (("frames", req.frames), ("height", req.height), ("width", req.width)):
        if value <= 0:
            raise UsageError(f"--{name} {value}: must be positive")
    for name, value in (("height", req.height), ("width", req.width)):
        if value % multiple:
            raise UsageError(f"--{name} {value}: must be a multiple of {multiple}")
    least = (0 if free else CONTEXT_RESERVE) + RUNTIME_RESERVE + MIN_WORKSPACE
    if vram < least:
        what = "" if free else f"the {fmt(CONTEXT_RESERVE)} CUDA context, "
        raise UsageError(
            f"--vram {fmt(vram)} is below {what}the {fmt(RUNTIME_RESERVE)} TensorRT runtime reserve and the "
            f"{fmt(MIN_WORKSPACE)} minimum workspace: give at least {fmt(least)}"
        )
    p = _choose(io, sizes, req, vram, free, downscale)
    if p is None:
        raise UsageError(_nothing_fits(io, sizes, req, vram, free, downscale, multiple))
    if p.build_peak > p.budget:
        p = replace(p, build_note=_build_note(io, sizes, p, downscale, multiple))
    return p


def _choose(io: Mapping[str, IOSpec], sizes: Sizes, req: Request, vram: int, free: bool, downscale: int) -> Plan | None:
    tried: list[str] = []
    order = [o for o in _ORDER if o[1] == 1] if req.unguided else list(_ORDER)  # unguided: batch 1 is all it runs
    for residency, g, stream in order:
        p = _fit(io, sizes, req, vram, free, residency, g, downscale, stream)
        if p is not None and stream and not req.unguided:  # streaming: fewest weight bytes per step wins
            alt = _fit(io, sizes, req, vram, free, residency, 3 - g, downscale, stream)
            if alt is not None and _streamed_per_step(alt) < _streamed_per_step(p):
                p, g = alt, alt.guidance_batch
        if p is None:
            tried.append(f"{residency}/guidance batch {g}{' /streaming' if stream else ''}")
            continue
        why = []
        if tried:
            why.append(f"did not fit: {', '.join(tried)}")
        why.append(
            "all engines resident: no per-generation loading"
            if residency == "resident"
            else "engines loaded, run and freed one at a time: only one engine's weights on the card"
        )
        why.append(
            "one unguided batch-1 UNet call per step (few-step sampler)"
            if req.unguided
            else "cond + uncond in one batch-2 UNet call"
            if g == 2
            else "two batch-1 UNet calls: half the activations"
        )
        if p.vae_chunk < min(req.frames, MAX_VAE_CHUNK):
            why.append(f"VAE decodes {p.vae_chunk} frames per call to fit")
        if stream:
            why.append("the UNet's weights do not fit beside its activations: TensorRT weight streaming")
        src = {e.activation_source for e in p.engines}
        why.append(f"activations from {'/'.join(sorted(src))}" + (f" x {MARGIN} margin" if src != {"measured"} else ""))
        return replace(p, reasons=tuple(why))
    return None


def _streamed_per_step(p: Plan) -> int:
    unet = p.engine("unet")
    return (2 // p.guidance_batch) * (unet.weight_bytes - unet.resident_weight_bytes)


def _fits(io: Mapping[str, IOSpec], sizes: Sizes, req: Request, vram: int, free: bool, downscale: int) -> bool:
    """The cheapest arrangements: one engine at a time, guidance batch 1, with or without weight streaming (a UNet
    smaller than MIN_STREAM_BUDGET is never streamed, so streaming alone would never fit it)."""
    return any(_fit(io, sizes, req, vram, free, "sequential", 1, downscale, s) is not None for s in (False, True))


def _builds(io: Mapping[str, IOSpec], sizes: Sizes, req: Request, vram: int, free: bool, downscale: int) -> bool:
    p = _choose(io, sizes, req, vram, free, downscale)
    return p is not None and p.build_peak <= p.budget


def _least(fits: Callable[[int], bool], lo: int, hi: int) -> int | None:
    """The least n in [lo, hi] with fits(n), for a monotone `fits`; None if even hi does not fit. O(log(hi - lo))."""
    if lo > hi or not fits(hi):
        return None
    while lo < hi:
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if fits(mid) else (mid + 1, hi)
    return lo


def _smaller(req: Request, multiple: int, ok: Callable[[Request], bool]) -> tuple[str | None, str | None]:
    """What would do at this card: the most frames at the requested size, and the largest size (keeping roughly the
    aspect ratio, in steps of `multiple`) at the requested frames."""
    k = _least(
        lambda k: ok(Request(req.frames - k, req.height, req.width, req.dynamic, req.unguided)), 1, req.frames - 1
    )
    frames = f"{req.frames - k} frames at {req.width}x{req.height}" if k is not None else None
    for k in range(1, 64):
        h = max(multiple, (req.height * (64 - k) // 64) // multiple * multiple)
        w = max(multiple, (req.width * (64 - k) // 64) // multiple * multiple)
        if ok(Request(req.frames, h, w, req.dynamic, req.unguided)):
            return frames, f"{req.frames} frames at {w}x{h}"
    return frames, None


def _nothing_fits(
    io: Mapping[str, IOSpec], sizes: Sizes, req: Request, vram: int, free: bool, downscale: int, multiple: int
) -> str:
    # Bisection, not a walk: a request for a huge video answers at once instead of stepping 256 MiB at a time to 16 TiB.
    steps = _least(lambda k: _fits(io, sizes, req, vram + k * 256 * MiB, free, downscale), 0, (1 << 44) // (256 * MiB))
    need = vram + steps * 256 * MiB if steps is not None else 1 << 44
    would = [w for w in _smaller(req, multiple, lambda r: _fits(io, sizes, r, vram, free, downscale)) if w]
    return (
        f"{req.frames} frames at {req.width}x{req.height} does not fit in {fmt(vram)} of VRAM even with guidance batch 1, "
        f"VAE chunk 1 and weight streaming (needs {'about ' + fmt(need) if steps is not None else 'more than 16 TiB'}); "
        + (f"what fits in {fmt(vram)}: {' or '.join(would)}" if would else f"nothing fits in {fmt(vram)}")
    )


def _build_note(io: Mapping[str, IOSpec], sizes: Sizes, p: Plan, downscale: int, multiple: int) -> str:
    e = max(p.engines, key=lambda e: e.build_bytes)
    r = p.request
    would = [w for w in _smaller(r, multiple, lambda q: _builds(io, sizes, q, p.vram, p.free, downscale)) if w]
    return (
        f"build will not fit: TensorRT's builder needs about {fmt(e.build_bytes)} on the card for the {e.component} "
        f"engine (all {fmt(e.weight_bytes)} of its weights + {fmt(e.activation_bytes)} of activations + "
        f"{fmt(BUILDER_RESERVE)} builder library) and the budget is {fmt(p.budget)}; "
        + (f"what builds in {fmt(p.vram)}: {' or '.join(would)}" if would else f"nothing builds in {fmt(p.vram)}")
    )
