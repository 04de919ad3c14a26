"""Write our three modules as a checkpoint directory of either layout (for tests, and full-size random benchmarks).

The files mimic the real releases closely enough that the loader meets what it meets in the wild:
- original: configuration.json (model_args + model_cfg nested under "model"), the raw UNet .pth, an open_clip
  .bin holding the whole text tower (the unused last block, text_projection, logit_scale) and a few vision keys,
  and VQGAN_autoencoder.pth as a PyTorch-Lightning checkpoint (encoder + quant_conv too, epoch/global_step, and
  callback states keyed by a class that pickles as pytorch_lightning's ModelCheckpoint);
- diffusers: model_index.json, unet/, vae/ (decoder + a few encoder keys), text_encoder/ (CLIPTextModel names),
  tokenizer/ (CLIP BPE files from open_clip's vocabulary), scheduler/.
Weights that our modules do not hold (the unused block, the encoder side, the vision tower) are seeded random.
"""

from __future__ import annotations

import json
import pickle
import types
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from t2vrt.config import ModelConfig

Tensor = torch.Tensor
DIFFUSERS_VERSION = "0.15.0.dev0"


def _state(module: nn.Module) -> dict[str, Tensor]:
    return {k: v.detach() for k, v in module.state_dict().items()}


def _randn(gen: torch.Generator, *shape: int, dtype: torch.dtype = torch.float32) -> Tensor:
    return (0.02 * torch.randn(shape, generator=gen)).to(dtype)


def _json(path: Path, obj: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=2) + "\n")


# ---- original ModelScope layout --------------------------------------------------------------------------------


def original_model_cfg(cfg: ModelConfig) -> dict:
    """configuration.json's model_cfg for this config (key names and value types as the release writes them)."""
    u = cfg.unet
    model_cfg = {
        "unet_in_dim": u.in_channels,
        "unet_dim": u.model_channels,
        "unet_y_dim": 768,
        "unet_context_dim": u.context_dim,
        "unet_out_dim": u.out_channels,
        "unet_dim_mult": list(u.channel_mult),
        "unet_num_heads": u.num_heads,
        "unet_head_dim": u.head_dim,
        "unet_res_blocks": u.num_res_blocks,
        "unet_attn_scales": [int(s) if s == int(s) else s for s in u.attn_scales],
        "unet_dropout": 0.1,
        "temporal_attention": str(u.temporal_attention),
        "num_timesteps": cfg.schedule.num_train_timesteps,
        "mean_type": {"epsilon": "eps", "v_prediction": "v"}[cfg.schedule.prediction_type],
        "var_type": "fixed_small",
        "loss_type": "mse",
    }
    # t2vrt extensions, written only for configs the release cannot describe (it hard-codes both):
    if u.norm_groups != 32:
        model_cfg["unet_norm_groups"] = u.norm_groups
    if cfg.text_encoder.width != 64 * cfg.text_encoder.heads:
        model_cfg["clip_head_width"] = cfg.text_encoder.width // cfg.text_encoder.heads
    return model_cfg


def write_original(root: str | Path, models: Mapping[str, nn.Module], cfg: ModelConfig, seed: int = 0) -> Path:
    """The ModelScope release's four files in `root` (created)."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    gen = torch.Generator().manual_seed(seed)
    _json(
        root / "configuration.json",
        {
            "framework": "pytorch",
            "task": "text-to-video-synthesis",
            "model": {
                "type": "latent-text-to-video-synthesis",
                "model_args": {
                    "ckpt_clip": "open_clip_pytorch_model.bin",
                    "ckpt_unet": "text2video_pytorch_model.pth",
                    "ckpt_autoencoder": "VQGAN_autoencoder.pth",
                    "max_frames": 16,
                    "tiny_gpu": 1,
                },
                "model_cfg": original_model_cfg(cfg),
            },
            "pipeline": {"type": "latent-text-to-video-synthesis"},
        },
    )
    torch.save(_state(models["unet"]), root / "text2video_pytorch_model.pth")
    torch.save(openclip_state(models["text_encoder"], cfg, gen), root / "open_clip_pytorch_model.bin")
    save_lightning(
        lightning_checkpoint(models["vae_decoder"], cfg, gen, models.get("vae_encoder")), root / "VQGAN_autoencoder.pth"
    )
    return root


def openclip_state(text_encoder: nn.Module, cfg: ModelConfig, gen: torch.Generator) -> dict[str, Tensor]:
    """Our text tower plus what a whole OpenCLIP checkpoint also holds: the unused blocks, the projection, vision."""
    t = cfg.text_encoder
    sd = _state(text_encoder)
    dtype = sd["positional_embedding"].dtype
    extra: dict[str, Tensor] = {}
    for i in range(t.layers_used, t.layers):
        for k, v in sd.items():
            if k.startswith("transformer.resblocks.0."):
                extra[k.replace(".0.", f".{i}.", 1)] = _randn(gen, *v.shape, dtype=dtype)
    head = {k: v for k, v in sd.items() if not k.startswith("ln_final.")}
    out = head | extra | {k: v for k, v in sd.items() if k.startswith("ln_final.")}  # open_clip's order
    out["text_projection"] = _randn(gen, t.width, t.width, dtype=dtype)
    out["logit_scale"] = torch.tensor(4.6052, dtype=dtype)
    out["visual.class_embedding"] = _randn(gen, 16, dtype=dtype)
    out["visual.conv1.weight"] = _randn(gen, 16, 3, 14, 14, dtype=dtype)
    out["visual.proj"] = _randn(gen, 16, t.width, dtype=dtype)
    return out


def _encoder_side(cfg: ModelConfig, gen: torch.Generator, dtype: torch.dtype) -> dict[str, Tensor]:
    """A few of the autoencoder's encoder-side weights, which a decoder-only loader must skip."""
    v = cfg.vae
    top = v.ch * v.ch_mult[-1]
    return {
        "encoder.conv_in.weight": _randn(gen, v.ch, v.out_ch, 3, 3, dtype=dtype),
        "encoder.conv_in.bias": _randn(gen, v.ch, dtype=dtype),
        "encoder.conv_out.weight": _randn(gen, 2 * v.z_channels, top, 3, 3, dtype=dtype),
        "encoder.conv_out.bias": _randn(gen, 2 * v.z_channels, dtype=dtype),
        "quant_conv.weight": _randn(gen, 2 * v.embed_dim, 2 * v.z_channels, 1, 1, dtype=dtype),
        "quant_conv.bias": _randn(gen, 2 * v.embed_dim, dtype=dtype),
    }


class ModelCheckpointStub:
    """Pickles as pytorch_lightning.callbacks.model_checkpoint.ModelCheckpoint (as a dict key, like Lightning 1.x),
    so the written file needs pytorch_lightning to unpickle naively, as the real VQGAN_autoencoder.pth does."""

    _pickle_as = ("pytorch_lightning.callbacks.model_checkpoint", "ModelCheckpoint")


def lightning_checkpoint(
    vae_decoder: nn.Module, cfg: ModelConfig, gen: torch.Generator, vae_encoder: nn.Module | None = None
) -> dict[str, Any]:
    """The release's autoencoder: the encoder side from `vae_encoder` (encoder.* + quant_conv), else a few random
    encoder keys (which a decoder-only loader must skip), and the decoder."""
    sd = _state(vae_decoder)
    dtype = sd["post_quant_conv.weight"].dtype
    enc = _state(vae_encoder) if vae_encoder is not None else _encoder_side(cfg, gen, dtype)
    state = {f"first_stage_model.{k}": v for k, v in (enc | sd).items()}
    state["loss.logvar"] = torch.zeros(())
    return {
        "epoch": 7,
        "global_step": 100000,
        "pytorch-lightning_version": "1.4.2",
        "state_dict": state,
        "callbacks": {ModelCheckpointStub: {"monitor": None, "best_model_score": None, "best_model_path": ""}},
        "optimizer_states": [],
        "lr_schedulers": [],
    }


_PurePythonPickler: Any = pickle._Pickler  # type: ignore[attr-defined]  # its save_global can be overridden


class _AliasPickler(_PurePythonPickler):
    """Writes a class carrying `_pickle_as = (module, name)` as that global, without importing it."""

    def save_global(self, obj: Any, name: str | None = None) -> None:
        alias = obj.__dict__.get("_pickle_as") if isinstance(obj, type) else None
        if alias is None:
            super().save_global(obj, name)
            return
        self.write(pickle.GLOBAL + f"{alias[0]}\n{alias[1]}\n".encode())
        self.memoize(obj)


def save_lightning(ckpt: Mapping[str, Any], path: str | Path) -> None:
    """torch.save with a pickler that names the aliased classes (a torch zip archive, as Lightning writes)."""
    module = types.ModuleType("t2vrt_alias_pickle")  # torch.save only needs .Pickler (and a __name__)
    module.Pickler = _AliasPickler  # type: ignore[attr-defined]
    torch.save(dict(ckpt), path, pickle_module=module, pickle_protocol=2)


# ---- diffusers layout ------------------------------------------------------------------------------------------


def save_safetensors(sd: Mapping[str, Tensor], path: Path, max_shard_bytes: int = 2 << 30) -> None:
    """One file, or `stem-0000k-of-0000n.safetensors` shards plus `<name>.index.json` as diffusers writes past a
    size: safetensors serialises a whole file in memory, so shards bound the extra RAM for full-size models."""
    from safetensors.torch import save_file

    shards: list[dict[str, Tensor]] = [{}]
    size = 0
    for k, v in sd.items():
        nbytes = v.numel() * v.element_size()
        if shards[-1] and size + nbytes > max_shard_bytes:
            shards.append({})
            size = 0
        shards[-1][k] = v.contiguous()
        size += nbytes
    path.parent.mkdir(parents=True, exist_ok=True)
    if len(shards) == 1:
        save_file(shards[0], str(path), metadata={"format": "pt"})
        return
    stem = path.name.removesuffix(".safetensors")
    weight_map = {}
    for i, shard in enumerate(shards, 1):
        name = f"{stem}-{i:05d}-of-{len(shards):05d}.safetensors"
        save_file(shard, str(path.parent / name), metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(shard, name))
    total = sum(v.numel() * v.element_size() for v in sd.values())
    _json(path.with_name(path.name + ".index.json"), {"metadata": {"total_size": total}, "weight_map": weight_map})


def write_diffusers(
    root: str | Path, models: Mapping[str, nn.Module], cfg: ModelConfig, seed: int = 0, max_shard_bytes: int = 2 << 30
) -> Path:
    """A diffusers TextToVideoSDPipeline directory in `root` (created); weights as safetensors (sharded past
    `max_shard_bytes`, as diffusers does)."""
    from t2vrt.models import text_encoder_keys, unet3d_keys, vae_encoder_keys, vae_keys

    root = Path(root)
    gen = torch.Generator().manual_seed(seed)
    _json(
        root / "model_index.json",
        {
            "_class_name": "TextToVideoSDPipeline",
            "_diffusers_version": DIFFUSERS_VERSION,
            "scheduler": ["diffusers", "DDIMScheduler"],
            "text_encoder": ["transformers", "CLIPTextModel"],
            "tokenizer": ["transformers", "CLIPTokenizer"],
            "unet": ["diffusers", "UNet3DConditionModel"],
            "vae": ["diffusers", "AutoencoderKL"],
        },
    )

    def save(part: str, file: str, config: dict, sd: Mapping[str, Tensor]) -> None:
        _json(root / part / "config.json", config)
        save_safetensors(sd, root / part / file, max_shard_bytes)

    unet_cfg = {"_class_name": "UNet3DConditionModel", "_diffusers_version": DIFFUSERS_VERSION, "sample_size": 32}
    save(
        "unet",
        "diffusion_pytorch_model.safetensors",
        unet_cfg | unet3d_keys.config_to_diffusers(cfg.unet),
        unet3d_keys.original_to_diffusers(_state(models["unet"]), cfg.unet),
    )
    vae_sd = vae_keys.original_to_diffusers(_state(models["vae_decoder"]), cfg.vae)
    dtype = next(iter(vae_sd.values())).dtype
    vae_cfg = vae_keys.config_to_diffusers(cfg.vae) | {"_diffusers_version": DIFFUSERS_VERSION}
    if "vae_encoder" in models:
        enc = vae_encoder_keys.original_to_diffusers(_state(models["vae_encoder"]), cfg.vae)
    else:
        enc = _encoder_side(cfg, gen, dtype)
    save("vae", "diffusion_pytorch_model.safetensors", vae_cfg, enc | vae_sd)
    te_cfg = text_encoder_keys.config_to_diffusers(cfg.text_encoder) | {"torch_dtype": "float32"}
    save(
        "text_encoder",
        "model.safetensors",
        te_cfg,
        text_encoder_keys.original_to_diffusers(_state(models["text_encoder"]), cfg.text_encoder),
    )
    write_clip_tokenizer(root / "tokenizer", cfg.text_encoder.context_length)
    s = cfg.schedule
    _json(
        root / "scheduler" / "scheduler_config.json",
        {
            "_class_name": "DDIMScheduler",
            "_diffusers_version": DIFFUSERS_VERSION,
            "beta_end": s.beta_end,
            "beta_schedule": s.beta_schedule,
            "beta_start": s.beta_start,
            "clip_sample": False,
            "num_train_timesteps": s.num_train_timesteps,
            "prediction_type": s.prediction_type,
            "set_alpha_to_one": False,
            "skip_prk_steps": True,
            "steps_offset": 1,
            "trained_betas": None,
        },
    )
    return root


def write_clip_tokenizer(folder: Path, context_length: int = 77) -> None:
    """CLIPTokenizer files (vocab.json, merges.txt, configs) from open_clip's bundled BPE, with the diffusers
    repo's special tokens: <|startoftext|> 49406, <|endoftext|> 49407 (also unk), pad "!" (id 0)."""
    import gzip
    import importlib.util

    from t2vrt.runtime.tokenizer import N_MERGES, bytes_to_unicode

    spec = importlib.util.find_spec("open_clip")  # locate its bundled vocabulary without importing it (seconds)
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError("open_clip (open_clip_torch) is needed for its BPE vocabulary")
    bpe = Path(next(iter(spec.submodule_search_locations))) / "bpe_simple_vocab_16e6.txt.gz"
    lines = gzip.open(bpe).read().decode("utf-8").split("\n")[1 : N_MERGES + 1]
    symbols = list(bytes_to_unicode().values())
    tokens = symbols + [s + "</w>" for s in symbols] + ["".join(m.split()) for m in lines]
    tokens += ["<|startoftext|>", "<|endoftext|>"]
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(tokens)}, ensure_ascii=False))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(lines) + "\n")
    special = {
        "bos_token": "<|startoftext|>",
        "eos_token": "<|endoftext|>",
        "unk_token": "<|endoftext|>",
        "pad_token": "!",
    }
    _json(folder / "special_tokens_map.json", special)
    _json(
        folder / "tokenizer_config.json",
        {
            **special,
            "add_prefix_space": False,
            "do_lower_case": True,
            "errors": "replace",
            "model_max_length": context_length,
            "tokenizer_class": "CLIPTokenizer",
        },
    )
