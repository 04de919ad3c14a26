"""Value checks of a ModelConfig: every size sane and consistent, before anything is allocated or traced.

A manifest and a checkpoint config are untrusted: a negative head count, an empty channel multiplier list, zero
training timesteps, fps 0 or a billion layers must be one line naming the field, not a traceback from deep inside
a constructor or minutes of building modules. Bounds are far above every real model (ms-1.7b: 320 channels x
(1, 2, 4, 4), 24 text layers) and far below what would exhaust memory while building.
"""

from __future__ import annotations

import math

from t2vrt.config.model import ModelConfig
from t2vrt.config.parse import ConfigError

MAX_CHANNELS = 16384  # widest layer of any level
MAX_LEVELS = 8
MAX_BLOCKS = 16  # res blocks per level
MAX_LAYERS = 256  # text transformer blocks
MAX_CONTEXT = 4096  # text tokens
MAX_TIMESTEPS = 100_000
MAX_FRAMES = 1024
MAX_SIDE = 8192  # pixels
MAX_FPS = 240


def _int(where: str, v: int, lo: int, hi: int) -> None:
    if not lo <= v <= hi:
        raise ConfigError(f"{where} must be in {lo}..{hi}, got {v}")


def _mult(where: str, mult: tuple[int, ...]) -> None:
    if not 1 <= len(mult) <= MAX_LEVELS:
        raise ConfigError(f"{where} must list 1..{MAX_LEVELS} levels, got {list(mult)}")
    for i, m in enumerate(mult):
        _int(f"{where}[{i}]", m, 1, 64)


def _divides(where: str, d: int, what: str, values: list[int]) -> None:
    bad = [v for v in values if v % d]
    if bad:
        raise ConfigError(f"{where} {d} must divide {what}, which include {bad[0]}")


def check_model_config(cfg: ModelConfig, where: str = "model config") -> ModelConfig:
    """ConfigError naming the first bad field; returns cfg unchanged when every value is sane."""
    u, t, v, s, d = cfg.unet, cfg.text_encoder, cfg.vae, cfg.schedule, cfg.defaults
    w = f"{where}.unet"
    for name, val, hi in (
        ("in_channels", u.in_channels, 64),
        ("out_channels", u.out_channels, 64),
        ("model_channels", u.model_channels, MAX_CHANNELS),
        ("num_res_blocks", u.num_res_blocks, MAX_BLOCKS),
        ("head_dim", u.head_dim, MAX_CHANNELS),
        ("num_heads", u.num_heads, 1024),
        ("context_dim", u.context_dim, MAX_CHANNELS),
        ("norm_groups", u.norm_groups, MAX_CHANNELS),
    ):
        _int(f"{w}.{name}", val, 1, hi)
    _mult(f"{w}.channel_mult", u.channel_mult)
    chans = [u.model_channels * m for m in u.channel_mult]
    _int(f"{w} widest level (model_channels x channel_mult)", max(chans), 1, MAX_CHANNELS)
    if len(u.attn_scales) > MAX_LEVELS or not all(0 < a <= 1 for a in u.attn_scales):
        raise ConfigError(f"{w}.attn_scales must be at most {MAX_LEVELS} scales in (0, 1], got {list(u.attn_scales)}")
    _divides(f"{w}.norm_groups", u.norm_groups, "every level's channels", [u.model_channels, *chans])
    _divides(f"{w}.head_dim", u.head_dim, "every level's channels", chans)
    _divides(f"{w}.num_heads", u.num_heads, "model_channels", [u.model_channels])

    w = f"{where}.text_encoder"
    for name, val, hi in (
        ("vocab_size", t.vocab_size, 1 << 20),
        ("context_length", t.context_length, MAX_CONTEXT),
        ("width", t.width, MAX_CHANNELS),
        ("heads", t.heads, 1024),
        ("layers", t.layers, MAX_LAYERS),
    ):
        _int(f"{w}.{name}", val, 1, hi)
    _int(f"{w}.layers_used", t.layers_used, 1, t.layers)
    _divides(f"{w}.heads", t.heads, "width", [t.width])

    w = f"{where}.vae"
    for name, val, lo, hi in (
        ("ch", v.ch, 1, MAX_CHANNELS),
        ("num_res_blocks", v.num_res_blocks, 0, MAX_BLOCKS),
        ("z_channels", v.z_channels, 1, 64),
        ("embed_dim", v.embed_dim, 1, 64),
        ("out_ch", v.out_ch, 1, 16),
        ("norm_groups", v.norm_groups, 1, MAX_CHANNELS),
    ):
        _int(f"{w}.{name}", val, lo, hi)
    _mult(f"{w}.ch_mult", v.ch_mult)
    _int(f"{w} widest level (ch x ch_mult)", v.ch * max(v.ch_mult), 1, MAX_CHANNELS)
    _divides(f"{w}.norm_groups", v.norm_groups, "every level's channels", [v.ch * m for m in v.ch_mult])
    if not (math.isfinite(v.scaling_factor) and 0 < v.scaling_factor <= 100):
        raise ConfigError(f"{w}.scaling_factor must be in (0, 100], got {v.scaling_factor}")

    w = f"{where}.schedule"
    _int(f"{w}.num_train_timesteps", s.num_train_timesteps, 2, MAX_TIMESTEPS)
    if not (0 < s.beta_start <= s.beta_end < 1):
        raise ConfigError(f"{w}: beta_start {s.beta_start} and beta_end {s.beta_end} must satisfy 0 < start <= end < 1")

    w = f"{where}.defaults"
    m = cfg.size_multiple
    _int(f"{w}.num_frames", d.num_frames, 1, MAX_FRAMES)
    for name, val in (("height", d.height), ("width", d.width)):
        _int(f"{w}.{name}", val, m, MAX_SIDE)
        if val % m:
            raise ConfigError(f"{w}.{name} must be a multiple of {m}, got {val}")
    _int(f"{w}.num_inference_steps", d.num_inference_steps, 1, s.num_train_timesteps - 1)
    if not (math.isfinite(d.guidance_scale) and 1 <= d.guidance_scale <= 1000):
        raise ConfigError(f"{w}.guidance_scale must be in 1..1000, got {d.guidance_scale}")
    _int(f"{w}.fps", d.fps, 1, MAX_FPS)
    return cfg
