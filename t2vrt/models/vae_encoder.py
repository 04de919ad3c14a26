"""SD KL-f8 VAE encoder (encoder + quant_conv, LDM key names): images -> the posterior's mean and log-variance.

The other half of the autoencoder in vae.py, built from the same VAEConfig (its out_ch is the encoder's input
channel count) and the same blocks. Frames are independent images here: a video's frames fold into the batch, and chunking the batch changes memory only.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from t2vrt.config.vae import VAEConfig
from t2vrt.models.vae import _EPS, Mid, ResnetBlock

LOGVAR_RANGE = (-30.0, 20.0)  # the posterior's clamp (LDM DiagonalGaussianDistribution, diffusers alike)


class Downsample(nn.Module):
    """Stride-2 3x3 conv after padding one zero row and column at the bottom/right only (LDM's asymmetric pad)."""

    def __init__(self, c: int):
        super().__init__()
        self.conv = nn.Conv2d(c, c, 3, stride=2, padding=0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.pad(x, (0, 1, 0, 1)))


class DownLevel(nn.Module):
    """down.{i}: num_res_blocks ResnetBlocks, then (below the last level) a stride-2 downsample."""

    def __init__(self, cin: int, cout: int, n_blocks: int, groups: int, downsample: bool):
        super().__init__()
        self.block = nn.ModuleList(ResnetBlock(cin if j == 0 else cout, cout, groups) for j in range(n_blocks))
        self.downsample = Downsample(cout) if downsample else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for blk in self.block:
            x = blk(x)
        return x if self.downsample is None else self.downsample(x)


class Encoder(nn.Module):
    """images (n, in_ch, H, W) -> moments (n, 2 * z_channels, H / f, W / f) (LDM double_z)."""

    def __init__(self, cfg: VAEConfig):
        super().__init__()
        chans = [cfg.ch * m for m in cfg.ch_mult]
        self.conv_in = nn.Conv2d(cfg.out_ch, chans[0], 3, padding=1)
        levels = []
        for i, cout in enumerate(chans):
            cin = chans[i - 1] if i > 0 else chans[0]
            levels.append(DownLevel(cin, cout, cfg.num_res_blocks, cfg.norm_groups, downsample=i != len(chans) - 1))
        self.down = nn.ModuleList(levels)
        self.mid = Mid(chans[-1], cfg.norm_groups)
        self.norm_out = nn.GroupNorm(cfg.norm_groups, chans[-1], eps=_EPS)
        self.conv_out = nn.Conv2d(chans[-1], 2 * cfg.z_channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv_in(x)
        for level in self.down:
            h = level(h)
        h = self.mid(h)
        return self.conv_out(F.silu(self.norm_out(h)))


class VAEEncoder(nn.Module):
    """images (n, in_ch, H, W) in [-1, 1] -> (mean, logvar), each (n, embed_dim, H / f, W / f), unscaled.

    logvar is clamped to LOGVAR_RANGE. A latent for the sampler is scaling_factor * (mean + exp(logvar / 2) * noise)
    (or scaling_factor * mean, the posterior's mode); that last step is the caller's, so the noise stays explicit.
    """

    def __init__(self, cfg: VAEConfig):
        super().__init__()
        self.cfg = cfg
        self.encoder = Encoder(cfg)
        self.quant_conv = nn.Conv2d(2 * cfg.z_channels, 2 * cfg.embed_dim, 1)

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        moments = self.quant_conv(self.encoder(images))  # (n, 2 * embed_dim, h, w)
        mean, logvar = torch.chunk(moments, 2, dim=1)
        return mean, torch.clamp(logvar, *LOGVAR_RANGE)


class VAEEncoderMoments(VAEEncoder):
    """The engine's form (same weights and names): one output, mean and clamped logvar on the channel axis."""

    def forward(self, images: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        mean, logvar = super().forward(images)
        return torch.cat([mean, logvar], dim=1)  # (n, 2 * embed_dim, h, w)
