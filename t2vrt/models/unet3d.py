"""UNet3D of ModelScope text-to-video, with the original release's module names (= state-dict keys)."""

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


UNET_PRESETS: dict[str, UNet3DConfig] = {
    "ms-1.7b": UNet3DConfig(),
    "zeroscope-576w": UNet3DConfig(),  # a fine-tune: same architecture, other weights and defaults
    # Every block type at a few channels: spatial + temporal attention, temporal convs, down/up sampling,
    # the 8-head input temporal transformer. Representable as a diffusers UNet3DConditionModel.
    "tiny": UNet3DConfig(
        model_channels=32, channel_mult=(1, 2, 2, 2), head_dim=8, num_heads=8, context_dim=32, norm_groups=8
    ),
}
