"""The cloneofsimo tensor-list order: diffusers' named_modules() order, and T2V-Turbo-MS's 575-pair layout."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from t2vrt.config import UNET_PRESETS
from t2vrt.lora.names import GUIDANCE_KEY, diffusers_module_order, module_names
from t2vrt.lora.read_list import read_list
from t2vrt.models.unet3d import UNet3D
from t2vrt.models.unet3d_keys import config_to_diffusers

diffusers = pytest.importorskip("diffusers")
TSV = Path(__file__).parent / "data" / "t2vturbo-ms-lora-order.tsv"  # copied from the reference notes (facts)


@pytest.mark.parametrize("name", ["tiny", "ms-1.7b"])
@pytest.mark.parametrize("guidance", [False, True])
def test_order_is_diffusers_named_modules(name: str, guidance: bool) -> None:
    cfg = UNET_PRESETS[name]
    kwargs = config_to_diffusers(cfg) | ({"time_cond_proj_dim": 256} if guidance else {})
    with torch.device("meta"):
        ref = diffusers.UNet3DConditionModel(**kwargs)
    kinds = (torch.nn.Linear, torch.nn.Conv2d, torch.nn.Conv3d)
    assert diffusers_module_order(cfg, guidance) == [n for n, m in ref.named_modules() if type(m) in kinds]


def test_t2v_turbo_ms_layout_lands_on_the_right_modules() -> None:
    """The real file's 575 pairs (shapes from the reference table, meta tensors: no 234 MB download)."""
    rows = [line.split("\t") for line in TSV.read_text().splitlines()[1:]]
    cfg = UNET_PRESETS["ms-1.7b"]
    assert [r[2] for r in rows] == diffusers_module_order(cfg, guidance=True)
    tensors = []
    for r in rows:
        up, down = (tuple(int(x) for x in s.strip("()").split(",")) for s in (r[4], r[5]))
        tensors += [torch.empty(up, device="meta"), torch.empty(down, device="meta")]
    assert sum(t.numel() for t in tensors) == 58_497_696  # adds up to the released unet_lora.pt's size
    with torch.device("meta"):
        shapes = {k: tuple(v.shape) for k, v in UNet3D(cfg).state_dict().items()}
    shapes[GUIDANCE_KEY] = (320, 256)
    entries = read_list(tensors, cfg, module_names(cfg), shapes)
    assert len(entries) == 575
    targets = [e.target for e in entries]
    assert targets[:3] == ["input_blocks.0.0.weight", "time_embed.0.weight", GUIDANCE_KEY]
    assert "input_blocks.1.0.temopral_conv.conv1.2.weight" in targets and targets[-1] == "out.2.weight"
    assert len(set(targets)) == 575
    # a UNet without the embedding still reads the list (cond_proj has a known shape); merging then asks for it
    del shapes[GUIDANCE_KEY]
    assert read_list(tensors, cfg, module_names(cfg), shapes)[2].target == GUIDANCE_KEY
