"""Where a LoRA's module names land: every spelling users' files have -> the original ModelScope weight key.

One table per UNet config, from the key map t2vrt's loaders already use (`unet3d_keys.key_pairs`): diffusers module
names (PEFT, diffusers, Text-To-Video-Finetuning), original names (sd-webui-text2video), and kohya's underscored form
of both (`lora_unet_down_blocks_0_temp_attentions_0_proj_in`: looked up whole, so the temporal modules that diffusers'
own kohya converter mangles map like any other). Plus the tensor-list order of the cloneofsimo `.pt` format.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from t2vrt.config import UNet3DConfig
from t2vrt.models.unet3d_keys import key_pairs

# The guidance embedding (T2V-Turbo): diffusers' TimestepEmbedding.cond_proj, a bias-free Linear(256 -> model_channels)
# whose output is added to the sinusoidal timestep embedding. The original release has no such module; t2vrt names it
# `time_cond_proj` beside `time_embed`.
GUIDANCE_DIFFUSERS = "time_embedding.cond_proj"
GUIDANCE_KEY = "time_cond_proj.weight"
GUIDANCE_EMBED_DIM = 256


@dataclass(frozen=True)
class ModuleNames:
    """module name (diffusers or original spelling) -> original weight key; diffusers name per original key."""

    to_key: dict[str, str]
    kohya: dict[str, str]  # "lora_unet_" + name with "." -> "_"
    diffusers: dict[str, str]  # original weight key -> diffusers module name

    def lookup(self, module: str) -> str | None:
        return self.to_key.get(module)


def module_names(cfg: UNet3DConfig) -> ModuleNames:
    to_key: dict[str, str] = {}
    diffusers: dict[str, str] = {}
    pairs = [(o, d) for o, d, _ in key_pairs(cfg) if o.endswith(".weight")]
    pairs.append((GUIDANCE_KEY, GUIDANCE_DIFFUSERS + ".weight"))
    for orig, diff in pairs:
        o_mod, d_mod = orig.removesuffix(".weight"), diff.removesuffix(".weight")
        to_key[o_mod] = orig
        to_key[d_mod] = orig
        diffusers[orig] = d_mod
    kohya: dict[str, str] = {}
    for name, key in to_key.items():
        mangled = "lora_unet_" + name.replace(".", "_")
        if kohya.get(mangled, key) != key:  # cannot happen for this layout; guards the lookup-whole design
            raise AssertionError(f"kohya name {mangled} is ambiguous")
        kohya[mangled] = key
    return ModuleNames(to_key, kohya, diffusers)


# ---- the cloneofsimo tensor-list order ----

_TEMP_CONV = ("conv1.2", "conv2.3", "conv3.3", "conv4.3")
_BLOCK = tuple(f"attn{i}.{p}" for i in (1, 2) for p in ("to_q", "to_k", "to_v", "to_out.0")) + (
    "ff.net.0.proj",
    "ff.net.2",
)


def _transformer(prefix: str) -> list[str]:
    return [f"{prefix}.proj_in", *(f"{prefix}.transformer_blocks.0.{n}" for n in _BLOCK), f"{prefix}.proj_out"]


def _unet_block(prefix: str, n: int) -> list[str]:
    """diffusers' 3-D blocks register resnets, temp_convs, attentions, temp_attentions, then the sampler."""
    out: list[str] = []
    for j in range(n):
        out += [f"{prefix}.resnets.{j}.{m}" for m in ("conv1", "time_emb_proj", "conv2", "conv_shortcut")]
    for j in range(n):
        out += [f"{prefix}.temp_convs.{j}.{m}" for m in _TEMP_CONV]
    for j in range(n):
        out += _transformer(f"{prefix}.attentions.{j}")
    for j in range(n):
        out += _transformer(f"{prefix}.temp_attentions.{j}")
    return out + [f"{prefix}.downsamplers.0.conv", f"{prefix}.upsamplers.0.conv"]


def diffusers_module_order(cfg: UNet3DConfig, guidance: bool) -> list[str]:
    """Every Linear / Conv2d / Conv3d of diffusers' UNet3DConditionModel in `named_modules()` order.

    Registration order in its __init__: conv_in, time_embedding (linear_1, cond_proj, linear_2), transformer_in,
    down_blocks, up_blocks (created before the mid block), mid_block, conv_out. Candidates a config lacks (shortcut
    convs, attention at some levels, samplers at the ends) are dropped by looking them up in the key map.
    """
    names = module_names(cfg)
    levels = len(cfg.channel_mult)
    time = ["time_embedding.linear_1", *([GUIDANCE_DIFFUSERS] if guidance else []), "time_embedding.linear_2"]
    order = ["conv_in", *time, *_transformer("transformer_in")]
    for i in range(levels):
        order += _unet_block(f"down_blocks.{i}", cfg.num_res_blocks)
    for i in range(levels):
        order += _unet_block(f"up_blocks.{i}", cfg.num_res_blocks + 1)
    order += _unet_block("mid_block", 2)
    order.append("conv_out")
    known = set(names.diffusers.values())
    return [m for m in order if m in known]


def _group(module: str) -> str:
    """The diffusers class a module sits under, for cloneofsimo's `target_replace_module` choices."""
    parts = module.split(".")
    for tag, group in (
        ("resnets", "ResnetBlock2D"),
        ("temp_convs", "TemporalConvLayer"),
        ("attentions", "Transformer2DModel"),
        ("temp_attentions", "TransformerTemporalModel"),
    ):
        if tag in parts:
            return group
    return "TransformerTemporalModel" if parts[0] == "transformer_in" else "UNet3DConditionModel"


LIST_GROUPS = ("ResnetBlock2D", "TemporalConvLayer", "Transformer2DModel", "TransformerTemporalModel")


def list_order(cfg: UNet3DConfig, guidance: bool, groups: frozenset[str], linear_only: bool) -> list[str]:
    """The modules a cloneofsimo injector visits: all of the UNet ("UNet3DConditionModel" in groups), or those under
    the named classes; Linear only (`inject_trainable_lora`) or Linear + Conv (`..._extended`)."""
    keep: Callable[[str], bool] = (
        (lambda m: True) if "UNet3DConditionModel" in groups else (lambda m: _group(m) in groups)
    )
    out = [m for m in diffusers_module_order(cfg, guidance) if keep(m)]
    return [m for m in out if not (linear_only and _is_conv(m))]


def _is_conv(module: str) -> bool:
    last = module.split(".")
    return last[-1] in ("conv_in", "conv_out", "conv1", "conv2", "conv_shortcut", "conv") or (
        len(last) >= 2 and last[-2] in ("conv1", "conv2", "conv3", "conv4")
    )
