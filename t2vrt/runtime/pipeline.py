"""Pipeline: prompt -> text embeddings -> sampler loop over the guided denoiser -> VAE decode -> Video.

The backend (ONNX Runtime or TensorRT) hides behind the guided denoiser `eps(x, t)` (t2vrt.runtime.denoiser); the
sampler is one entry of t2vrt.runtime.samplers. Torch-free.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from t2vrt.manifest import Manifest, load_manifest, verify_tokenizer
from t2vrt.runtime import samplers, schedulers, vid2vid_stage
from t2vrt.runtime.backend import Backend, Runner
from t2vrt.runtime.backends import BackendOptions, select_backend
from t2vrt.runtime.denoiser import GuidedDenoiser
from t2vrt.runtime.options import GenerateOptions, check_latents, resolve_options
from t2vrt.runtime.tokenizer import Tokenizer
from t2vrt.runtime.video import save_video, to_uint8
from t2vrt.safety import finite

StepCallback = Callable[[int, int], None]  # (steps done, total steps)


@dataclass
class Video:
    frames: np.ndarray  # (frames, height, width, 3) uint8
    fps: int
    options: GenerateOptions
    backend: str
    timings: dict[str, float] = field(default_factory=dict)  # seconds per stage; "step" = mean per denoising step
    record: dict[str, Any] | None = None  # prompt and parameters, written into .mp4/.webm/.gif (t2vrt.runtime.metadata)
    latents: np.ndarray | None = None  # (1, c, f, h, w): the final latents the frames were decoded from

    def save(self, path: str | Path, fps: int | None = None, overwrite: bool = False) -> Path:
        """Write by extension: .mp4 (h264), .webm, .gif, or a directory of PNGs."""
        return save_video(self.frames, path, fps=fps or self.fps, overwrite=overwrite, metadata=self.record)


def _graph(runner: Runner, stage: str, inputs: dict[str, np.ndarray], output: str, at: str = "") -> np.ndarray:
    """Run one graph; NaN/inf in its output is blamed on its input or on the graph (t2vrt.safety.finite)."""
    return finite.check_graph_output(stage, runner.run(inputs)[output], inputs, at)


class Pipeline:
    def __init__(self, manifest: Manifest, backend: Backend, tokenizer: Tokenizer, selection_note: str = ""):
        self.manifest = manifest
        self.backend = backend
        self.tokenizer = tokenizer
        self.selection_note = selection_note  # why this backend ("auto" says which and why)
        self.alphas_cumprod = schedulers.alphas_cumprod(np.asarray(manifest.betas, dtype=np.float64))
        self.num_train_timesteps = manifest.schedule.num_train_timesteps

    @classmethod
    def from_bundle(cls, bundle: str | Path, backend: str = "auto", options: BackendOptions | None = None) -> Pipeline:
        manifest = load_manifest(bundle)
        verify_tokenizer(manifest)
        tokenizer = Tokenizer.from_file(manifest.tokenizer_path, context_length=manifest.tokenizer.context_length)
        chosen, note = select_backend(manifest, backend, options)
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
        scheduler: str | None = None,
        guidance_batch: int | None = None,
        vae_chunk: int | None = None,
        callback: StepCallback | None = None,
        init_video: vid2vid_stage.ClipSource | None = None,
        strength: float | None = None,
        start_frame: int = 0,
        init_image: vid2vid_stage.ClipSource | None = None,
        hold_frames: int | None = None,
        hold_latents: np.ndarray | None = None,
        posterior_noise: vid2vid_stage.PosteriorNoise = None,
        hold_noise: Sequence[np.ndarray] | None = None,
        fit: str = "crop",
    ) -> Video:
        """One video. With `init_video` (a clip path or uint8 frames) it is video-to-video: the clip's frames at the
        requested size are encoded, noised with `latents` (or the seed's draw) to where `strength` of the schedule
        remains, and denoised from there; `posterior_noise` is the VAE posterior's draw ("mean": none). With
        `init_image` the first `hold_frames` frames hold the image's latents at every step (image-to-video);
        `hold_latents` (1, c, k, h, w) holds given latents instead (continuation, t2vrt.runtime.extend)."""
        init = vid2vid_stage.Init(
            init_video, init_image, hold_latents, strength, start_frame, hold_frames, posterior_noise, hold_noise, fit
        )
        init.check()
        hints = self.backend.hints()
        o = resolve_options(
            self.manifest,
            prompt,
            negative_prompt=negative_prompt,
            num_frames=num_frames,
            height=height,
            width=width,
            num_inference_steps=num_inference_steps,
            guidance_scale=guidance_scale,
            eta=eta,
            seed=seed,
            scheduler=scheduler,
            guidance_batch=guidance_batch,
            vae_chunk=vae_chunk,
            hints=hints,
        )
        rng = np.random.default_rng(o.seed)
        shape = self.manifest.model.latent_shape(o.num_frames, o.height, o.width)
        x = check_latents(latents, o, self.manifest) if latents is not None else rng.standard_normal(shape, np.float32)
        timings: dict[str, float] = {}
        t0 = time.perf_counter()
        start = vid2vid_stage.prepare(init, o, x, rng, self.manifest, self.backend, self.alphas_cumprod)
        if start is not None:
            x = start.x
            timings["init_encode"] = time.perf_counter() - t0

        t0 = time.perf_counter()
        cond, uncond = self.encode(o.prompt, o.negative_prompt if o.guided else None)
        timings["text_encode"] = time.perf_counter() - t0

        t0 = time.perf_counter()
        x = self.denoise(x, cond, uncond, o, rng, callback, start)
        timings["denoise"] = time.perf_counter() - t0
        timings["step"] = timings["denoise"] / (o.num_inference_steps if start is None else len(start.timesteps))

        t0 = time.perf_counter()
        frames = self.decode(x, o.vae_chunk)
        timings["decode"] = time.perf_counter() - t0
        fps = self.manifest.defaults.fps
        meta = vid2vid_stage.record(o, self.manifest, start.record if start is not None else None, fps)
        return Video(frames, fps, o, self.backend.name, timings, meta, x)

    def _stage(self, component: str) -> _Stage:
        return _Stage(self.backend, component)

    def encode(self, prompt: str, negative: str | None) -> tuple[np.ndarray, np.ndarray | None]:
        """(1, L, C) embeddings of the prompt and, when guided, of the negative prompt: one call, text batch 2."""
        texts = [prompt] if negative is None else [prompt, negative]
        with self._stage("text_encoder") as runner:
            emb = _graph(runner, "text encoder", {"tokens": self.tokenizer.encode(texts)}, "text_embeddings")
        return emb[:1], (emb[1:2] if negative is not None else None)

    def denoise(
        self,
        x: np.ndarray,
        cond: np.ndarray,
        uncond: np.ndarray | None,
        o: GenerateOptions,
        rng: np.random.Generator,
        callback: StepCallback | None = None,
        start: vid2vid_stage.Start | None = None,
    ) -> np.ndarray:
        sampler = samplers.get(o.scheduler)
        if start is not None:  # video-to-video / held frames: the kept tail of the schedule
            timesteps = start.timesteps
        else:
            timesteps = sampler.timesteps(self.num_train_timesteps, o.num_inference_steps)
        n = len(timesteps)

        last: list[np.ndarray] = []  # (x, eps) of the step in progress, to blame a non-finite step on its cause

        def on_step(i: int, t: int, lat: np.ndarray) -> None:
            finite.check_step(last[0], last[1], lat, t)
            if callback is not None:
                callback(i + 1, n)

        with self._stage("unet") as unet:

            def call(lat: np.ndarray, t: float, emb: np.ndarray) -> np.ndarray:
                ts = np.full((lat.shape[0],), t, np.float32)
                return _graph(
                    unet, "UNet", {"latents": lat, "timestep": ts, "text_embeddings": emb}, "eps", f" at t={t:g}"
                )

            guided = GuidedDenoiser(call, cond, uncond, o.guidance_scale, o.guidance_batch)

            def eps(lat: np.ndarray, t: int) -> np.ndarray:
                with np.errstate(over="ignore", invalid="ignore"):  # an overflow is reported below, not warned about
                    e = guided(lat, float(t))
                if not finite.finite(e):  # the UNet's own outputs were finite (checked in call): the guidance sum
                    raise finite.guidance_overflow(o.guidance_scale, f" at t={t}")
                last[:] = [lat, e]
                return e

            model = eps if start is None else start.eps(eps, self.alphas_cumprod)  # holds the known frames
            x = samplers.sample(
                model, x, timesteps, self.alphas_cumprod, sampler=o.scheduler, eta=o.eta, rng=rng, callback=on_step
            )
        if start is not None:
            x = start.finish(x, self.alphas_cumprod)
        return x.astype(np.float32, copy=False)

    def decode(self, x: np.ndarray, chunk: int = 0) -> np.ndarray:
        """(1, c, f, h, w) latents -> (f, H, W, 3) uint8; frames are independent here, so chunks change memory only."""
        z = np.ascontiguousarray(x[0].transpose(1, 0, 2, 3))  # (f, c, h, w)
        n = chunk or z.shape[0]
        with self._stage("vae_decoder") as vae:
            images = [vae.run({"latents": z[i : i + n]})["images"] for i in range(0, z.shape[0], n)]
        return to_uint8(
            finite.check_graph_output("VAE decoder", np.concatenate(images), {"latents": z})
        )  # (f, H, W, 3)


class _Stage:
    """A backend's runner for one stage, released when the stage ends, even when it fails."""

    def __init__(self, backend: Backend, component: str) -> None:
        self.backend, self.component = backend, component

    def __enter__(self) -> Runner:
        return self.backend.open(self.component)

    def __exit__(self, *exc: object) -> None:
        self.backend.release(self.component)


__all__ = ["Pipeline", "Video"]
