"""UNet3D of ModelScope text-to-video, with the original release's module names (= state-dict keys)."""

from __future__ import annotations

import torch
from torch import nn

from t2vrt.config.unet import LayerSpec, UNet3DConfig, unet_layout
from t2vrt.models.unet_blocks import (
    Block,
    Downsample,
    ResBlock,
    SpatialTransformer,
    TemporalTransformer,
    Upsample,
)


def _build(spec: LayerSpec, cfg: UNet3DConfig) -> nn.Module:
    g = cfg.norm_groups
    if spec.kind == "conv_in":
        return nn.Conv2d(spec.in_channels, spec.channels, 3, padding=1)
    if spec.kind == "res":
        return ResBlock(spec.in_channels, spec.channels, cfg.time_embed_dim, g)
    if spec.kind == "spatial":
        return SpatialTransformer(spec.channels, spec.heads, cfg.head_dim, cfg.context_dim, g)
    if spec.kind == "temporal":
        return TemporalTransformer(spec.channels, spec.heads, cfg.head_dim, g)
    if spec.kind == "down":
        return Downsample(spec.channels)
    if spec.kind == "up":
        return Upsample(spec.channels)
    raise ValueError(f"unknown layer kind {spec.kind!r}")


def sinusoidal_embedding(timesteps: torch.Tensor, dim: int) -> torch.Tensor:
    """[cos | sin] of t * 10000^(-i/half), i < half, as the original computes it (fp32). (b,) -> (b, dim)"""
    half = dim // 2
    freqs = torch.pow(10000.0, -torch.arange(half, dtype=torch.float32, device=timesteps.device) / half)
    args = timesteps.float()[:, None] * freqs[None, :]  # (b, half)
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=1)
    if dim % 2:
        emb = torch.cat([emb, torch.zeros_like(emb[:, :1])], dim=1)
    return emb


class UNet3D(nn.Module):
    """eps = UNet3D(latents (b, c_in, f, h, w), timestep (b,) float, text_embeddings (b, L, context_dim)).

    h and w must be multiples of 2 ** (len(channel_mult) - 1) (the original has no odd-size path).
    """

    def __init__(self, cfg: UNet3DConfig):
        super().__init__()
        self.cfg = cfg
        layout = unet_layout(cfg)
        t = cfg.time_embed_dim
        self.time_embed = nn.Sequential(nn.Linear(cfg.model_channels, t), nn.SiLU(), nn.Linear(t, t))

        def block(specs: list[LayerSpec]) -> nn.Module:
            if specs[0].kind == "down":
                return _build(specs[0], cfg)  # bare module: input_blocks.{k}.op
            return Block([_build(s, cfg) for s in specs])

        self.input_blocks = nn.ModuleList([block(b) for b in layout["input_blocks"]])
        self.middle_block = block(layout["middle_block"][0])
        self.output_blocks = nn.ModuleList([block(b) for b in layout["output_blocks"]])
        last = layout["output_blocks"][-1][0].channels
        self.out = nn.Sequential(
            nn.GroupNorm(cfg.norm_groups, last), nn.SiLU(), nn.Conv2d(last, cfg.out_channels, 3, padding=1)
        )

    def forward(self, latents: torch.Tensor, timestep: torch.Tensor, text_embeddings: torch.Tensor) -> torch.Tensor:
        b, c, f, h, w = latents.shape
        emb = self.time_embed(sinusoidal_embedding(timestep, self.cfg.model_channels).to(latents.dtype))  # (b, T)
        emb = emb[:, None].expand(b, f, emb.shape[-1]).reshape(b * f, emb.shape[-1])  # (b*f, T), per frame
        context = text_embeddings.to(latents.dtype)  # (b, L, D): never repeated, see TransformerBlock
        x = latents.permute(0, 2, 1, 3, 4).reshape(b * f, c, h, w)  # (b*f, c, h, w)

        skips = []
        for blk in self.input_blocks:
            x = blk(x, emb, context, f) if isinstance(blk, Block) else blk(x)
            skips.append(x)
        x = self.middle_block(x, emb, context, f)
        for blk in self.output_blocks:
            x = blk(torch.cat([x, skips.pop()], dim=1), emb, context, f)  # (b*f, c + c_skip, h, w)
        x = self.out(x)  # (b*f, c_out, h, w)
        return x.reshape(b, f, x.shape[1], h, w).permute(0, 2, 1, 3, 4)  # (b, c_out, f, h, w)
