"""The UNet3D's configuration and its block layout: the one description the model, the key maps and the planner walk.

Torch-free: `t2vrt.models.unet3d` builds modules from `unet_layout`, `t2vrt.models.unet3d_keys` pairs checkpoint
keys along it, and `t2vrt.engine.analytic` counts parameters and activations along it.
"""

from __future__ import annotations

from dataclasses import dataclass


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

    @property
    def downsampling(self) -> int:
        """Total spatial downsampling of the UNet (2 ** (levels - 1)): latent sizes must be multiples of it."""
        return 1 << (len(self.channel_mult) - 1)


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


UNetLayout = dict[str, list[list[LayerSpec]]]


def unet_layout(cfg: UNet3DConfig) -> UNetLayout:
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
