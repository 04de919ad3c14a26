"""Weight and activation sizes of the three engines from the model config alone (no graph, no weights, no torch).

The planner needs the full ms-1.7b figures (a 5.6 GB export) on machines that have none, and at many candidate
shapes; this walks each component's blocks in execution order, like the graph does, counting:
- parameters, exactly (tests check 1.41 B for the ms-1.7b UNet against the reference figure and the tiny
  models' counts on the meta device where those models exist);
- activations: the tensors alive at each op of a block (its input kept for the residual, the op's inputs and
  outputs) on top of what is held across blocks (the UNet's skip connections), as element counts; the peak is
  the estimate. Attention is counted fused (TensorRT's MHA kernels never write the score matrix), as the ONNX
  liveness estimate counts it; tests compare the two on exported graphs.
The config is the dict a bundle's manifest carries (`ModelConfig.to_dict()`: "unet", "text_encoder", "vae").
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

FP16 = 2


@dataclass
class _Walk:
    """Running totals of one component walk: parameters, elements held across blocks, and the peak seen."""

    params: int = 0
    held: int = 0
    peak: int = 0

    def op(self, *live: int) -> None:
        self.peak = max(self.peak, self.held + sum(live))


def _linear(i: int, o: int, bias: bool = True) -> int:
    return i * o + (o if bias else 0)


def _conv(i: int, o: int, k: int) -> int:
    return i * o * k + o


def _block_params(dim: int, ctx: int | None) -> int:
    """A transformer block at width `dim`: self-attn, attn2 (cross to `ctx`, or self), GEGLU ff, three LayerNorms."""
    ctx = ctx or dim
    attn1 = 3 * dim * dim + _linear(dim, dim)
    attn2 = dim * dim + 2 * ctx * dim + _linear(dim, dim)
    ff = _linear(dim, 8 * dim) + _linear(4 * dim, dim)
    return attn1 + attn2 + ff + 3 * 2 * dim


def _transformer(w: _Walk, ch: int, inner: int, n_pos: int, ctx: int | None, groups_norm: bool = True) -> None:
    """Spatial (ctx = text width) or temporal (ctx None) transformer on a (positions, ch) map: x + proj(block(norm(x)))."""
    w.params += 2 * ch + _linear(ch, inner) + _block_params(inner, ctx) + _linear(inner, ch)
    c, d = ch * n_pos, inner * n_pos  # elements of one map at the two widths
    w.op(c, c)  # GroupNorm
    w.op(c, c, d)  # proj_in
    w.op(c, d, d, 3 * d, d)  # x, h, LayerNorm -> q, k, v -> fused attention out
    w.op(c, d, d, d)  # to_out + residual
    w.op(c, d, d, 8 * d)  # LayerNorm -> ff proj (GEGLU: value and gate)
    w.op(c, d, 8 * d, 4 * d, 4 * d)  # the two halves sliced out while the projection is still live
    w.op(c, d, 8 * d, 4 * d)  # gelu(gate) * value
    w.op(c, d, 4 * d, d)  # ff out
    w.op(c, d, c)  # proj_out
    w.op(c, c, c)  # + x


def _resblock(w: _Walk, cin: int, cout: int, n_pos: int, temb: int, temporal: bool) -> None:
    w.params += 2 * cin + _conv(cin, cout, 9) + _linear(temb, cout) + 2 * cout + _conv(cout, cout, 9)
    if cin != cout:
        w.params += _conv(cin, cout, 1)
    i, o = cin * n_pos, cout * n_pos
    w.op(i, i)  # x, norm+silu
    w.op(i, i, o)  # conv1
    w.op(i, o, o)  # + emb, norm+silu
    w.op(i, o, o)  # conv2
    w.op(i, o, o)  # skip connection
    w.op(o, o, o)  # add
    if temporal:  # temopral_conv: 4 x (GroupNorm, SiLU, Conv3d (3,1,1)), then + identity
        w.params += 4 * (2 * cout + _conv(cout, cout, 3))
        w.op(o, o, o)


def unet(cfg: Mapping[str, Any], batch: int, frames: int, lh: int, lw: int) -> tuple[int, int]:
    """(parameters, peak live activation elements) of the UNet3D on (batch, c, frames, lh, lw)."""
    c0, mult, nres = int(cfg["model_channels"]), list(cfg["channel_mult"]), int(cfg["num_res_blocks"])
    head, temb, ctx = int(cfg["head_dim"]), int(cfg["model_channels"]) * 4, int(cfg["context_dim"])
    attn_levels = {lvl for lvl in range(len(mult)) if 1 / 2**lvl in [float(s) for s in cfg["attn_scales"]]}
    temporal = bool(cfg.get("temporal_attention", True))
    w = _Walk()
    w.params += _linear(c0, temb) + _linear(temb, temb) + _conv(int(cfg["in_channels"]), c0, 9)
    n = batch * frames
    pos = [n * (lh // 2**lvl) * (lw // 2**lvl) for lvl in range(len(mult))]
    w.op(c0 * pos[0])
    _transformer(w, c0, int(cfg["num_heads"]) * head, pos[0], None)  # input_blocks.0.1
    skips = [c0 * pos[0]]
    chans = [c0]
    w.held += skips[-1]
    ch = c0
    for lvl, m in enumerate(mult):
        for _ in range(nres):
            _resblock(w, ch, m * c0, pos[lvl], temb, True)
            ch = m * c0
            if lvl in attn_levels:
                _transformer(w, ch, ch, pos[lvl], ctx)
                if temporal:
                    _transformer(w, ch, ch, pos[lvl], None)
            w.held += ch * pos[lvl]
            chans.append(ch)
        if lvl != len(mult) - 1:
            w.params += _conv(ch, ch, 9)
            w.op(ch * pos[lvl + 1])  # stride-2 conv
            w.held += ch * pos[lvl + 1]
            chans.append(ch)
    last = len(mult) - 1
    _resblock(w, ch, ch, pos[last], temb, True)
    _transformer(w, ch, ch, pos[last], ctx)
    if temporal:
        _transformer(w, ch, ch, pos[last], None)
    _resblock(w, ch, ch, pos[last], temb, True)
    for lvl in reversed(range(len(mult))):
        for i in range(nres + 1):
            skip = chans.pop()
            w.held -= skip * pos[lvl]
            cat = (ch + skip) * pos[lvl]
            w.op(ch * pos[lvl], skip * pos[lvl], cat)  # concat with the skip
            _resblock(w, ch + skip, mult[lvl] * c0, pos[lvl], temb, True)
            ch = mult[lvl] * c0
            if lvl in attn_levels:
                _transformer(w, ch, ch, pos[lvl], ctx)
                if temporal:
                    _transformer(w, ch, ch, pos[lvl], None)
            if lvl and i == nres:
                w.params += _conv(ch, ch, 9)
                w.op(ch * pos[lvl], ch * pos[lvl - 1], ch * pos[lvl - 1])  # nearest x2, conv
    w.params += 2 * ch + _conv(ch, int(cfg["out_channels"]), 9)
    w.op(ch * pos[0], ch * pos[0])
    return w.params, w.peak


def text_encoder(cfg: Mapping[str, Any], batch: int) -> tuple[int, int]:
    """(parameters, peak activation elements) of the text tower run to `layers_used` blocks, then ln_final."""
    width, ctx, layers = int(cfg["width"]), int(cfg["context_length"]), int(cfg["layers_used"])
    w = _Walk()
    w.params += int(cfg["vocab_size"]) * width + ctx * width + 2 * width
    w.params += layers * (2 * width + _linear(width, 3 * width) + _linear(width, width) + 2 * width)
    w.params += layers * (_linear(width, 4 * width) + _linear(4 * width, width))
    x = batch * ctx * width
    w.op(x, x, 3 * x, x)  # x, ln_1 -> qkv -> fused attention
    w.op(x, x, 4 * x, 4 * x)  # ln_2 -> c_fc -> gelu
    return w.params, w.peak


def vae_decoder(cfg: Mapping[str, Any], images: int, lh: int, lw: int) -> tuple[int, int]:
    """(parameters, peak activation elements) of post_quant_conv + the KL-f8 decoder on `images` latents."""
    ch0, mult, nres = int(cfg["ch"]), list(cfg["ch_mult"]), int(cfg["num_res_blocks"])
    z, emb = int(cfg["z_channels"]), int(cfg["embed_dim"])
    w = _Walk()

    def res(cin: int, cout: int, n_pos: int) -> None:
        w.params += 2 * cin + _conv(cin, cout, 9) + 2 * cout + _conv(cout, cout, 9)
        w.params += _conv(cin, cout, 1) if cin != cout else 0
        i, o = cin * n_pos, cout * n_pos
        w.op(i, i, o)
        w.op(i, o, o)
        w.op(i, o, o)
        w.op(o, o, o)

    levels = len(mult)
    pos = [images * (lh * 2**k) * (lw * 2**k) for k in range(levels)]  # pos[k]: after k upsamplings
    ch = ch0 * mult[-1]
    w.params += _conv(emb, z, 1) + _conv(z, ch, 9)
    w.op(z * pos[0], ch * pos[0])
    res(ch, ch, pos[0])
    w.params += 2 * ch + 4 * _conv(ch, ch, 1)  # mid attention: norm, q, k, v, proj_out
    w.op(ch * pos[0], ch * pos[0], 3 * ch * pos[0], ch * pos[0])
    res(ch, ch, pos[0])
    for k, lvl in enumerate(reversed(range(levels))):
        out = ch0 * mult[lvl]
        for _ in range(nres + 1):
            res(ch, out, pos[k])
            ch = out
        if lvl:
            w.params += _conv(ch, ch, 9)
            w.op(ch * pos[k], ch * pos[k + 1], ch * pos[k + 1])  # nearest x2, conv
    w.params += 2 * ch + _conv(ch, int(cfg["out_ch"]), 9)
    w.op(ch * pos[-1], ch * pos[-1], ch * pos[-1])
    return w.params, w.peak


def weight_bytes(model_cfg: Mapping[str, Any], itemsize: int = FP16) -> dict[str, int]:
    """Bytes of weights per engine at `itemsize` bytes per parameter (shapes do not matter: batch 1, 1 frame, 8x8)."""
    return {
        "text_encoder": text_encoder(model_cfg["text_encoder"], 1)[0] * itemsize,
        "unet": unet(model_cfg["unet"], 1, 1, 8, 8)[0] * itemsize,
        "vae_decoder": vae_decoder(model_cfg["vae"], 1, 1, 1)[0] * itemsize,
    }


def activation_bytes(model_cfg: Mapping[str, Any], component: str, dims: Mapping[str, int], itemsize: int = FP16) -> int:
    """Peak live activation bytes of one engine at the io-spec symbol sizes `dims`."""
    if component == "unet":
        _, peak = unet(model_cfg["unet"], dims["batch"], dims["frames"], dims["latent_height"], dims["latent_width"])
    elif component == "vae_decoder":
        _, peak = vae_decoder(model_cfg["vae"], dims["vae_batch"], dims["latent_height"], dims["latent_width"])
    elif component == "text_encoder":
        _, peak = text_encoder(model_cfg["text_encoder"], dims["text_batch"])
    else:
        raise KeyError(f"unknown component {component!r}")
    return peak * itemsize
