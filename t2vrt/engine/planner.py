"""The VRAM planner: given a card's memory, the engines' sizes and the requested video, decide how to run it.

Pure Python: no GPU, no TensorRT. Decisions, tried fastest first until one fits the budget:
1. residency: all three engines resident (one shared activation block, the largest engine's) or load, run and free
   one engine at a time ("sequential": each stage needs only its own weights);
2. guidance: cond + uncond as one batch-2 UNet call, or two batch-1 calls (half the UNet activations);
3. VAE chunk: the most frames per decoder call (at most 8, more buys nothing) that still fits;
4. weight streaming: when even the cheapest of the above leaves the UNet's weights too big, TensorRT keeps a budget
   of them on the card and streams the rest per call (slow, but it runs).
The workspace limit (TensorRT's tactic scratch) is what is left in the tightest stage, clamped to
[MIN_WORKSPACE, MAX_WORKSPACE]. Shapes are static (min = opt = max: fastest) unless asked for a range.

Budget = card memory - RESERVE. Estimated activations are multiplied by MARGIN; measured ones (TensorRT's
device_memory_size_v2, recorded in plan.json by `t2vrt build`) are used as they are, already including scratch.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from t2vrt.engine.sizes import Sizes
from t2vrt.errors import UsageError
from t2vrt.iospec import IOSpec

GiB, MiB = 1 << 30, 1 << 20
RESERVE = 384 * MiB  # CUDA context, cuBLAS/cuDNN handles, the TensorRT runtime, allocator slack
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
    scale = {"K": 10**3, "M": 10**6, "G": 10**9, "T": 10**12, "KI": 1 << 10, "MI": 1 << 20, "GI": 1 << 30, "TI": 1 << 40}
    value = int(float(m.group(1)) * scale[unit])
    if value <= 0:
        raise UsageError(f"--vram {text!r} must be positive")
    return value


def fmt(n: int | float) -> str:
    return f"{n / GiB:.2f} GiB" if abs(n) >= GiB else f"{n / MiB:.0f} MiB"


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
    weight_bytes: int  # all of its weights
    resident_weight_bytes: int  # on the card (less than weight_bytes under weight streaming)
    activation_bytes: int  # planned device memory (activations, with margin unless measured)
    activation_source: str  # "analytic" | "onnx" | "measured"
    io_bytes: int

    @property
    def weight_streaming(self) -> bool:
        return self.resident_weight_bytes < self.weight_bytes

    def profile(self, io: IOSpec) -> dict[str, tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]]:
        """TensorRT optimisation profile: input name -> (min, opt, max) shapes, derived from the io spec."""
        return {t.name: (t.resolve(self.dims_min), t.resolve(self.dims_opt), t.resolve(self.dims_max)) for t in io.inputs}

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
        }

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> EnginePlan:
        return cls(
            str(d["component"]), dict(d["dims_min"]), dict(d["dims_opt"]), dict(d["dims_max"]), int(d["weight_bytes"]),
            int(d["resident_weight_bytes"]), int(d["activation_bytes"]), str(d["activation_source"]), int(d["io_bytes"]),
        )  # fmt: skip


@dataclass(frozen=True)
class Plan:
    vram: int
    budget: int  # vram - RESERVE
    request: Request
    residency: str  # "resident" | "sequential"
    guidance_batch: int
    vae_chunk: int
    workspace: int
    engines: tuple[EnginePlan, ...]
    reasons: tuple[str, ...]

    def engine(self, component: str) -> EnginePlan:
        return next(e for e in self.engines if e.component == component)

    def stage_bytes(self) -> dict[str, int]:
        """Peak device bytes while each stage runs (all resident: the same total for all three)."""
        if self.residency == "resident":
            total = sum(e.resident_weight_bytes + e.io_bytes for e in self.engines)
            total += max(e.activation_bytes for e in self.engines) + self.workspace
            return {e.component: total for e in self.engines}
        return {
            e.component: e.resident_weight_bytes + e.io_bytes + e.activation_bytes + self.workspace for e in self.engines
        }

    @property
    def peak(self) -> int:
        return max(self.stage_bytes().values())

    def table(self) -> str:
        head = f"{'engine':<13}{'weights':>12}{'on card':>12}{'activations':>13}{'workspace':>11}{'I/O':>10}{'stage peak':>12}"
        rows = [head]
        stages = self.stage_bytes()
        for e in self.engines:
            rows.append(
                f"{e.component:<13}{fmt(e.weight_bytes):>12}{fmt(e.resident_weight_bytes):>12}"
                f"{fmt(e.activation_bytes):>13}{fmt(self.workspace):>11}{fmt(e.io_bytes):>10}{fmt(stages[e.component]):>12}"
            )
        rows.append(f"peak {fmt(self.peak)} of budget {fmt(self.budget)} (card {fmt(self.vram)} - reserve {fmt(RESERVE)})")
        return "\n".join(rows)

    def summary(self) -> str:
        r = self.request
        lines = [
            f"{r.frames} frames at {r.width}x{r.height} on {fmt(self.vram)}: engines {self.residency}, "
            f"guidance batch {self.guidance_batch}, VAE chunk {self.vae_chunk}, workspace {fmt(self.workspace)}, "
            f"shapes {'dynamic up to the request' if r.dynamic else 'static'}"
        ]
        unet = self.engine("unet")
        if unet.weight_streaming:
            lines.append(f"weight streaming: {fmt(unet.resident_weight_bytes)} of the UNet's {fmt(unet.weight_bytes)} on the card")
        lines += [f"- {why}" for why in self.reasons]
        return "\n".join(lines)

    def to_json(self) -> dict[str, Any]:
        r = self.request
        return {
            "vram": self.vram, "budget": self.budget, "margin": MARGIN, "reserve": RESERVE,
            "request": {"frames": r.frames, "height": r.height, "width": r.width, "dynamic": r.dynamic,
                        "unguided": r.unguided},
            "residency": self.residency, "guidance_batch": self.guidance_batch, "vae_chunk": self.vae_chunk,
            "workspace": self.workspace, "engines": [e.to_json() for e in self.engines], "reasons": list(self.reasons),
        }  # fmt: skip

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> Plan:
        r = d["request"]
        return cls(
            int(d["vram"]), int(d["budget"]),
            Request(int(r["frames"]), int(r["height"]), int(r["width"]), bool(r["dynamic"]), bool(r.get("unguided"))),
            str(d["residency"]), int(d["guidance_batch"]), int(d["vae_chunk"]), int(d["workspace"]),
            tuple(EnginePlan.from_json(e) for e in d["engines"]), tuple(d.get("reasons", ())),
        )  # fmt: skip


def _dims(component: str, req: Request, g: int, chunk: int, downscale: int) -> tuple[dict[str, int], ...]:
    lh, lw = req.height // downscale, req.width // downscale
    if component == "text_encoder":
        return {"text_batch": 1}, {"text_batch": 2}, {"text_batch": 2}
    if component in ("vae_decoder", "vae_encoder"):  # frames as a batch of images, chunked alike
        lo = {"vae_batch": 1, "latent_height": min(8, lh) if req.dynamic else lh, "latent_width": min(8, lw) if req.dynamic else lw}
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


def _engine(component: str, io: IOSpec, sizes: Sizes, req: Request, g: int, chunk: int, downscale: int) -> EnginePlan:
    lo, opt, hi = _dims(component, req, g, chunk, downscale)
    measured = sizes.measured_for(component, hi)
    if measured is not None:
        act, src = measured, "measured"
    else:
        act, src = int(sizes.estimate(component, hi) * MARGIN), sizes.source
    w = sizes.weights[component]
    return EnginePlan(component, lo, opt, hi, w, w, act, src, _io_bytes(io, hi))


def _fit(
    io: Mapping[str, IOSpec], sizes: Sizes, req: Request, vram: int, residency: str, g: int, downscale: int, stream: bool
) -> Plan | None:
    budget = vram - RESERVE
    for chunk in range(min(req.frames, MAX_VAE_CHUNK), 0, -1):
        engines = tuple(_engine(c, io[c], sizes, req, g, chunk, downscale) for c in io)
        plan = Plan(vram, budget, req, residency, g, chunk, 0, engines, ())
        left = budget - plan.peak
        if stream:
            unet = plan.engine("unet")
            keep = min(unet.weight_bytes, left + unet.weight_bytes - MIN_WORKSPACE)
            if keep < MIN_STREAM_BUDGET:
                continue
            streamed = EnginePlan(**{**unet.__dict__, "resident_weight_bytes": keep})
            engines = tuple(streamed if e.component == "unet" else e for e in engines)
            plan = Plan(vram, budget, req, residency, g, chunk, 0, engines, ())
            left = budget - plan.peak
        if left >= MIN_WORKSPACE:
            return Plan(vram, budget, req, residency, g, chunk, min(left, MAX_WORKSPACE), engines, ())
    return None


_ORDER = (("resident", 2, False), ("sequential", 2, False), ("resident", 1, False), ("sequential", 1, False),
          ("sequential", 2, True), ("sequential", 1, True))  # fmt: skip


def plan(io: Mapping[str, IOSpec], sizes: Sizes, req: Request, vram: int, downscale: int = 8, multiple: int = 64) -> Plan:
    """The fastest way to run `req` within `vram` bytes; UsageError saying what would fit when nothing does."""
    for name, value in (("frames", req.frames), ("height", req.height), ("width", req.width)):
        if value <= 0:
            raise UsageError(f"--{name} {value}: must be positive")
    for name, value in (("height", req.height), ("width", req.width)):
        if value % multiple:
            raise UsageError(f"--{name} {value}: must be a multiple of {multiple}")
    if vram < RESERVE + MIN_WORKSPACE:
        raise UsageError(f"--vram {fmt(vram)} is below the {fmt(RESERVE)} reserved for the CUDA context and TensorRT "
                         f"plus the {fmt(MIN_WORKSPACE)} minimum workspace: give at least {fmt(RESERVE + MIN_WORKSPACE)}")
    tried: list[str] = []
    order = [o for o in _ORDER if o[1] == 1] if req.unguided else list(_ORDER)  # unguided: batch 1 is all it runs
    for residency, g, stream in order:
        p = _fit(io, sizes, req, vram, residency, g, downscale, stream)
        if p is not None and stream and not req.unguided:  # streaming: fewest weight bytes per step wins
            alt = _fit(io, sizes, req, vram, residency, 3 - g, downscale, stream)
            if alt is not None and _streamed_per_step(alt) < _streamed_per_step(p):
                p, g = alt, alt.guidance_batch
        if p is None:
            tried.append(f"{residency}/guidance batch {g}{' /streaming' if stream else ''}")
            continue
        why = []
        if tried:
            why.append(f"did not fit: {', '.join(tried)}")
        why.append(
            "all engines resident: no per-generation loading" if residency == "resident"
            else "engines loaded, run and freed one at a time: only one engine's weights on the card"
        )  # fmt: skip
        why.append(
            "one unguided batch-1 UNet call per step (few-step sampler)" if req.unguided
            else "cond + uncond in one batch-2 UNet call" if g == 2 else "two batch-1 UNet calls: half the activations"
        )  # fmt: skip
        if p.vae_chunk < min(req.frames, MAX_VAE_CHUNK):
            why.append(f"VAE decodes {p.vae_chunk} frames per call to fit")
        if stream:
            why.append("the UNet's weights do not fit beside its activations: TensorRT weight streaming")
        src = {e.activation_source for e in p.engines}
        why.append(f"activations from {'/'.join(sorted(src))}" + (f" x {MARGIN} margin" if src != {"measured"} else ""))
        return Plan(p.vram, p.budget, req, residency, g, p.vae_chunk, p.workspace, p.engines, tuple(why))
    raise UsageError(_nothing_fits(io, sizes, req, vram, downscale, multiple))


def _streamed_per_step(p: Plan) -> int:
    unet = p.engine("unet")
    return (2 // p.guidance_batch) * (unet.weight_bytes - unet.resident_weight_bytes)


def _fits(io: Mapping[str, IOSpec], sizes: Sizes, req: Request, vram: int, downscale: int) -> bool:
    """The cheapest arrangements: one engine at a time, guidance batch 1, with or without weight streaming (a UNet
    smaller than MIN_STREAM_BUDGET is never streamed, so streaming alone would never fit it)."""
    return any(_fit(io, sizes, req, vram, "sequential", 1, downscale, s) is not None for s in (False, True))


def _least(fits: Callable[[int], bool], lo: int, hi: int) -> int | None:
    """The least n in [lo, hi] with fits(n), for a monotone `fits`; None if even hi does not fit. O(log(hi - lo))."""
    if lo > hi or not fits(hi):
        return None
    while lo < hi:
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if fits(mid) else (mid + 1, hi)
    return lo


def _nothing_fits(io: Mapping[str, IOSpec], sizes: Sizes, req: Request, vram: int, downscale: int, multiple: int) -> str:
    # Bisection, not a walk: a request for a huge video answers at once instead of stepping 256 MiB at a time to 16 TiB.
    steps = _least(lambda k: _fits(io, sizes, req, vram + k * 256 * MiB, downscale), 0, (1 << 44) // (256 * MiB))
    need = vram + steps * 256 * MiB if steps is not None else 1 << 44
    k = _least(lambda k: _fits(io, sizes, Request(req.frames - k, req.height, req.width), vram, downscale), 1, req.frames - 1)
    frames = req.frames - k if k is not None else 0  # the most frames that fit at this size; 0: none
    size = None
    for k in range(1, 64):  # shrink both sides in steps of `multiple`, keeping roughly the aspect ratio
        h = max(multiple, (req.height * (64 - k) // 64) // multiple * multiple)
        w = max(multiple, (req.width * (64 - k) // 64) // multiple * multiple)
        if _fits(io, sizes, Request(req.frames, h, w), vram, downscale):
            size = (w, h)
            break
    would = []
    if frames:
        would.append(f"{frames} frames at {req.width}x{req.height}")
    if size:
        would.append(f"{req.frames} frames at {size[0]}x{size[1]}")
    return (
        f"{req.frames} frames at {req.width}x{req.height} does not fit in {fmt(vram)} of VRAM even with guidance batch 1, "
        f"VAE chunk 1 and weight streaming (needs {'about ' + fmt(need) if steps is not None else 'more than 16 TiB'}); "
        + (f"what fits in {fmt(vram)}: {' or '.join(would)}" if would else f"nothing fits in {fmt(vram)}")
    )
