"""The whole model: three component configs, the noise schedule and the generation defaults, by preset name."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from t2vrt.models.text_encoder import TEXT_ENCODER_PRESETS, TextEncoderConfig
from t2vrt.models.unet3d import UNET_PRESETS, UNet3DConfig
from t2vrt.models.vae import VAE_PRESETS, VAEDecoderConfig


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
    num_frames: int = 16
    height: int = 256
    width: int = 256
    num_inference_steps: int = 50
    guidance_scale: float = 9.0
    negative_prompt: str = ""
    fps: int = 8


@dataclass(frozen=True)
class ModelConfig:
    name: str
    unet: UNet3DConfig
    text_encoder: TextEncoderConfig
    vae: VAEDecoderConfig
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    defaults: Defaults = field(default_factory=Defaults)

    def to_dict(self) -> dict:
        return asdict(self)


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
