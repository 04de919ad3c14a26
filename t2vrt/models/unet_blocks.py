"""Building blocks of the ModelScope UNet3D, with the original release's attribute names (= state-dict keys).

Activations travel as (b*f, c, h, w): frames folded into the batch. Spatial layers see one frame at a time; the
temporal layers unfold to (b, c, f, h*w) and normalise over whole videos. Every op is export-friendly: shapes come
from `.shape` (symbolic in a trace), the (3,1,1) Conv3d runs as a (3,1) Conv2d, attention is
F.scaled_dot_product_attention, and nothing branches on tensor values.
"""

from __future__ import annotations

from typing import cast

import torch
import torch.nn.functional as F
from torch import nn

DROPOUT = 0.1  # the training dropout; identity in eval mode, kept so the Sequential indices (= keys) match


class Attention(nn.Module):
    """Multi-head attention; `context=None` is self-attention. Heads are the major part of the inner dim."""

    def __init__(self, query_dim: int, heads: int, dim_head: int, context_dim: int | None = None):
        super().__init__()
        inner = heads * dim_head
        self.heads, self.dim_head = heads, dim_head
        self.to_q = nn.Linear(query_dim, inner, bias=False)
        self.to_k = nn.Linear(context_dim or query_dim, inner, bias=False)
        self.to_v = nn.Linear(context_dim or query_dim, inner, bias=False)
        self.to_out = nn.Sequential(nn.Linear(inner, query_dim), nn.Dropout(0.0))

    def _split(self, t: torch.Tensor) -> torch.Tensor:
        return t.reshape(t.shape[0], -1, self.heads, self.dim_head).transpose(1, 2)  # (B, heads, S, d)

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        src = x if context is None else context
        q, k, v = self._split(self.to_q(x)), self._split(self.to_k(src)), self._split(self.to_v(src))
        out = F.scaled_dot_product_attention(q, k, v, scale=self.dim_head**-0.5)  # (B, heads, S, d)
        out = out.transpose(1, 2).reshape(x.shape[0], -1, self.heads * self.dim_head)  # (B, S, inner)
        return self.to_out(out)


class GEGLU(nn.Module):
    def __init__(self, dim_in: int, dim_out: int):
        super().__init__()
        self.proj = nn.Linear(dim_in, dim_out * 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        value, gate = self.proj(x).chunk(2, dim=-1)
        return value * F.gelu(gate)


class FeedForward(nn.Module):
    def __init__(self, dim: int, mult: int = 4):
        super().__init__()
        self.net = nn.Sequential(GEGLU(dim, dim * mult), nn.Dropout(0.0), nn.Linear(dim * mult, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class TransformerBlock(nn.Module):
    """Self-attention, then cross-attention to `context` (or a second self-attention without one), then GEGLU."""

    def __init__(self, dim: int, heads: int, dim_head: int, context_dim: int | None):
        super().__init__()
        self.attn1 = Attention(dim, heads, dim_head)
        self.ff = FeedForward(dim)
        self.attn2 = Attention(dim, heads, dim_head, context_dim)
        self.norm1, self.norm2, self.norm3 = nn.LayerNorm(dim), nn.LayerNorm(dim), nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        x = self.attn1(self.norm1(x)) + x
        h = self.norm2(x)
        if context is not None:
            # Every frame of a video attends to the same text: fold the frames into the query sequence,
            # (b*f, hw, c) -> (b, f*hw, c), instead of repeating the context f times. Rows are independent: exact.
            h = h.reshape(context.shape[0], -1, h.shape[-1])
        x = self.attn2(h, context).reshape(x.shape) + x
        return self.ff(self.norm3(x)) + x


class SpatialTransformer(nn.Module):
    """Attention over the h*w positions of each frame, cross-attending to the text. Linear projections."""

    def __init__(self, channels: int, heads: int, dim_head: int, context_dim: int, groups: int):
        super().__init__()
        inner = heads * dim_head
        self.norm = nn.GroupNorm(groups, channels, eps=1e-6)
        self.proj_in = nn.Linear(channels, inner)
        self.transformer_blocks = nn.ModuleList([TransformerBlock(inner, heads, dim_head, context_dim)])
        self.proj_out = nn.Linear(inner, channels)

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        bf, c, h, w = x.shape
        y = self.norm(x).permute(0, 2, 3, 1).reshape(bf, h * w, c)  # (b*f, hw, c)
        y = self.proj_in(y)
        for block in self.transformer_blocks:
            y = block(y, context)
        y = self.proj_out(y).reshape(bf, h, w, c).permute(0, 3, 1, 2)  # (b*f, c, h, w)
        return y + x


class TemporalTransformer(nn.Module):
    """Attention over the frames at each position (two self-attentions, no text, no positional encoding).

    proj_in / proj_out keep the original Conv1d parameters ([out, in, 1]) and run as linears.
    """

    def __init__(self, channels: int, heads: int, dim_head: int, groups: int):
        super().__init__()
        inner = heads * dim_head
        self.norm = nn.GroupNorm(groups, channels, eps=1e-6)
        self.proj_in = nn.Conv1d(channels, inner, 1)
        self.transformer_blocks = nn.ModuleList([TransformerBlock(inner, heads, dim_head, None)])
        self.proj_out = nn.Conv1d(inner, channels, 1)

    def forward(self, x: torch.Tensor, frames: int) -> torch.Tensor:
        bf, c, h, w = x.shape
        y = x.reshape(-1, frames, c, h * w).permute(0, 2, 1, 3)  # (b, c, f, hw)
        y = self.norm(y)  # statistics over all frames of a video, as on the original 5-D tensor
        y = y.permute(0, 3, 2, 1).reshape(-1, frames, c)  # (b*hw, f, c)
        y = F.linear(y, self.proj_in.weight[..., 0], self.proj_in.bias)
        for block in self.transformer_blocks:
            y = block(y)
        y = F.linear(y, self.proj_out.weight[..., 0], self.proj_out.bias)  # (b*hw, f, c)
        y = y.reshape(-1, h * w, frames, c).permute(0, 2, 3, 1).reshape(bf, c, h, w)
        return y + x


def _temporal_conv3d(x: torch.Tensor, conv: nn.Conv3d) -> torch.Tensor:
    """A (3,1,1) Conv3d, pad (1,0,0), on (b, c, f, h, w) == a (3,1) Conv2d, pad (1,0), on (b, c, f, h*w): exact.

    TensorRT runs Conv2d much faster than Conv3d; the parameter keeps its Conv3d shape so checkpoints load as they are.
    """
    return F.conv2d(x, conv.weight[..., 0], conv.bias, padding=(1, 0))


class TemporalConv(nn.Module):
    """The original TemporalConvBlock_v2: identity + four (GroupNorm, SiLU, [Dropout], Conv3d (3,1,1)) over frames."""

    def __init__(self, channels: int, groups: int):
        super().__init__()

        def layer(dropout: bool) -> nn.Sequential:
            mid = [nn.Dropout(DROPOUT)] if dropout else []
            conv = nn.Conv3d(channels, channels, (3, 1, 1), padding=(1, 0, 0))
            return nn.Sequential(nn.GroupNorm(groups, channels), nn.SiLU(), *mid, conv)

        self.conv1, self.conv2, self.conv3, self.conv4 = layer(False), layer(True), layer(True), layer(True)

    def forward(self, x: torch.Tensor, frames: int) -> torch.Tensor:
        bf, c, h, w = x.shape
        identity = x.reshape(-1, frames, c, h * w).permute(0, 2, 1, 3)  # (b, c, f, hw)
        y = identity
        for seq in (self.conv1, self.conv2, self.conv3, self.conv4):
            for pre in list(seq)[:-1]:  # GroupNorm over the whole video, SiLU, Dropout
                y = pre(y)
            y = _temporal_conv3d(y, cast(nn.Conv3d, seq[-1]))
        return (identity + y).permute(0, 2, 1, 3).reshape(bf, c, h, w)


class ResBlock(nn.Module):
    """Per-frame residual block (time embedding added, no scale-shift), then the temporal conv (`temopral_conv`)."""

    def __init__(self, in_channels: int, out_channels: int, emb_dim: int, groups: int):
        super().__init__()
        self.in_layers = nn.Sequential(
            nn.GroupNorm(groups, in_channels), nn.SiLU(), nn.Conv2d(in_channels, out_channels, 3, padding=1)
        )
        self.emb_layers = nn.Sequential(nn.SiLU(), nn.Linear(emb_dim, out_channels))
        self.out_layers = nn.Sequential(
            nn.GroupNorm(groups, out_channels),
            nn.SiLU(),
            nn.Dropout(DROPOUT),
            nn.Conv2d(out_channels, out_channels, 3, padding=1),
        )
        self.skip_connection = nn.Identity() if in_channels == out_channels else nn.Conv2d(in_channels, out_channels, 1)
        self.temopral_conv = TemporalConv(out_channels, groups)  # (sic): the checkpoint's spelling

    def forward(self, x: torch.Tensor, emb: torch.Tensor, frames: int) -> torch.Tensor:
        h = self.in_layers(x) + self.emb_layers(emb)[:, :, None, None]  # emb: (b*f, emb_dim)
        h = self.skip_connection(x) + self.out_layers(h)
        return self.temopral_conv(h, frames)


class Downsample(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.op = nn.Conv2d(channels, channels, 3, stride=2, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.op(x)


class Upsample(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class Block(nn.ModuleList):
    """One entry of input_blocks / output_blocks / the middle block: its layers in order, each fed what it needs."""

    def forward(  # type: ignore[override]
        self, x: torch.Tensor, emb: torch.Tensor, context: torch.Tensor, frames: int
    ) -> torch.Tensor:
        for layer in self:
            if isinstance(layer, ResBlock):
                x = layer(x, emb, frames)
            elif isinstance(layer, SpatialTransformer):
                x = layer(x, context)
            elif isinstance(layer, TemporalTransformer):
                x = layer(x, frames)
            else:
                x = layer(x)
        return x
