"""What one generation asks for, filled from the call and the bundle's defaults, and checked before any work."""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np

from t2vrt.errors import UsageError
from t2vrt.manifest import Manifest
from t2vrt.runtime import samplers
from t2vrt.runtime.backend import Hints

# Past ~30 the video saturates; the bound keeps uncond + g * (cond - uncond) far from float32's 3.4e38 for any eps a
# working UNet gives (t2vrt.safety.finite blames the guidance if it overflows anyway).
MAX_GUIDANCE = 1000.0


@dataclass(frozen=True)
class GenerateOptions:
    prompt: str
    negative_prompt: str
    num_frames: int
    height: int
    width: int
    num_inference_steps: int
    guidance_scale: float
    eta: float = 0.0
    seed: int = 0
    scheduler: str = "ddim"
    guidance_batch: int = 2  # 2: cond + uncond in one UNet call; 1: two calls (half the activation memory)
    vae_chunk: int = 0  # frames per VAE call; 0 = all at once

    @property
    def guided(self) -> bool:
        """Guidance 1.0 is the conditional prediction alone: the unconditional pass is skipped."""
        return self.guidance_scale != 1.0


def resolve_options(manifest: Manifest, prompt: str, hints: Hints | None = None, **given: object) -> GenerateOptions:
    """Fill unset (None) fields from the manifest's defaults and validate everything against the bundle.

    `given` is what the caller chose; `hints` (the backend's memory choices) fill guidance_batch and vae_chunk only
    where the caller left them unset, and are never mistaken for a choice: an explicit guidance batch 2 for an
    unguided sampler is an error, a backend's hint of 2 is not (such a run is one batch-1 UNet call per step)."""
    d = manifest.defaults
    base = GenerateOptions(
        prompt=prompt,
        negative_prompt=d.negative_prompt,
        num_frames=d.num_frames,
        height=d.height,
        width=d.width,
        num_inference_steps=d.num_inference_steps,
        guidance_scale=d.guidance_scale,
        scheduler=d.sampler,
    )
    values = {k: v for k, v in given.items() if v is not None}
    unknown = sorted(set(values) - set(GenerateOptions.__dataclass_fields__))
    if unknown:
        raise TypeError(f"unknown generation option(s): {', '.join(unknown)}")
    opts = replace(base, **values)  # type: ignore[arg-type]
    validate(opts, manifest)
    guided = samplers.SAMPLERS[opts.scheduler].guided
    if "guidance_batch" in values:
        check_guidance_batch(opts, guided)
    else:
        hinted = hints.guidance_batch if hints is not None else None
        opts = replace(opts, guidance_batch=1 if not guided else hinted or opts.guidance_batch)
    if "vae_chunk" not in values and hints is not None and hints.vae_chunk is not None:
        opts = replace(opts, vae_chunk=hints.vae_chunk)
    validate(opts, manifest)  # a backend's hint is checked like a choice
    return opts


def check_guidance_batch(o: GenerateOptions, guided: bool) -> None:
    """A guidance batch the caller chose: 2 (cond + uncond in one call) means nothing to an unguided sampler."""
    if not guided and o.guidance_batch == 2:
        raise UsageError(
            f"guidance batch 2 (cond + uncond in one UNet call) does not apply to the {o.scheduler} sampler: it runs "
            "one unguided batch-1 UNet pass per step (a few-step distillation); leave --guidance-batch unset"
        )


def validate(o: GenerateOptions, manifest: Manifest) -> None:
    if not isinstance(o.prompt, str):
        raise UsageError(f"prompt must be a string, got {type(o.prompt).__name__}")
    m = manifest.model.size_multiple
    for name, v in (("height", o.height), ("width", o.width)):
        if not isinstance(v, int) or v < m or v % m:
            raise UsageError(
                f"{name} must be a positive multiple of {m} (the UNet downsamples 8x in latent space), got {v}"
            )
    if o.scheduler not in samplers.SAMPLERS:
        raise UsageError(f"scheduler must be one of {', '.join(samplers.SAMPLERS)}, got {o.scheduler!r}")
    sampler = samplers.SAMPLERS[o.scheduler]
    _, max_steps = sampler.steps_range(manifest.schedule.num_train_timesteps)
    for name, v, hi in (("frames", o.num_frames, 1024), ("steps", o.num_inference_steps, max_steps)):
        if not isinstance(v, int) or not 1 <= v <= hi:
            raise UsageError(f"{name} must be an integer in 1..{hi}, got {v}")
    if not math.isfinite(o.guidance_scale) or not 1.0 <= o.guidance_scale <= MAX_GUIDANCE:
        raise UsageError(
            f"guidance must be in 1..{MAX_GUIDANCE:g} (1 = no guidance; the model's default is 9), got {o.guidance_scale}"
        )
    if not sampler.guided and (o.guidance_scale != 1.0 or o.negative_prompt):
        what = f"guidance {o.guidance_scale:g}" if o.guidance_scale != 1.0 else "negative prompt"
        raise UsageError(
            f"the {o.scheduler} sampler runs one unguided UNet pass per step (a few-step distillation): it takes no "
            f"{what}; leave guidance at 1 and the negative prompt empty"
        )
    if not math.isfinite(o.eta) or not 0.0 <= o.eta <= 1.0:
        raise UsageError(f"eta must be in [0, 1] (0 = deterministic DDIM), got {o.eta}")
    if o.eta != 0.0 and not sampler.stochastic:
        stochastic = ", ".join(n for n, s in samplers.SAMPLERS.items() if s.stochastic)
        raise UsageError(f"eta applies to {stochastic} only; {o.scheduler} is deterministic")
    if o.guidance_batch not in (1, 2):
        raise UsageError(f"guidance batch must be 1 (two UNet calls) or 2 (one batched call), got {o.guidance_batch}")
    if not isinstance(o.vae_chunk, int) or o.vae_chunk < 0:
        raise UsageError(f"VAE chunk must be >= 0 frames (0 = all at once), got {o.vae_chunk}")
    if not isinstance(o.seed, int) or not 0 <= o.seed < 2**63:
        raise UsageError(f"seed must be an integer in 0..2**63-1, got {o.seed}")


def check_latents(latents: np.ndarray, o: GenerateOptions, manifest: Manifest) -> np.ndarray:
    ds = manifest.model.vae.downscale
    want = manifest.model.latent_shape(o.num_frames, o.height, o.width)
    arr = np.asarray(latents)
    if arr.shape != want:
        raise UsageError(
            f"latents must have shape {want} (1, channels, frames, height/{ds}, width/{ds}), got {arr.shape}"
        )
    if not np.isfinite(arr).all():
        raise UsageError("latents contain NaN or inf")
    return np.ascontiguousarray(arr, dtype=np.float32)
