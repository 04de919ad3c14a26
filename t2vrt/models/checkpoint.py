"""A checkpoint, from the outside: where it comes from (`resolve`), what it is (`load_config`) and its weights in our
modules (`load_model`). The work is in t2vrt.models.source, checkpoint_config and weights.

MODEL is one of:
- `tiny`: the embedded random-weight model (built in memory, the same weights on every machine);
- a local directory in the original ModelScope layout (configuration.json, text2video_pytorch_model.pth,
  open_clip_pytorch_model.bin, VQGAN_autoencoder.pth) or the diffusers layout (model_index.json, unet/, vae/,
  text_encoder/, tokenizer/, scheduler/);
- a hub id (`org/name`), downloaded with huggingface_hub (only the files the loader reads).
"""

from __future__ import annotations

import torch
from torch import nn

from t2vrt.config import ModelConfig
from t2vrt.models.checkpoint_config import config_of
from t2vrt.models.source import Source, hub_files, resolve
from t2vrt.models.weights import PartReader, build_modules, check_state, load_weights, tiny_model

__all__ = ["Source", "build_modules", "check_state", "hub_files", "load_config", "load_model", "resolve", "tiny_model"]


def load_config(source: Source) -> ModelConfig:
    return config_of(source)


def load_model(source: Source, dtype: torch.dtype = torch.float32) -> tuple[ModelConfig, dict[str, nn.Module]]:
    """The config and our modules with the checkpoint's weights (eval mode, cast once to `dtype`); every file is read
    once, for the config and the weights both."""
    read = PartReader(source)
    cfg = config_of(source, read)
    return cfg, load_weights(source, cfg, read, dtype)
