"""What a checkpoint is, without loading its weights: layout, resolved config, parameters per component, files.

Parameters are counted on modules built on the meta device (shapes only, no memory), so describing the 1.7B
model takes no more RAM than describing `tiny`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from t2vrt.config import ModelConfig


def parameter_counts(cfg: ModelConfig) -> dict[str, int]:
    """{component: parameters} for our modules of this config (built on "meta"), plus "total"."""
    from t2vrt.models.checkpoint import build_modules

    counts = {name: sum(p.numel() for p in m.parameters()) for name, m in build_modules(cfg, device="meta").items()}
    counts["total"] = sum(counts.values())
    return counts


def describe(model: str) -> dict[str, Any]:
    """A JSON-able description of MODEL (a checkpoint directory of either layout, a hub id, or `tiny`)."""
    from t2vrt.models import checkpoint

    source = checkpoint.resolve(model)
    cfg = checkpoint.load_config(source)
    files = []
    for path in source.files:
        files.append({"path": str(path), "bytes": Path(path).stat().st_size})
    return {
        "kind": "checkpoint",
        "model": model,
        "layout": source.layout,
        "root": str(source.root),
        "name": cfg.name,
        "parameters": parameter_counts(cfg),
        "config": cfg.to_dict(),
        "files": files,
        "bytes": sum(f["bytes"] for f in files),
    }


def human_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GB"


def human_count(n: int) -> str:
    return f"{n / 1e9:.2f} B" if n >= 1e9 else f"{n / 1e6:.1f} M" if n >= 1e6 else f"{n / 1e3:.1f} K"


def format_description(d: dict[str, Any]) -> str:
    """The readable summary `t2vrt info` prints for a checkpoint."""
    c = d["config"]
    u, t, v, s, df = c["unet"], c["text_encoder"], c["vae"], c["schedule"], c["defaults"]
    p = d["parameters"]
    where = "" if d["layout"] == "embedded" else f" at {d['root']}"
    lines = [
        f"model:   {d['model']}",
        f"layout:  {d['layout']}{where}",
        f"name:    {d['name']}",
        "parameters:",
        f"  text_encoder  {p['text_encoder']:>15,}  ({human_count(p['text_encoder'])})  "
        f"width {t['width']}, {t['heads']} heads, {t['layers_used']} of {t['layers']} blocks, context {t['context_length']}",
        f"  unet          {p['unet']:>15,}  ({human_count(p['unet'])})  "
        f"channels {u['model_channels']} x {tuple(u['channel_mult'])}, {u['num_res_blocks']} res blocks/level, "
        f"head dim {u['head_dim']}, context {u['context_dim']}",
        f"  vae_decoder   {p['vae_decoder']:>15,}  ({human_count(p['vae_decoder'])})  "
        f"ch {v['ch']} x {tuple(v['ch_mult'])}, latent {v['z_channels']} ch, /{2 ** (len(v['ch_mult']) - 1)}, "
        f"scale {v['scaling_factor']}",
        f"  total         {p['total']:>15,}  ({human_count(p['total'])})",
        f"schedule: {s['beta_schedule']} betas {s['beta_start']}..{s['beta_end']} over {s['num_train_timesteps']} steps, "
        f"{s['prediction_type']} prediction",
        f"defaults: {df['num_frames']} frames {df['width']}x{df['height']}, {df['num_inference_steps']} steps, "
        f"guidance {df['guidance_scale']}, {df['fps']} fps",
    ]
    if d["files"]:
        lines.append(f"files ({human_bytes(d['bytes'])}):")
        root = Path(d["root"])
        for f in d["files"]:
            path = Path(f["path"])
            name = path.relative_to(root) if path.is_relative_to(root) else path
            lines.append(f"  {name!s:<48} {human_bytes(f['bytes']):>10}")
    else:
        lines.append("files: none (built in memory from a fixed seed)")
    return "\n".join(lines)
