"""The VRAM planner: given a card's memory, the engines' sizes and the requested video, decide how to run it.

Pure Python: no GPU, no TensorRT. Decisions, tried fastest first until one fits the budget:
1. residency: all three engines resident (one shared activation block, the largest engine's) or load, run and free
   one engine at a time ("sequential": each stage needs only its own weights);
2. guidance: cond + uncond as one batch-2 UNet call, or two batch-1 calls (half the UNet activations);
3. VAE chunk: the most frames per decoder call (at most 8, more buys nothing) that still fits;
4. weight streaming: when even the cheapest of the above leaves the UNet's weights too big, TensorRT keeps a budget
   of them on the card and streams the rest per call (slow, but it runs).
Shapes are static (min = opt = max: fastest) unless asked for a range.

What a plan holds and how its stages are counted: t2vrt.engine.plans. The advice when nothing fits (the
most frames, or the largest size, that would) is at the end of this file.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import replace

from t2vrt.engine.plans import (
    BUILDER_RESERVE,
    CONTEXT_RESERVE,
    MARGIN,
    MAX_VAE_CHUNK,
    MAX_WORKSPACE,
    MIN_STREAM_BUDGET,
    MIN_WORKSPACE,
    RUNTIME_RESERVE,
    EnginePlan,
    MiB,
    Plan,
    Request,
    fmt,
)
from t2vrt.engine.sizes import Sizes
from t2vrt.errors import UsageError
from t2vrt.iospec import IOSpec

_ITEMSIZE = {"float32": 4, "float16": 2, "int64": 8, "int32": 4}


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
    parts = p.parts().values()
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
