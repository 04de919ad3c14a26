"""The OpenCLIP ViT-H-14 text tower's configuration (torch-free)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class TextEncoderConfig:
    vocab_size: int = 49408
    context_length: int = 77
    width: int = 1024
    heads: int = 16
    layers: int = 24  # blocks in the checkpoint
    layers_used: int = 23  # penultimate: the output after block 23 of 24, then ln_final

    @property
    def mlp_width(self) -> int:
        return self.width * 4


TEXT_ENCODER_PRESETS: dict[str, TextEncoderConfig] = {
    "ms-1.7b": TextEncoderConfig(),
    "zeroscope-576w": TextEncoderConfig(),
    "tiny": TextEncoderConfig(width=32, heads=4, layers=3, layers_used=2),
}
