"""Weight and activation sizes of the three engines from the model config alone (no graph, no weights, no torch).

The planner needs the full ms-1.7b figures (a 5.6 GB export) on machines that have none, and at many candidate
shapes; this walks each component's blocks in execution order, like the graph does, counting:
- parameters, exactly (tests check 1.41 B for the ms-1.7b UNet against the reference figure and the tiny
  models' counts on the meta device where those models exist);
- activations: the tensors alive at each op of a block (its input kept for the residual, the op's inputs and
  outputs) on top of what is held across blocks (the UNet's skip connections), as element counts; the peak is
  the estimate. Attention is counted fused (TensorRT's MHA kernels never write the score matrix), as the ONNX
  liveness estimate counts it; tests compare the two on exported graphs.
The UNet walk follows `unet_layout`, the block list the PyTorch model is built from (t2vrt.config.unet), so the two
cannot drift. The registry's planner entries (t2vrt.components) call these per component.
"""

from __future__ import annotations

from dataclasses import dataclass

from t2vrt.config import LayerSpec, TextEncoderConfig, UNet3DConfig, VAEConfig, unet_layout


@dataclass
class _Walk:
    """Running totals of one component walk: parameters, elements held across blocks, and the peak seen."""

    params: int = 0
    held: int = 0
    peak: int = 0

    def op(self, *live: int) -> None:
        self.peak = max(self.peak, self.held + sum(live))

    def vae_res(self, cin: int, cout: int, n_pos: int) -> None:
        """The VAE's ResnetBlock at `n_pos` positions: norm, conv 3x3, norm, conv 3x3, 1x1 shortcut if widened."""
        self.params += 2 * cin + _conv(cin, cout, 9) + 2 * cout + _conv(cout, cout, 9)
        self.params += _conv(cin, cout, 1) if cin != cout else 0
        i, o = cin * n_pos, cout * n_pos
        self.op(i, i, o)
        self.op(i, o, o)
        self.op(i, o, o)
        self.op(o, o, o)

    def vae_mid(self, ch: int, n_pos: int) -> None:
        """The VAE's middle: res block, single-head attention (norm, q, k, v, proj_out), res block."""
        self.vae_res(ch, ch, n_pos)
        self.params += 2 * ch + 4 * _conv(ch, ch, 1)
        self.op(ch * n_pos, ch * n_pos, 3 * ch * n_pos, ch * n_pos)
        self.vae_res(ch, ch, n_pos)


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


def unet(cfg: UNet3DConfig, batch: int, frames: int, lh: int, lw: int) -> tuple[int, int]:
    """(parameters, peak live activation elements) of the UNet3D on (batch, c, frames, lh, lw).

    Walks `unet_layout`, the same block list the PyTorch model is built from; skips are held from the input block
    that makes them to the output block that concatenates them."""
    layout = unet_layout(cfg)
    levels, temb = len(cfg.channel_mult), cfg.time_embed_dim
    n = batch * frames
    pos = [n * (lh // 2**lvl) * (lw // 2**lvl) for lvl in range(levels)]
    w = _Walk()
    w.params += _linear(cfg.model_channels, temb) + _linear(temb, temb)

    def layer(spec: LayerSpec, ch: int) -> int:
        """Count one layer working on `ch` channels; return its output channels."""
        lvl = spec.level if spec.level >= 0 else levels - 1
        p = pos[lvl]
        if spec.kind == "conv_in":
            w.params += _conv(spec.in_channels, spec.channels, 9)
            w.op(spec.channels * p)
        elif spec.kind == "res":
            _resblock(w, spec.in_channels, spec.channels, p, temb, True)
        elif spec.kind in ("spatial", "temporal"):
            ctx = cfg.context_dim if spec.kind == "spatial" else None
            _transformer(w, spec.channels, spec.heads * cfg.head_dim, p, ctx)
        elif spec.kind == "down":
            w.params += _conv(ch, ch, 9)
            w.op(ch * pos[lvl + 1])  # stride-2 conv
        elif spec.kind == "up":
            w.params += _conv(ch, ch, 9)
            w.op(ch * p, ch * pos[lvl - 1], ch * pos[lvl - 1])  # nearest x2, conv
        return spec.channels

    ch = 0
    skips: list[tuple[int, int]] = []  # (channels, level) of each input block's output
    for block in layout["input_blocks"]:
        for spec in block:
            ch = layer(spec, ch)
        lvl = block[0].level + (1 if block[0].kind == "down" else 0)
        skips.append((ch, lvl))
        w.held += ch * pos[lvl]
    for spec in layout["middle_block"][0]:
        ch = layer(spec, ch)
    for block in layout["output_blocks"]:
        skip, lvl = skips.pop()
        w.held -= skip * pos[lvl]
        w.op(ch * pos[lvl], skip * pos[lvl], (ch + skip) * pos[lvl])  # concat with the skip
        for spec in block:
            ch = layer(spec, ch)
    w.params += 2 * ch + _conv(ch, cfg.out_channels, 9)
    w.op(ch * pos[0], ch * pos[0])
    return w.params, w.peak


def text_encoder(cfg: TextEncoderConfig, batch: int) -> tuple[int, int]:
    """(parameters, peak activation elements) of the text tower run to `layers_used` blocks, then ln_final."""
    width, ctx, layers = cfg.width, cfg.context_length, cfg.layers_used
    w = _Walk()
    w.params += cfg.vocab_size * width + ctx * width + 2 * width
    w.params += layers * (2 * width + _linear(width, 3 * width) + _linear(width, width) + 2 * width)
    w.params += layers * (_linear(width, 4 * width) + _linear(4 * width, width))
    x = batch * ctx * width
    w.op(x, x, 3 * x, x)  # x, ln_1 -> qkv -> fused attention
    w.op(x, x, 4 * x, 4 * x)  # ln_2 -> c_fc -> gelu
    return w.params, w.peak


def vae_decoder(cfg: VAEConfig, images: int, lh: int, lw: int) -> tuple[int, int]:
    """(parameters, peak activation elements) of post_quant_conv + the KL-f8 decoder on `images` latents."""
    ch0, mult, nres = cfg.ch, list(cfg.ch_mult), cfg.num_res_blocks
    z, emb = cfg.z_channels, cfg.embed_dim
    w = _Walk()

    levels = len(mult)
    pos = [images * (lh * 2**k) * (lw * 2**k) for k in range(levels)]  # pos[k]: after k upsamplings
    ch = ch0 * mult[-1]
    w.params += _conv(emb, z, 1) + _conv(z, ch, 9)
    w.op(z * pos[0], ch * pos[0])
    w.vae_mid(ch, pos[0])
    for k, lvl in enumerate(reversed(range(levels))):
        out = ch0 * mult[lvl]
        for _ in range(nres + 1):
            w.vae_res(ch, out, pos[k])
            ch = out
        if lvl:
            w.params += _conv(ch, ch, 9)
            w.op(ch * pos[k], ch * pos[k + 1], ch * pos[k + 1])  # nearest x2, conv
    w.params += 2 * ch + _conv(ch, cfg.out_ch, 9)
    w.op(ch * pos[-1], ch * pos[-1], ch * pos[-1])
    return w.params, w.peak


def vae_encoder(cfg: VAEConfig, images: int, lh: int, lw: int) -> tuple[int, int]:
    """(parameters, peak activation elements) of the KL-f8 encoder + quant_conv on `images` frames of lh*f x lw*f."""
    ch0, mult, nres = cfg.ch, list(cfg.ch_mult), cfg.num_res_blocks
    z, emb = cfg.z_channels, cfg.embed_dim
    w = _Walk()

    levels = len(mult)
    pos = [images * (lh * 2**k) * (lw * 2**k) for k in reversed(range(levels))]  # pos[i]: at level i (0 = full)
    ch = ch0
    w.params += _conv(cfg.out_ch, ch, 9)
    w.op(cfg.out_ch * pos[0], ch * pos[0])
    for i in range(levels):
        out = ch0 * mult[i]
        for _ in range(nres):
            w.vae_res(ch, out, pos[i])
            ch = out
        if i + 1 < levels:
            w.params += _conv(ch, ch, 9)
            w.op(ch * pos[i], ch * pos[i], ch * pos[i + 1])  # zero pad (bottom/right), stride-2 conv
    p = pos[-1]
    w.vae_mid(ch, p)
    w.params += 2 * ch + _conv(ch, 2 * z, 9) + _conv(2 * z, 2 * emb, 1)
    w.op(ch * p, ch * p, 2 * z * p)
    w.op(2 * z * p, 2 * emb * p, 2 * emb * p)  # quant_conv, then the mean / logvar halves
    return w.params, w.peak
