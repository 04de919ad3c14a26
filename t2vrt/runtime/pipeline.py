"""Pipeline: prompt -> text embeddings -> temporal DDIM loop with classifier-free guidance -> VAE decode -> Video.

The backend (ONNX Runtime or TensorRT) hides behind the denoiser closure `eps(x, t)`; the sampler math is the pure
functions of t2vrt.runtime.schedulers. Torch-free.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from t2vrt.errors import T2VError
from t2vrt.manifest import Manifest, load_manifest
from t2vrt.runtime import schedulers
from t2vrt.runtime.backend import Backend
from t2vrt.runtime.options import GenerateOptions, check_latents, resolve_options
from t2vrt.runtime.tokenizer import Tokenizer
from t2vrt.runtime.video import save_video, to_uint8

StepCallback = Callable[[int, int], None]  # (steps done, total steps)
SAMPLERS = {"ddim": "ddim", "dpm++": "dpmpp-2m"}  # user-facing name -> t2vrt.runtime.schedulers name


@dataclass
class Video:
    frames: np.ndarray  # (frames, height, width, 3) uint8
    fps: int
    options: GenerateOptions
    backend: str
    timings: dict[str, float] = field(default_factory=dict)  # seconds per stage; "step" = mean per denoising step

    def save(self, path: str | Path, fps: int | None = None, overwrite: bool = False) -> Path:
        """Write by extension: .mp4 (h264), .webm, .gif, or a directory of PNGs."""
        return save_video(self.frames, path, fps=fps or self.fps, overwrite=overwrite)


def _finite(stage: str, arr: np.ndarray, where: str = "") -> np.ndarray:
    if not np.isfinite(arr).all():
        raise T2VError(f"{stage} produced NaN or inf{where}: the bundle or engine is numerically broken at this size")
    return arr


class Pipeline:
    def __init__(self, manifest: Manifest, backend: Backend, tokenizer: Tokenizer, selection_note: str = ""):
        self.manifest = manifest
        self.backend = backend
        self.tokenizer = tokenizer
        self.selection_note = selection_note  # why this backend ("auto" says which and why)
        self.alphas_cumprod = schedulers.alphas_cumprod(np.asarray(manifest.schedule["betas"], dtype=np.float64))
        self.num_train_timesteps = int(manifest.schedule["num_train_timesteps"])

    @classmethod
    def from_bundle(cls, bundle: str | Path, backend: str = "auto", **backend_options: object) -> Pipeline:
        from t2vrt.runtime.select import select_backend

        manifest = load_manifest(bundle)
        tok = manifest.tokenizer
        tokenizer = Tokenizer.from_file(manifest.bundle / tok["file"], context_length=int(tok["context_length"]))
        chosen, note = select_backend(manifest, backend, **backend_options)
        return cls(manifest, chosen, tokenizer, note)

    def close(self) -> None:
        self.backend.close()

    def __enter__(self) -> Pipeline:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __call__(
        self,
        prompt: str,
        negative_prompt: str | None = None,
        num_frames: int | None = None,
        height: int | None = None,
        width: int | None = None,
        num_inference_steps: int | None = None,
        guidance_scale: float | None = None,
        eta: float = 0.0,
        seed: int = 0,
        latents: np.ndarray | None = None,
        scheduler: str = "ddim",
        guidance_batch: int | None = None,
        vae_chunk: int | None = None,
        callback: StepCallback | None = None,
    ) -> Video:
        hints = self.backend.hints()
        o = resolve_options(
            self.manifest, prompt, negative_prompt=negative_prompt, num_frames=num_frames, height=height, width=width,
            num_inference_steps=num_inference_steps, guidance_scale=guidance_scale, eta=eta, seed=seed,
            scheduler=scheduler, guidance_batch=guidance_batch or hints.guidance_batch,
            vae_chunk=vae_chunk if vae_chunk is not None else hints.vae_chunk,
        )
        rng = np.random.default_rng(o.seed)
        ds = int(self.manifest.latent["downscale"])
        shape = (1, int(self.manifest.latent["channels"]), o.num_frames, o.height // ds, o.width // ds)
        x = check_latents(latents, o, self.manifest) if latents is not None else rng.standard_normal(shape, np.float32)
        timings: dict[str, float] = {}

        t0 = time.perf_counter()
        cond, uncond = self.encode(o.prompt, o.negative_prompt if o.guided else None)
        timings["text_encode"] = time.perf_counter() - t0

        t0 = time.perf_counter()
        x = self.denoise(x, cond, uncond, o, rng, callback)
        timings["denoise"] = time.perf_counter() - t0
        timings["step"] = timings["denoise"] / o.num_inference_steps

        t0 = time.perf_counter()
        frames = self.decode(x, o.vae_chunk)
        timings["decode"] = time.perf_counter() - t0
        fps = int(self.manifest.defaults.get("fps", 8))
        return Video(frames, fps, o, self.backend.name, timings)

    def encode(self, prompt: str, negative: str | None) -> tuple[np.ndarray, np.ndarray | None]:
        """(1, L, C) embeddings of the prompt and, when guided, of the negative prompt: one call, text batch 2."""
        texts = [prompt] if negative is None else [prompt, negative]
        runner = self.backend.open("text_encoder")
        emb = _finite("text encoder", runner.run({"tokens": self.tokenizer.encode(texts)})["text_embeddings"])
        self.backend.release("text_encoder")
        return emb[:1], (emb[1:2] if negative is not None else None)

    def denoise(
        self,
        x: np.ndarray,
        cond: np.ndarray,
        uncond: np.ndarray | None,
        o: GenerateOptions,
        rng: np.random.Generator,
        callback: StepCallback | None = None,
    ) -> np.ndarray:
        unet = self.backend.open("unet")

        def call(lat: np.ndarray, t: float, emb: np.ndarray) -> np.ndarray:
            ts = np.full((lat.shape[0],), t, np.float32)
            return unet.run({"latents": lat, "timestep": ts, "text_embeddings": emb})["eps"]

        def eps(lat: np.ndarray, t: float) -> np.ndarray:
            """Classifier-free guidance: uncond + g * (cond - uncond), batched or as two calls (same result)."""
            if uncond is None:
                return call(lat, t, cond)
            if o.guidance_batch == 2:
                both = call(np.concatenate([lat, lat]), t, np.concatenate([cond, uncond]))
                e_c, e_u = both[:1], both[1:]
            else:
                e_c, e_u = call(lat, t, cond), call(lat, t, uncond)
            return e_u + np.float32(o.guidance_scale) * (e_c - e_u)

        timesteps = schedulers.sampler_timesteps(SAMPLERS[o.scheduler], self.num_train_timesteps, o.num_inference_steps)
        n = len(timesteps)

        def denoise_step(lat: np.ndarray, t: int) -> np.ndarray:
            return _finite("UNet", eps(lat, float(t)), f" at t={t}")

        def on_step(i: int, t: int, lat: np.ndarray) -> None:
            if callback is not None:
                callback(i + 1, n)

        x = schedulers.sample(
            denoise_step, x, timesteps, self.alphas_cumprod, sampler=SAMPLERS[o.scheduler], eta=o.eta, rng=rng,
            callback=on_step,
        ).astype(np.float32, copy=False)
        self.backend.release("unet")
        return x

    def decode(self, x: np.ndarray, chunk: int = 0) -> np.ndarray:
        """(1, c, f, h, w) latents -> (f, H, W, 3) uint8; frames are independent here, so chunks change memory only."""
        vae = self.backend.open("vae_decoder")
        z = np.ascontiguousarray(x[0].transpose(1, 0, 2, 3))  # (f, c, h, w)
        n = chunk or z.shape[0]
        images = [vae.run({"latents": z[i : i + n]})["images"] for i in range(0, z.shape[0], n)]
        self.backend.release("vae_decoder")
        return to_uint8(_finite("VAE decoder", np.concatenate(images)))  # (f, H, W, 3)


__all__ = ["Pipeline", "Video"]
