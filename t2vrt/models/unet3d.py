"""UNet3D of ModelScope text-to-video, with the original release's module names (= state-dict keys)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from t2vrt.models.unet_blocks import (
    Block,
    Downsample,
    ResBlock,
    SpatialTransformer,
    TemporalTransformer,
    Upsample,
)


@dataclass(frozen=True)
class UNet3DConfig:
    in_channels: int = 4
    out_channels: int = 4
    model_channels: int = 320
    channel_mult: tuple[int, ...] = (1, 2, 4, 4)
    num_res_blocks: int = 2
    attn_scales: tuple[float, ...] = (1.0, 0.5, 0.25)  # levels (1 / 2**level) that carry attention
    head_dim: int = 64  # spatial heads = channels // head_dim
    num_heads: int = 8  # heads of the input temporal transformer (input_blocks.0.1)
    context_dim: int = 1024
    norm_groups: int = 32
    temporal_attention: bool = True

    @property
    def time_embed_dim(self) -> int:
        return self.model_channels * 4


UNET_PRESETS: dict[str, UNet3DConfig] = {
    "ms-1.7b": UNet3DConfig(),
    "zeroscope-576w": UNet3DConfig(),  # a fine-tune: same architecture, other weights and defaults
    # Every block type at a few channels: spatial + temporal attention, temporal convs, down/up sampling,
    # the 8-head input temporal transformer. Representable as a diffusers UNet3DConditionModel.
    "tiny": UNet3DConfig(
        model_channels=32, channel_mult=(1, 2, 2, 2), head_dim=8, num_heads=8, context_dim=32, norm_groups=8
    ),
}


@dataclass(frozen=True)
class LayerSpec:
    """One layer of the UNet, as the original builds it; `level` and `index` place it in diffusers' blocks."""

    kind: str  # conv_in | res | spatial | temporal | down | up
    channels: int  # output channels (res, conv_in); the channels it works on (others)
    in_channels: int = 0  # res only
    heads: int = 0  # spatial / temporal
    level: int = -1  # resolution level (0 = full size); -1 = the middle block
    index: int = 0  # res: which res block within its level (diffusers' resnets.{index}); others: the same


def unet_layout(cfg: UNet3DConfig) -> dict[str, list[list[LayerSpec]]]:
    """The original UNetSD's block structure: {'input_blocks', 'middle_block', 'output_blocks'} -> blocks -> layers.

    A block that holds only a `down` layer is the bare Downsample module (keys `input_blocks.{k}.op.*`).
    """
    levels = len(cfg.channel_mult)
    chans = [cfg.model_channels * m for m in cfg.channel_mult]

    def attn(ch: int, level: int, index: int) -> list[LayerSpec]:
        """Spatial (+ temporal) transformer after a res block: always in the middle, else where the scale is listed."""
        if level != -1 and 0.5**level not in cfg.attn_scales:
            return []
        spatial = LayerSpec("spatial", ch, heads=ch // cfg.head_dim, level=level, index=index)
        temporal = LayerSpec("temporal", ch, heads=ch // cfg.head_dim, level=level, index=index)
        return [spatial, temporal] if cfg.temporal_attention else [spatial]

    first: list[LayerSpec] = [LayerSpec("conv_in", cfg.model_channels, cfg.in_channels, level=0)]
    if cfg.temporal_attention:
        first.append(LayerSpec("temporal", cfg.model_channels, heads=cfg.num_heads, level=0))
    inputs, skips, ch = [first], [cfg.model_channels], cfg.model_channels
    for level, out in enumerate(chans):
        for j in range(cfg.num_res_blocks):
            inputs.append([LayerSpec("res", out, ch, level=level, index=j), *attn(out, level, j)])
            ch = out
            skips.append(ch)
        if level != levels - 1:
            inputs.append([LayerSpec("down", ch, level=level)])
            skips.append(ch)

    middle = [LayerSpec("res", ch, ch, index=0), *attn(ch, -1, 0), LayerSpec("res", ch, ch, index=1)]

    outputs = []
    for level in reversed(range(levels)):
        out = chans[level]
        for j in range(cfg.num_res_blocks + 1):
            block = [LayerSpec("res", out, ch + skips.pop(), level=level, index=j), *attn(out, level, j)]
            ch = out
            if level != 0 and j == cfg.num_res_blocks:
                block.append(LayerSpec("up", ch, level=level))
            outputs.append(block)
    return {"input_blocks": inputs, "middle_block": [middle], "output_blocks": outputs}


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
