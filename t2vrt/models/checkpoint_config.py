"""What a resolved checkpoint is: its ModelConfig, read from its own files.

Every value the files give is honoured; presets only fill what a layout does not record: the original release
hard-codes its VAE (we read its shape off the tensors), and neither layout stores generation defaults (ms-1.7b's,
or zeroscope-576w's when the directory or hub name says zeroscope).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any, TypeVar

import torch

from t2vrt.config import PRESETS, ModelConfig, ScheduleConfig, preset
from t2vrt.config.checks import check_model_config
from t2vrt.config.parse import ConfigError
from t2vrt.config.vae import VAEConfig
from t2vrt.errors import T2VError, UsageError
from t2vrt.models import text_encoder_keys, unet3d_keys, vae_keys
from t2vrt.models.source import Source, read_json_object
from t2vrt.models.weights import PartReader

Tensor = torch.Tensor
StateDict = dict[str, Tensor]
T = TypeVar("T")
_MEAN_TYPES = {"eps": "epsilon", "v": "v_prediction"}


def config_of(source: Source, read: PartReader | None = None) -> ModelConfig:
    """The model config from the checkpoint's own files; `read` shares loaded files with the weight loading."""
    read = read or PartReader(source)
    if source.layout == "embedded":
        return preset(str(source.root))
    if source.layout == "original":
        unet, text, vae, schedule = _original_config(source, read)
    elif source.layout == "diffusers":
        unet, text, vae, schedule = _diffusers_config(source)
    else:
        raise T2VError(f"unknown checkpoint layout {source.layout!r}")
    zeroscope = "zeroscope" in f"{source.hint} {source.root}".lower()
    name = next((n for n, p in PRESETS.items() if (p.unet, p.text_encoder, p.vae) == (unet, text, vae)), "")
    if zeroscope and name == "ms-1.7b":
        name = "zeroscope-576w"  # the same architecture: the name picks the defaults
    defaults = preset(name or "ms-1.7b").defaults  # a preset's architecture gets its defaults (tiny: small ones)
    cfg = ModelConfig(name or Path(str(source.hint or source.root)).name, unet, text, vae, schedule, defaults)
    try:  # every size sane before a module is built (a checkpoint's config is untrusted input)
        return check_model_config(cfg, f"{source.layout} checkpoint config")
    except ConfigError as e:
        raise UsageError(f"{source.root}: {e}") from None


def _guard(what: str, file: Path | None, fn: Callable[..., T], *args: Any) -> T:
    """Run a key map / config reader; its KeyError or ValueError becomes one T2VError naming the component and file."""
    try:
        return fn(*args)
    except (KeyError, ValueError, TypeError) as e:
        msg = e.args[0] if e.args else type(e).__name__
        where = f" ({file.name})" if file is not None else ""
        raise T2VError(f"{what}{where}: {msg}") from None


# ---- original ModelScope release -----------------------------------------------------------------------------


def _model_cfg(source: Source) -> dict:
    path = source.parts["config"]
    try:
        raw = json.loads(path.read_text())
        model_cfg = raw.get("model", raw)["model_cfg"]  # the release nests it: {"model": {"model_cfg": ...}}
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError) as e:
        raise T2VError(f"cannot read model_cfg from {str(path)!r}: {type(e).__name__} {e}") from None
    if not isinstance(model_cfg, dict):
        raise T2VError(f"{str(path)!r}: model_cfg is not an object")
    return model_cfg


def _original_config(source: Source, read: PartReader):
    model_cfg = _model_cfg(source)
    cfg_file = source.parts["config"]
    unet = _guard("unet config", cfg_file, unet3d_keys.config_from_original, model_cfg)
    # Two t2vrt extensions (writers.original_model_cfg), absent from the release, which hard-codes 32 and 64:
    if "unet_norm_groups" in model_cfg:
        unet = replace(unet, norm_groups=int(model_cfg["unet_norm_groups"]))
    head_width = int(model_cfg.get("clip_head_width", 64))
    clip = read("text_encoder")
    text = _guard(
        "text_encoder", source.parts["text_encoder"], text_encoder_keys.config_from_openclip_state, clip, head_width
    )
    vae_sd = _guard("vae_decoder", source.parts["vae"], vae_keys.lightning_to_ours, read("vae"))
    vae = vae_config_from_state(vae_sd, preset("ms-1.7b").vae)
    mean_type = str(model_cfg.get("mean_type", "eps"))
    if mean_type not in _MEAN_TYPES:
        raise T2VError(f"{cfg_file}: mean_type {mean_type!r} is not supported (known: {', '.join(_MEAN_TYPES)})")
    schedule = ScheduleConfig(
        num_train_timesteps=int(model_cfg.get("num_timesteps", 1000)), prediction_type=_MEAN_TYPES[mean_type]
    )
    return unet, text, vae, schedule


def vae_config_from_state(sd: Mapping[str, Tensor], base: VAEConfig) -> VAEConfig:
    """The decoder's sizes read off its tensors (LDM names); what shapes cannot tell (groups, scale) from `base`."""
    try:
        ch = int(sd["decoder.conv_out.weight"].shape[1])
        levels = 1 + max(int(m.group(1)) for k in sd if (m := re.match(r"decoder\.up\.(\d+)\.", k)))
        blocks = {int(m.group(1)) for k in sd if (m := re.match(r"decoder\.up\.0\.block\.(\d+)\.", k))}
        return replace(
            base,
            ch=ch,
            ch_mult=tuple(int(sd[f"decoder.up.{i}.block.0.conv2.weight"].shape[0]) // ch for i in range(levels)),
            num_res_blocks=len(blocks) - 1,
            z_channels=int(sd["decoder.conv_in.weight"].shape[1]),
            embed_dim=int(sd["post_quant_conv.weight"].shape[1]),
            out_ch=int(sd["decoder.conv_out.weight"].shape[0]),
        )
    except (KeyError, ValueError, IndexError) as e:
        raise T2VError(f"vae_decoder: cannot read the decoder's shape from the checkpoint (missing {e})") from None


# ---- diffusers -------------------------------------------------------------------------------------------------


def _diffusers_config(source: Source):
    p = source.parts
    unet = _guard(
        "unet config", p["unet_config"], unet3d_keys.config_from_diffusers, read_json_object(p["unet_config"])
    )
    text = _guard(
        "text_encoder config",
        p["text_encoder_config"],
        text_encoder_keys.config_from_diffusers,
        read_json_object(p["text_encoder_config"]),
    )
    vae = _guard("vae config", p["vae_config"], vae_keys.config_from_diffusers, read_json_object(p["vae_config"]))
    schedule = _scheduler(p["scheduler"]) if "scheduler" in p else ScheduleConfig()
    return unet, text, vae, schedule


def _scheduler(path: Path) -> ScheduleConfig:
    d = read_json_object(path)
    s = ScheduleConfig(
        num_train_timesteps=int(d.get("num_train_timesteps", 1000)),
        beta_start=float(d.get("beta_start", 0.00085)),
        beta_end=float(d.get("beta_end", 0.012)),
        beta_schedule=str(d.get("beta_schedule", "scaled_linear")),
        prediction_type=str(d.get("prediction_type", "epsilon")),
    )
    if s.beta_schedule != "scaled_linear" or d.get("trained_betas") is not None:
        raise T2VError(
            f"{path}: beta_schedule {s.beta_schedule!r} / trained_betas are not supported (need scaled_linear)"
        )
    if s.prediction_type not in _MEAN_TYPES.values():
        raise T2VError(
            f"{path}: prediction_type {s.prediction_type!r} is not supported ({', '.join(_MEAN_TYPES.values())})"
        )
    return s
