"""Typed, torch-free configuration: the model's component configs, schedule, defaults and presets.

Everything after the manifest reads these dataclasses (never raw dicts); `t2vrt.models` builds modules from them.
"""

from t2vrt.config.model import PRESETS, Defaults, ModelConfig, ScheduleConfig, preset
from t2vrt.config.parse import ConfigError, from_dict, to_dict
from t2vrt.config.text import TEXT_ENCODER_PRESETS, TextEncoderConfig
from t2vrt.config.unet import UNET_PRESETS, LayerSpec, UNet3DConfig, unet_layout
from t2vrt.config.vae import VAE_PRESETS, VAEConfig

__all__ = [
    "PRESETS",
    "TEXT_ENCODER_PRESETS",
    "UNET_PRESETS",
    "VAE_PRESETS",
    "ConfigError",
    "Defaults",
    "LayerSpec",
    "ModelConfig",
    "ScheduleConfig",
    "TextEncoderConfig",
    "UNet3DConfig",
    "VAEConfig",
    "from_dict",
    "preset",
    "to_dict",
    "unet_layout",
]
