"""OpenCLIP ViT-H-14 text tower, run to the penultimate block then ln_final (open_clip's key names)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from t2vrt.config.text import TextEncoderConfig


def causal_mask(n: int, device: torch.device | str | None = None) -> torch.Tensor:
    """Additive float32 mask (n, n): 0 on and below the diagonal, -inf above (a token sees only its past)."""
    return torch.full((n, n), float("-inf"), device=device).triu_(1)


class SelfAttention(nn.Module):
    """nn.MultiheadAttention's parameter layout (in_proj_weight = [q; k; v]), with float32 scores and softmax."""

    def __init__(self, width: int, heads: int):
        super().__init__()
        if width % heads:
            raise ValueError(f"width {width} is not a multiple of heads {heads}")
        self.heads = heads
        self.head_dim = width // heads
        self.in_proj_weight = nn.Parameter(torch.empty(3 * width, width))
        self.in_proj_bias = nn.Parameter(torch.empty(3 * width))
        self.out_proj = nn.Linear(width, width)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        qkv = F.linear(x, self.in_proj_weight, self.in_proj_bias)  # (b, n, 3c)
        qkv = qkv.reshape(b, n, 3, self.heads, self.head_dim).permute(2, 0, 3, 1, 4)  # (3, b, heads, n, d)
        q, k, v = qkv[0], qkv[1], qkv[2]
        # fp16 q.k^T overflows in this model (the black images of SD 2.x in fp16): scores and softmax stay in
        # float32 whatever the module dtype; only the probabilities go back to it.
        scores = (q.float() * (1.0 / math.sqrt(self.head_dim))) @ k.float().transpose(-1, -2)  # (b, heads, n, n)
        probs = torch.softmax(scores + mask, dim=-1).to(v.dtype)
        out = (probs @ v).transpose(1, 2).reshape(b, n, c)  # (b, n, c)
        return self.out_proj(out)


class MLP(nn.Module):
    def __init__(self, width: int, hidden: int):
        super().__init__()
        self.c_fc = nn.Linear(width, hidden)
        self.c_proj = nn.Linear(hidden, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.c_proj(F.gelu(self.c_fc(x)))  # exact GELU: ViT-H-14 is not a quick_gelu model


class ResidualAttentionBlock(nn.Module):
    def __init__(self, width: int, heads: int, hidden: int):
        super().__init__()
        self.ln_1 = nn.LayerNorm(width)
        self.attn = SelfAttention(width, heads)
        self.ln_2 = nn.LayerNorm(width)
        self.mlp = MLP(width, hidden)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x), mask)
        return x + self.mlp(self.ln_2(x))


class Transformer(nn.Module):
    def __init__(self, width: int, heads: int, layers: int, hidden: int):
        super().__init__()
        self.resblocks = nn.ModuleList(ResidualAttentionBlock(width, heads, hidden) for _ in range(layers))


class TextEncoder(nn.Module):
    """tokens (B, L) int64 -> (B, L, width): embeddings, the first `layers_used` blocks, ln_final.

    Only the blocks that run are built, so the state dict holds transformer.resblocks.0 .. layers_used-1.
    """

    def __init__(self, cfg: TextEncoderConfig):
        super().__init__()
        if not 1 <= cfg.layers_used <= cfg.layers:
            raise ValueError(f"layers_used {cfg.layers_used} must be in 1..layers ({cfg.layers})")
        self.cfg = cfg
        self.token_embedding = nn.Embedding(cfg.vocab_size, cfg.width)
        self.positional_embedding = nn.Parameter(torch.empty(cfg.context_length, cfg.width))
        self.transformer = Transformer(cfg.width, cfg.heads, cfg.layers_used, cfg.mlp_width)
        self.ln_final = nn.LayerNorm(cfg.width)
        self.register_buffer("attn_mask", causal_mask(cfg.context_length), persistent=False)

    def init_buffers(self, device: torch.device | str | None = None) -> None:
        """Rebuild the causal mask (a module built on the meta device and loaded with assign=True has none)."""
        if device is None:
            device = self.positional_embedding.device
        self.attn_mask = causal_mask(self.cfg.context_length, device=device)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        n = tokens.shape[1]
        x = self.token_embedding(tokens) + self.positional_embedding[:n]  # (b, n, width)
        mask = self.attn_mask[:n, :n].float()
        for block in self.transformer.resblocks:
            x = block(x, mask)
        return self.ln_final(x)
