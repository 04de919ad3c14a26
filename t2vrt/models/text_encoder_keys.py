"""Text encoder key maps: OpenCLIP checkpoints and transformers' CLIPTextModel (the diffusers layout) onto ours.

Ours = open_clip's text-tower names, only the blocks that run. One explicit table per layout, built from the config;
every kept key is mapped exactly once, and an unknown or missing key raises KeyError naming it.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

import torch

from t2vrt.config.text import TextEncoderConfig
from t2vrt.errors import UsageError
from t2vrt.models.rename import KeyMapError
from t2vrt.models.state_check import check_shapes

Tensor = torch.Tensor
_BLOCK = re.compile(r"^transformer\.resblocks\.(\d+)\.")
# Parts of an OpenCLIP checkpoint that the penultimate-layer text encoder never reads.
_OPENCLIP_UNUSED = re.compile(r"^(visual\..*|text_projection|logit_scale|logit_bias|attn_mask)$")
_HF_PREFIX = "text_model."  # transformers 4.x modules and every saved file; 5.x modules drop it in memory
_HF_BUFFERS = {"embeddings.position_ids"}  # saved by old transformers versions; not a weight


def expected_shapes(cfg: TextEncoderConfig) -> dict[str, tuple[int, ...]]:
    """Our state dict's keys (TextEncoder.state_dict() order) and shapes."""
    w, m = cfg.width, cfg.mlp_width
    out: dict[str, tuple[int, ...]] = {
        "positional_embedding": (cfg.context_length, w),
        "token_embedding.weight": (cfg.vocab_size, w),
    }
    for i in range(cfg.layers_used):
        p = f"transformer.resblocks.{i}."
        out.update(
            {
                p + "ln_1.weight": (w,),
                p + "ln_1.bias": (w,),
                p + "attn.in_proj_weight": (3 * w, w),
                p + "attn.in_proj_bias": (3 * w,),
                p + "attn.out_proj.weight": (w, w),
                p + "attn.out_proj.bias": (w,),
                p + "ln_2.weight": (w,),
                p + "ln_2.bias": (w,),
                p + "mlp.c_fc.weight": (m, w),
                p + "mlp.c_fc.bias": (m,),
                p + "mlp.c_proj.weight": (w, m),
                p + "mlp.c_proj.bias": (w,),
            }
        )
    out["ln_final.weight"] = (w,)
    out["ln_final.bias"] = (w,)
    return out


def check_state(sd: Mapping[str, Tensor], cfg: TextEncoderConfig) -> None:
    """Exact key set and shapes of our layout; raises KeyError / ValueError naming the first mismatch."""
    check_shapes(sd, expected_shapes(cfg), "text encoder")


# ---- OpenCLIP ------------------------------------------------------------------------------------------------


def config_from_openclip_state(sd: Mapping[str, Tensor], head_width: int = 64) -> TextEncoderConfig:
    """Infer the text tower's shape from an OpenCLIP state dict (heads from the width: OpenCLIP uses 64-d heads)."""
    for k in ("token_embedding.weight", "positional_embedding"):
        if k not in sd:
            raise KeyMapError(f"not an OpenCLIP state dict: no {k!r}")
    vocab, width = (int(n) for n in sd["token_embedding.weight"].shape)
    context = int(sd["positional_embedding"].shape[0])
    blocks = sorted({int(m.group(1)) for k in sd if (m := _BLOCK.match(k))})
    if not blocks or blocks != list(range(len(blocks))):
        raise KeyMapError(f"OpenCLIP transformer.resblocks indices must be 0..n-1, found {blocks[:5]}...")
    if len(blocks) < 2:
        raise ValueError(f"the penultimate-layer encoder needs at least 2 blocks, the checkpoint has {len(blocks)}")
    if width % head_width:
        raise ValueError(f"text width {width} is not a multiple of the head width {head_width}")
    return TextEncoderConfig(
        vocab_size=vocab,
        context_length=context,
        width=width,
        heads=width // head_width,
        layers=len(blocks),
        layers_used=len(blocks) - 1,
    )


def openclip_to_ours(sd: Mapping[str, Tensor], cfg: TextEncoderConfig) -> dict[str, Tensor]:
    """Keep the text tower's used keys (names unchanged); drop the vision tower, projection, blocks >= layers_used."""
    shapes = expected_shapes(cfg)
    out: dict[str, Tensor] = {}
    for k, v in sd.items():
        if k in shapes:
            out[k] = v
            continue
        m = _BLOCK.match(k)
        if (m and cfg.layers_used <= int(m.group(1)) < cfg.layers) or _OPENCLIP_UNUSED.match(k):
            continue
        raise KeyMapError(f"unexpected key in the OpenCLIP state dict: {k!r}")
    for k in shapes:
        if k not in out:
            raise KeyMapError(f"OpenCLIP state dict lacks {k!r}")
    return {k: out[k] for k in shapes}


# ---- transformers CLIPTextModel (diffusers' text_encoder/) ---------------------------------------------------

_Target = str | tuple[str, str, str]  # one key, or the (q, k, v) keys that in_proj splits into


def _diffusers_names(cfg: TextEncoderConfig) -> dict[str, _Target]:
    """ours -> CLIPTextModel key (without the 'text_model.' prefix), in our state-dict order."""
    names: dict[str, _Target] = {
        "positional_embedding": "embeddings.position_embedding.weight",
        "token_embedding.weight": "embeddings.token_embedding.weight",
    }
    for i in range(cfg.layers_used):
        o, d = f"transformer.resblocks.{i}.", f"encoder.layers.{i}."
        pairs: list[tuple[str, _Target]] = [
            ("ln_1.", d + "layer_norm1."),
            ("attn.in_proj_", tuple(f"{d}self_attn.{x}_proj." for x in "qkv")),  # type: ignore[list-item]
            ("attn.out_proj.", d + "self_attn.out_proj."),
            ("ln_2.", d + "layer_norm2."),
            ("mlp.c_fc.", d + "mlp.fc1."),
            ("mlp.c_proj.", d + "mlp.fc2."),
        ]
        for ours, theirs in pairs:
            for suffix in ("weight", "bias"):
                if isinstance(theirs, str):
                    names[o + ours + suffix] = theirs + suffix
                else:
                    names[o + ours + suffix] = tuple(t + suffix for t in theirs)  # type: ignore[assignment]
    names["ln_final.weight"] = "final_layer_norm.weight"
    names["ln_final.bias"] = "final_layer_norm.bias"
    return names


def diffusers_to_original(sd: Mapping[str, Tensor], cfg: TextEncoderConfig) -> dict[str, Tensor]:
    """CLIPTextModel state dict (with or without the 'text_model.' prefix) -> ours; q/k/v concatenate into in_proj."""
    prefixed = [k.startswith(_HF_PREFIX) for k in sd]
    strip = len(_HF_PREFIX) if any(prefixed) else 0
    if any(prefixed) and not all(prefixed):
        bad = next(k for k, p in zip(sd, prefixed) if not p)
        raise KeyMapError(f"CLIPTextModel key {bad!r} lacks the {_HF_PREFIX!r} prefix the other keys have")
    hf = {k[strip:]: v for k, v in sd.items() if k[strip:] not in _HF_BUFFERS}
    inverse = {}
    for ours, theirs in _diffusers_names(cfg).items():
        for t in (theirs,) if isinstance(theirs, str) else theirs:
            inverse[t] = ours
    for k in hf:
        if k not in inverse:
            raise KeyMapError(f"unexpected CLIPTextModel key {_HF_PREFIX[:strip]}{k!r}")
    out: dict[str, Tensor] = {}
    for ours, theirs in _diffusers_names(cfg).items():
        parts = (theirs,) if isinstance(theirs, str) else theirs
        for t in parts:
            if t not in hf:
                raise KeyMapError(f"CLIPTextModel state dict lacks {_HF_PREFIX[:strip] + t!r}")
        out[ours] = hf[parts[0]] if len(parts) == 1 else torch.cat([hf[t] for t in parts], dim=0)
    return out


def original_to_diffusers(
    sd: Mapping[str, Tensor], cfg: TextEncoderConfig, prefix: str = _HF_PREFIX
) -> dict[str, Tensor]:
    """Ours -> CLIPTextModel names; prefix 'text_model.' as saved files have it, '' for a transformers 5.x module."""
    names = _diffusers_names(cfg)
    for k in sd:
        if k not in names:
            raise KeyMapError(f"unexpected text encoder key {k!r}")
    out: dict[str, Tensor] = {}
    for ours, theirs in names.items():
        if ours not in sd:
            raise KeyMapError(f"text encoder state dict lacks {ours!r}")
        if isinstance(theirs, str):
            out[prefix + theirs] = sd[ours]
        else:
            for t, part in zip(theirs, sd[ours].chunk(3, dim=0)):
                out[prefix + t] = part.clone()  # own storage: safetensors refuses views of one buffer
    return out


def config_from_diffusers(d: Mapping) -> TextEncoderConfig:
    """A CLIPTextConfig dict (text_encoder/config.json) -> ours. The file's layers are the used ones: the export
    already dropped the last block, so the original tower had one more."""
    required = {"hidden_act": "gelu", "intermediate_size": 4 * int(d.get("hidden_size", 0))}
    for key, want in required.items():
        if d.get(key, want) != want:
            raise UsageError(f"text encoder config: {key} = {d.get(key)!r} is not supported (t2vrt needs {want!r})")
    if float(d.get("layer_norm_eps", 1e-5)) != 1e-5:
        raise UsageError(f"text encoder config: layer_norm_eps = {d['layer_norm_eps']!r} is not supported (need 1e-5)")
    layers_used = int(d["num_hidden_layers"])
    return TextEncoderConfig(
        vocab_size=int(d["vocab_size"]),
        context_length=int(d["max_position_embeddings"]),
        width=int(d["hidden_size"]),
        heads=int(d["num_attention_heads"]),
        layers=layers_used + 1,
        layers_used=layers_used,
    )


def config_to_diffusers(cfg: TextEncoderConfig) -> dict:
    """Ours -> a CLIPTextConfig dict with the values of damo-vilab/text-to-video-ms-1.7b's text_encoder/config.json."""
    return {
        "architectures": ["CLIPTextModel"],
        "model_type": "clip_text_model",
        "attention_dropout": 0.0,
        "bos_token_id": 0,
        "dropout": 0.0,
        "eos_token_id": 2,
        "hidden_act": "gelu",
        "hidden_size": cfg.width,
        "initializer_factor": 1.0,
        "initializer_range": 0.02,
        "intermediate_size": cfg.mlp_width,
        "layer_norm_eps": 1e-05,
        "max_position_embeddings": cfg.context_length,
        "num_attention_heads": cfg.heads,
        "num_hidden_layers": cfg.layers_used,
        "pad_token_id": 1,
        "projection_dim": 512,
        "vocab_size": cfg.vocab_size,
    }
