"""Everything the planner reads, from a bundle (or, to plan before exporting, a model preset name)."""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

from t2vrt import iospec
from t2vrt.components import io_specs
from t2vrt.config import PRESETS, Defaults, ModelConfig
from t2vrt.engine import store
from t2vrt.engine.planner import plan
from t2vrt.engine.plans import CONTEXT_RESERVE, MAX_VAE_CHUNK, Plan, Request, fmt, parse_bytes
from t2vrt.engine.sizes import Sizes, analytic_sizes, bundle_sizes
from t2vrt.errors import UsageError
from t2vrt.manifest import Manifest, load_manifest
from t2vrt.runtime.cuda import GpuInfo


@dataclass(frozen=True)
class Facts:
    name: str  # the bundle path or preset name
    model: ModelConfig
    io: dict[str, iospec.IOSpec]
    sizes: Sizes
    manifest: Manifest | None

    @property
    def downscale(self) -> int:
        return self.model.vae.downscale

    @property
    def multiple(self) -> int:
        """Height and width must be multiples of this (latent downscale x UNet downsampling)."""
        return self.model.size_multiple

    @property
    def defaults(self) -> Defaults:
        return self.model.defaults


def preset_facts(name: str) -> Facts:
    if name not in PRESETS:
        raise UsageError(f"{name!r} is neither a bundle directory nor a model preset ({', '.join(PRESETS)})")
    cfg = PRESETS[name]
    return Facts(name, cfg, io_specs(cfg), analytic_sizes(cfg), None)


def bundle_facts(bundle: Path, calibrate: Request | None = None, target: store.Target | None = None) -> Facts:
    """A bundle's facts; activations calibrated by ONNX liveness at `calibrate`; measured memory from `target`'s engines."""
    m = load_manifest(bundle)
    if "fp16" not in m.precisions:
        raise UsageError(
            f"bundle {bundle} has no fp16 ONNX: re-export it with --precision fp16 to plan TensorRT engines"
        )
    downscale = m.model.vae.downscale
    at = None
    if calibrate is not None:
        lh, lw = calibrate.height // downscale, calibrate.width // downscale
        at = {
            "text_encoder": {"text_batch": 2},
            "unet": {"batch": 2, "frames": calibrate.frames, "latent_height": lh, "latent_width": lw},
            "vae_decoder": {"vae_batch": min(calibrate.frames, MAX_VAE_CHUNK), "latent_height": lh, "latent_width": lw},
        }
        if "vae_encoder" in m.components:  # optional: bundles exported before video-to-video lack it
            at["vae_encoder"] = dict(at["vae_decoder"])
    sizes = bundle_sizes(m, at)
    if target is not None:
        sizes = replace(sizes, measured=store.measured_memory(bundle, target))
    io = {n: c.io for n, c in m.components.items()}
    return Facts(str(bundle), m.model, io, sizes, m)


def request_from(facts: Facts, frames: int | None, height: int | None, width: int | None, dynamic: bool) -> Request:
    d = facts.defaults

    def pick(given: int | None, default: int) -> int:
        return default if given is None else given  # 0 is a value to refuse, not "unset"

    from t2vrt.runtime.samplers import SAMPLERS

    sampler = SAMPLERS.get(d.sampler)
    unguided = sampler is not None and not sampler.guided  # a few-step bundle plans batch-1 UNets
    return Request(pick(frames, d.num_frames), pick(height, d.height), pick(width, d.width), dynamic, unguided)


def load_facts(source: str, calibrate: Request | None = None, target: store.Target | None = None) -> Facts:
    path = Path(source)
    if path.is_dir():
        return bundle_facts(path, calibrate, target)
    return preset_facts(source)


def make_plan(facts: Facts, req: Request, vram: int, free: bool = False) -> Plan:
    """The plan for `vram` bytes: the card's size (the CUDA context comes out of it), or with free=True the free
    memory cudaMemGetInfo measured (the context already out of it)."""
    return plan(facts.io, facts.sizes, req, vram, facts.downscale, facts.multiple, free)


@dataclass(frozen=True)
class Memory:
    """What a plan is for: `bytes` of the card's size (--vram) or, with free=True, measured free memory."""

    bytes: int
    free: bool
    source: str  # where the figure came from, for the user


def card_memory(text: str | None, gpu: GpuInfo | None = None) -> Memory:
    """--vram (the card's size, as sold) when given, else the free memory of `gpu` (or this machine's card).
    On a card (`gpu` given) a --vram larger than what is free now is planned as the free memory, saying so: engines
    planned for memory that is not there would only fail at generate."""
    if gpu is None and not text:
        from t2vrt.engine.device import detect_gpu

        gpu = detect_gpu()
        if gpu is None:
            raise UsageError("no NVIDIA GPU detected: give the card's memory with --vram (e.g. --vram 6GiB)")
    where = "" if gpu is None else f"{gpu.name}, {gpu.memory_gib} GiB"
    if not text:
        assert gpu is not None
        return Memory(gpu.free_bytes, True, f"free memory on {where}")
    vram = parse_bytes(text)
    if gpu is not None and vram - CONTEXT_RESERVE > gpu.free_bytes:
        return Memory(
            gpu.free_bytes,
            True,
            f"--vram {fmt(vram)} is more than the {fmt(gpu.free_bytes)} free on {where}: planned for the free memory",
        )
    return Memory(vram, False, f"--vram {fmt(vram)}: the card's size, less {fmt(CONTEXT_RESERVE)} for the CUDA context")
