"""The whole model: three component configs, the noise schedule and the generation defaults, by preset name.

Torch-free, so the planner (`t2vrt plan ms-1.7b`) and the runtime read the same presets the export builds from.
The latent shape and the size multiple are defined here once.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from t2vrt.config.parse import from_dict, to_dict
from t2vrt.config.text import TEXT_ENCODER_PRESETS, TextEncoderConfig
from t2vrt.config.unet import UNET_PRESETS, UNet3DConfig
from t2vrt.config.vae import VAE_PRESETS, VAEConfig


@dataclass(frozen=True)
class ScheduleConfig:
    """betas = linspace(sqrt(beta_start), sqrt(beta_end), num_train_timesteps) ** 2 (hard-coded in the original)."""

    num_train_timesteps: int = 1000
    beta_start: float = 0.00085
    beta_end: float = 0.012
    beta_schedule: str = "scaled_linear"
    prediction_type: str = "epsilon"


@dataclass(frozen=True)
class Defaults:
    """What `generate` uses when the user says nothing; the bundle's manifest carries them."""

    num_frames: int = 16
    height: int = 256
    width: int = 256
    num_inference_steps: int = 50
    guidance_scale: float = 9.0
    negative_prompt: str = ""
    fps: int = 8
    sampler: str = "ddim"


@dataclass(frozen=True)
class ModelConfig:
    name: str
    unet: UNet3DConfig
    text_encoder: TextEncoderConfig
    vae: VAEConfig
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    defaults: Defaults = field(default_factory=Defaults)

    @property
    def latent_channels(self) -> int:
        return self.unet.in_channels

    @property
    def size_multiple(self) -> int:
        """Pixels per latent (8) times the UNet's total downsampling (2 ** 3): skip connections must line up."""
        return self.vae.downscale * self.unet.downsampling

    def latent_shape(self, frames: int, height: int, width: int, batch: int = 1) -> tuple[int, int, int, int, int]:
        """(batch, channels, frames, height / 8, width / 8): the sampler's array."""
        ds = self.vae.downscale
        return (batch, self.latent_channels, frames, height // ds, width // ds)

    def to_dict(self) -> dict[str, Any]:
        return to_dict(self)

    @classmethod
    def from_dict(cls, data: Any, where: str = "model config") -> ModelConfig:
        from t2vrt.config.checks import check_model_config  # values, not just types (untrusted manifests)

        return check_model_config(from_dict(cls, data, where), where)


def preset(name: str) -> ModelConfig:
    if name not in PRESETS:
        raise KeyError(f"unknown model preset {name!r}; known: {', '.join(PRESETS)}")
    return PRESETS[name]


def _make(name: str, defaults: Defaults) -> ModelConfig:
    return ModelConfig(name, UNET_PRESETS[name], TEXT_ENCODER_PRESETS[name], VAE_PRESETS[name], defaults=defaults)


PRESETS: dict[str, ModelConfig] = {
    "ms-1.7b": _make("ms-1.7b", Defaults()),
    "zeroscope-576w": _make(
        "zeroscope-576w", Defaults(num_frames=24, height=320, width=576, num_inference_steps=40, guidance_scale=9.0)
    ),
    "tiny": _make("tiny", Defaults(num_frames=8, height=64, width=64, num_inference_steps=10, guidance_scale=9.0)),
}
