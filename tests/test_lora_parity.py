"""LoRA merged by t2vrt vs the references: PEFT's merge_and_unload on diffusers' UNet3DConditionModel (PEFT format,
written by PEFT itself), and deltas applied by name on diffusers' model (the cloneofsimo tensor list)."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import torch
from lora_fixtures import (
    TINY,
    collapse_by_name,
    diffusers_unet,
    inputs,
    module_shapes,
    product_pair,
    rel_l2,
    tiny_unet,
)

from t2vrt.lora import merge_into_module, read_lora
from t2vrt.lora.names import diffusers_module_order
from t2vrt.models.unet3d_keys import original_to_diffusers

peft = pytest.importorskip("peft")
pytest.importorskip("diffusers")

# Every kind of module MCM's adapters target (spatial and temporal attention, transformer_in, ff, proj_in/out,
# resnet convs and time_emb_proj, shortcut, samplers), plus the temporal Conv3d, conv_in and conv_out: a PEFT regex.
TARGETS = (
    r".*(to_q|to_k|to_v|to_out\.0|proj_in|proj_out|ff\.net\.0\.proj|ff\.net\.2|samplers\.0\.conv|conv_in|conv_out"
    r"|resnets\.\d+\.(conv1|conv2|conv_shortcut|time_emb_proj)|temp_convs\.\d+\.(conv1\.2|conv[234]\.3))"
)


def _shapes(model: torch.nn.Module) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def _peft_adapter(ref: torch.nn.Module, out: Path) -> torch.nn.Module:
    """A PEFT LoRA with random A and B (B is zero at init), saved by PEFT; returns the PeftModel."""
    config = peft.LoraConfig(
        r=4,
        lora_alpha=8,
        target_modules=TARGETS,
        rank_pattern={"proj_out": 2},
        alpha_pattern={"to_k": 3.0},
        init_lora_weights=False,
    )
    model = peft.get_peft_model(ref, config)
    g = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.05)
    model.save_pretrained(str(out))
    return model


def test_peft_format_matches_merge_and_unload(tmp_path: Path) -> None:
    ours = tiny_unet()
    base = ours.state_dict()
    x = inputs(b=2, f=3)
    with torch.no_grad():
        before = ours(*x)
    ref = diffusers_unet({k: v.clone() for k, v in base.items()})
    peft_model = _peft_adapter(ref, tmp_path / "adapter")
    files = sorted(p.name for p in (tmp_path / "adapter").iterdir())
    assert files == ["README.md", "adapter_config.json", "adapter_model.safetensors"]
    merged_ref = peft_model.merge_and_unload().eval()

    lora = read_lora(tmp_path / "adapter", TINY, _shapes(ours))
    assert lora.format == "peft"
    report = merge_into_module(ours, [(lora, 1.0)])
    n_targets = sum(1 for n in module_shapes(merged_ref) if re.fullmatch(TARGETS, n))
    assert report.modules == len(lora.entries) == n_targets > 100
    assert report.delta_norm > 0

    # weights: ours (mapped to diffusers names) equal PEFT's merged weights
    ours_sd = original_to_diffusers(ours.state_dict(), TINY)
    ref_sd = merged_ref.state_dict()
    worst = max(float((ours_sd[k] - ref_sd[k]).abs().max()) for k in ref_sd)
    assert worst < 1e-6

    with torch.no_grad():
        got = ours(*x)
        want = merged_ref(*x).sample
    err, moved = rel_l2(got, want), rel_l2(before, want)
    print(f"\nPEFT LoRA merged by t2vrt vs merge_and_unload: rel L2 {err:.2e} (the LoRA moved the output {moved:.2e})")
    assert err < 1e-5 and moved > 1e-3


def _list_pairs(model: torch.nn.Module, guidance: bool, seed: int) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    shapes = module_shapes(model)
    g = torch.Generator().manual_seed(seed)
    order = diffusers_module_order(TINY, guidance)
    assert list(shapes) == order  # the order the cloneofsimo injector visits
    return {name: product_pair(shapes[name], 4, g) for name in order}


def test_tensor_list_matches_deltas_applied_by_name(tmp_path: Path) -> None:
    ours = tiny_unet(seed=1)
    ref = diffusers_unet({k: v.clone() for k, v in ours.state_dict().items()})
    pairs = _list_pairs(ref, guidance=False, seed=2)
    path = tmp_path / "unet_lora.pt"
    torch.save([t for up_down in pairs.values() for t in up_down], path)

    lora = read_lora(path, TINY, _shapes(ours))
    assert lora.format == "cloneofsimo-list" and not lora.needs_guidance_embedding
    report = merge_into_module(ours, [(lora, 1.0)])
    assert report.modules == len(pairs) == 573
    collapse_by_name(ref, pairs)
    x = inputs(b=1, f=4)
    with torch.no_grad():
        err = rel_l2(ours(*x), ref(*x).sample)
    print(f"\ncloneofsimo list ({len(pairs)} modules) merged by t2vrt vs by name on diffusers: rel L2 {err:.2e}")
    assert err < 1e-5


def test_tensor_list_with_guidance_embedding_lands_by_name(tmp_path: Path) -> None:
    """T2V-Turbo's layout (time_cond_proj_dim=256): pair 2 is cond_proj. Weights compared by name (the forward with
    `timestep_cond` needs the guidance-embedding UNet input)."""
    ours = tiny_unet(seed=3)
    ref = diffusers_unet({k: v.clone() for k, v in ours.state_dict().items()}, guidance=True)
    pairs = _list_pairs(ref, guidance=True, seed=4)
    assert list(pairs)[:4] == [
        "conv_in",
        "time_embedding.linear_1",
        "time_embedding.cond_proj",
        "time_embedding.linear_2",
    ]
    path = tmp_path / "unet_lora.pt"
    torch.save([t for up_down in pairs.values() for t in up_down], path)
    state = dict(ours.state_dict())
    state["time_cond_proj.weight"] = ref.time_embedding.cond_proj.weight.detach().clone()
    lora = read_lora(path, TINY, {k: tuple(v.shape) for k, v in state.items()})
    assert lora.needs_guidance_embedding
    from t2vrt.lora import merge_loras

    updated, report = merge_loras(state, [(lora, 1.0)])
    assert report.modules == 574
    collapse_by_name(ref, pairs)
    ref_sd = ref.state_dict()
    merged = {**state, **updated}
    merged.pop("time_cond_proj.weight")
    mapped = original_to_diffusers(merged, TINY)
    worst = max(float((mapped[k] - ref_sd[k]).abs().max()) for k in mapped)
    assert worst < 1e-6
    assert torch.allclose(updated["time_cond_proj.weight"], ref_sd["time_embedding.cond_proj.weight"], atol=1e-6)


def t2v_turbo_w_embedding(w: torch.Tensor, embedding_dim: int = 256) -> torch.Tensor:
    """T2V-Turbo's pipeline get_w_embedding, transcribed (float32, as they run it)."""
    w = w * 1000.0
    half_dim = embedding_dim // 2
    emb = torch.log(torch.tensor(10000.0)) / (half_dim - 1)
    emb = torch.exp(torch.arange(half_dim, dtype=torch.float32) * -emb)
    emb = w.to(torch.float32)[:, None] * emb[None, :]
    return torch.cat([torch.sin(emb), torch.cos(emb)], dim=1)


def test_t2v_turbo_list_with_folded_guidance_matches_timestep_cond(tmp_path: Path) -> None:
    """The T2V-Turbo path end to end on the tiny UNet: a tensor list with cond_proj merged onto the seeded base
    matrix, the guidance embedding folded into linear_1's bias for w = 7.5, vs diffusers' UNet3DConditionModel
    (time_cond_proj_dim=256) with the same deltas applied by name, run with timestep_cond = wemb(w)."""
    from t2vrt.lora import merge_loras
    from t2vrt.lora.guidance import base_cond_proj, fold_guidance, w_embedding
    from t2vrt.lora.names import GUIDANCE_KEY

    ours = tiny_unet(seed=3)
    base = base_cond_proj(TINY.model_channels, seed=0)
    ref = diffusers_unet({k: v.clone() for k, v in ours.state_dict().items()}, guidance=True)
    with torch.no_grad():
        ref.time_embedding.cond_proj.weight.copy_(base)
    pairs = _list_pairs(ref, guidance=True, seed=4)
    path = tmp_path / "unet_lora.pt"
    torch.save([t for up_down in pairs.values() for t in up_down], path)

    state = {**ours.state_dict(), GUIDANCE_KEY: base}
    lora = read_lora(path, TINY, {k: tuple(v.shape) for k, v in state.items()})
    updated, report = merge_loras(state, [(lora, 1.0)])
    merged = {**state, **updated}
    merged.update(fold_guidance(merged, 7.5))
    del merged[GUIDANCE_KEY]
    ours.load_state_dict(merged, strict=True)
    collapse_by_name(ref, pairs)

    w = torch.tensor([7.5, 7.5])
    # Their fp32 arguments reach 7500 rad (fp32 spacing ~5e-4 there): the same embedding to that rounding. The fold
    # uses the float64 values; diffusers gets those too, so the comparison below is of the folding itself.
    assert np.abs(w_embedding(7.5) - t2v_turbo_w_embedding(w)[0].double().numpy()).max() < 1e-3
    exact = torch.from_numpy(np.stack([w_embedding(7.5)] * 2)).float()
    x = inputs(b=2, f=3)
    with torch.no_grad():
        got = ours(*x)
        want = ref(*x, timestep_cond=exact).sample
        other_w = ref(*x, timestep_cond=t2v_turbo_w_embedding(torch.tensor([3.0, 3.0]))).sample
    err = rel_l2(got, want)
    print(
        f"\nT2V-Turbo-style list + folded guidance (w 7.5) vs diffusers timestep_cond: rel L2 {err:.2e}, "
        f"vs w 3: {rel_l2(got, other_w):.2e}"
    )
    assert report.modules == 574 and err < 1e-5
    assert rel_l2(got, other_w) > 10 * err  # the folded w is the one that matters
