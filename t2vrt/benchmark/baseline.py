"""The PyTorch eager baseline: the checkpoint a bundle came from, run stage by stage as t2vrt's runtime runs it.

Same token ids (the bundle's tokenizer), same initial latents, same DDIM timesteps and alphas, the same guidance
batching and VAE chunking; fp16 with F.scaled_dot_product_attention (the models' attention) on CUDA, fp32 on the CPU.
Imported only for `--baseline torch`: the runtime never imports torch.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from t2vrt.errors import UsageError
from t2vrt.manifest import Manifest
from t2vrt.runtime import schedulers
from t2vrt.runtime.denoiser import GuidedDenoiser
from t2vrt.runtime.options import GenerateOptions


class TorchCudaClock:
    """CUDA events on torch's current stream (where the baseline queues all its work)."""

    name = "CUDA events (torch)"

    def mark(self) -> torch.cuda.Event:
        ev = torch.cuda.Event(enable_timing=True)
        ev.record()
        return ev

    def elapsed(self, a: object, b: object) -> float:
        b.synchronize()  # type: ignore[attr-defined]
        return a.elapsed_time(b) / 1e3  # type: ignore[attr-defined]


def source_of(manifest: Manifest):  # -> t2vrt.models.checkpoint.Source
    """The checkpoint recorded in the bundle's manifest; UsageError when it is no longer where the export found it."""
    from t2vrt.models import checkpoint

    location = manifest.source.location
    if manifest.source.layout != "embedded" and not Path(location).is_dir():
        raise UsageError(
            f"--baseline torch needs the checkpoint this bundle was exported from, {location!r}, which is gone; "
            "use --baseline none"
        )
    return checkpoint.resolve(location)


@dataclass
class TorchBaseline:
    modules: dict[str, torch.nn.Module]
    device: torch.device
    dtype: torch.dtype
    alphas_cumprod: np.ndarray  # float64, the schedule's (same as the runtime's)
    num_train_timesteps: int

    @property
    def name(self) -> str:
        return f"torch-eager-{self.device.type}-{'fp16' if self.dtype == torch.float16 else 'fp32'}"

    @classmethod
    def from_manifest(cls, manifest: Manifest, device: str = "cpu", threads: int | None = None) -> TorchBaseline:
        from t2vrt.models.checkpoint import load_model

        dev = torch.device(device)
        if dev.type == "cuda" and not torch.cuda.is_available():
            raise UsageError("--baseline torch on cuda: this torch has no CUDA device; use --baseline none")
        if threads:
            torch.set_num_threads(threads)
        dtype = torch.float16 if dev.type == "cuda" else torch.float32
        _, modules = load_model(source_of(manifest), dtype=dtype)
        for m in modules.values():
            m.to(dev)
        acp = schedulers.alphas_cumprod(np.asarray(manifest.betas, dtype=np.float64))
        return cls(modules, dev, dtype, acp, manifest.schedule.num_train_timesteps)

    def clock(self):  # -> a harness Clock
        from t2vrt.benchmark.harness import HostClock

        return TorchCudaClock() if self.device.type == "cuda" else HostClock()

    def close(self) -> None:
        self.modules.clear()
        if self.device.type == "cuda":
            torch.cuda.empty_cache()

    @torch.inference_mode()
    def encode(self, tokens: np.ndarray) -> torch.Tensor:
        """(n, L) token ids -> (n, L, C) embeddings in the compute dtype, on the device."""
        return self.modules["text_encoder"](torch.from_numpy(tokens).to(self.device))

    @torch.inference_mode()
    def denoise(self, x: np.ndarray, emb: torch.Tensor, o: GenerateOptions, callback=None) -> torch.Tensor:
        """DDIM (eta = 0) with classifier-free guidance; emb is (2, L, C) = [cond, uncond] or (1, L, C) unguided."""
        if o.scheduler != "ddim" or o.eta != 0.0:
            raise UsageError("the torch baseline runs deterministic DDIM only (--scheduler ddim, eta 0)")
        unet = self.modules["unet"]
        lat = torch.from_numpy(x).to(self.device, torch.float32)  # the sampler state stays fp32, as the runtime's
        timesteps = schedulers.ddim_timesteps(self.num_train_timesteps, o.num_inference_steps)

        def call(x: torch.Tensor, t: float, e: torch.Tensor) -> torch.Tensor:
            return unet(x, torch.full((x.shape[0],), t, device=self.device), e).float()

        uncond = emb[1:2] if o.guided else None
        eps = GuidedDenoiser(call, emb[:1], uncond, o.guidance_scale, o.guidance_batch, concat=torch.cat)
        for i, t in enumerate(timesteps):
            e = eps(lat.to(self.dtype), float(t))
            a_t = float(self.alphas_cumprod[int(t)])
            a_prev = float(
                self.alphas_cumprod[int(timesteps[i + 1])] if i + 1 < len(timesteps) else self.alphas_cumprod[0]
            )
            x0 = (lat - (1.0 - a_t) ** 0.5 * e) / a_t**0.5  # DDIM eq. (12), predicted x_0
            lat = a_prev**0.5 * x0 + (1.0 - a_prev) ** 0.5 * e  # DDIM eq. (12) with sigma = 0
            if callback is not None:
                callback(i + 1, len(timesteps))
        return lat

    @torch.inference_mode()
    def decode(self, lat: torch.Tensor, chunk: int = 0) -> np.ndarray:
        """(1, c, f, h, w) -> (f, H, W, 3) uint8 on the host, chunked as the runtime chunks."""
        from t2vrt.runtime.video import to_uint8

        z = lat[0].permute(1, 0, 2, 3).contiguous().to(self.dtype)  # (f, c, h, w)
        n = chunk or z.shape[0]
        images = torch.cat([self.modules["vae_decoder"](z[i : i + n]).float() for i in range(0, z.shape[0], n)])
        return to_uint8(images.cpu().numpy())
