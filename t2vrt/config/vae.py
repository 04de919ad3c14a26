"""The SD KL-f8 autoencoder's configuration (torch-free): one config for the decoder and the encoder."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class VAEConfig:
    ch: int = 128
    ch_mult: tuple[int, ...] = (1, 2, 4, 4)
    num_res_blocks: int = 2  # the decoder has num_res_blocks + 1 per level
    z_channels: int = 4
    embed_dim: int = 4
    out_ch: int = 3
    norm_groups: int = 32
    scaling_factor: float = 0.18215

    @property
    def downscale(self) -> int:
        """Pixels per latent along each side (8 for KL-f8)."""
        return 1 << (len(self.ch_mult) - 1)


VAE_PRESETS: dict[str, VAEConfig] = {
    "ms-1.7b": VAEConfig(),
    "zeroscope-576w": VAEConfig(),
    "tiny": VAEConfig(ch=32, ch_mult=(1, 2, 2, 2), num_res_blocks=1),
}
