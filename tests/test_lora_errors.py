"""Bad LoRA files: each gets one clear UsageError line naming the problem, runs nothing, and changes no weight."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from lora_fixtures import TINY, tiny_unet
from safetensors.torch import save_file

from t2vrt.errors import UsageError
from t2vrt.lora import merge_into_module, read_lora


@pytest.fixture(scope="module")
def model() -> torch.nn.Module:
    return tiny_unet(seed=11)


def _shapes(model: torch.nn.Module) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def _good(prefix: str = "unet.") -> dict[str, torch.Tensor]:
    """A valid LoRA on two modules of the tiny UNet (to_q 32 -> 32, conv_in 4 -> 32 3x3)."""
    g = torch.Generator().manual_seed(0)
    return {
        f"{prefix}down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q.lora_A.weight": torch.randn(
            2, 32, generator=g
        ),
        f"{prefix}down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q.lora_B.weight": torch.randn(
            32, 2, generator=g
        ),
        f"{prefix}conv_in.lora_A.weight": torch.randn(2, 4, 3, 3, generator=g),
        f"{prefix}conv_in.lora_B.weight": torch.randn(32, 2, 1, 1, generator=g),
    }


def _one_line_error(path: Path, model: torch.nn.Module, match: str) -> str:
    with pytest.raises(UsageError, match=match) as info:
        read_lora(path, TINY, _shapes(model))
    msg = str(info.value)
    assert "\n" not in msg and len(msg) < 500, msg
    return msg


def _merge_error(path: Path, model: torch.nn.Module, match: str) -> None:
    before = {k: v.clone() for k, v in model.state_dict().items()}
    lora = read_lora(path, TINY, _shapes(model))
    with pytest.raises(UsageError, match=match) as info:
        merge_into_module(model, [(lora, 1.0)])
    assert "\n" not in str(info.value)
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # nothing half-merged


def test_wrong_shape_names_the_key(model, tmp_path: Path) -> None:
    tensors = _good()
    tensors["unet.conv_in.lora_B.weight"] = torch.randn(16, 2, 1, 1)  # conv_in has 32 outputs
    save_file(tensors, tmp_path / "x.safetensors")
    _merge_error(
        tmp_path / "x.safetensors", model, r"'unet.conv_in.lora_A.weight': up \(16, 2, 1, 1\).*\(32, 4, 3, 3\)"
    )


def test_norm_layer_target_is_a_shape_error(model, tmp_path: Path) -> None:
    tensors = {
        "unet.conv_norm_out.lora_A.weight": torch.randn(2, 32),
        "unet.conv_norm_out.lora_B.weight": torch.randn(32, 2),
    }
    save_file(tensors, tmp_path / "x.safetensors")
    _merge_error(tmp_path / "x.safetensors", model, "do not fit 'out.0.weight' of shape")


def test_unknown_key(model, tmp_path: Path) -> None:
    tensors = {
        **_good(),
        "unet.down_blocks.0.motion_modules.0.to_q.lora_A.weight": torch.randn(2, 32),
        "unet.down_blocks.0.motion_modules.0.to_q.lora_B.weight": torch.randn(32, 2),
    }
    save_file(tensors, tmp_path / "x.safetensors")
    msg = _one_line_error(tmp_path / "x.safetensors", model, "motion_modules.0.to_q.lora_A.weight")
    assert "matches no module of this UNet (1 of 3 modules unknown)" in msg


def test_not_a_lora_key(model, tmp_path: Path) -> None:
    save_file({**_good(), "unet.conv_in.weight": torch.randn(32, 4, 3, 3)}, tmp_path / "x.safetensors")
    _one_line_error(tmp_path / "x.safetensors", model, "'unet.conv_in.weight' is no LoRA weight")


def test_lora_for_another_architecture(model, tmp_path: Path) -> None:
    """An SD-1.5-style kohya LoRA: attention blocks this UNet has no second of, and text-encoder keys."""
    sd15 = {}
    for i in range(4):
        name = f"lora_unet_down_blocks_{i}_attentions_1_transformer_blocks_1_attn1_to_q"
        sd15 |= {f"{name}.lora_down.weight": torch.randn(2, 32), f"{name}.lora_up.weight": torch.randn(32, 2)}
    save_file(sd15, tmp_path / "sd15.safetensors")
    _one_line_error(tmp_path / "sd15.safetensors", model, "another architecture")
    save_file(
        {**sd15, "lora_te_text_model_encoder_layers_0_mlp_fc1.lora_down.weight": torch.randn(2, 8)},
        tmp_path / "te.safetensors",
    )
    _one_line_error(tmp_path / "te.safetensors", model, "text-encoder LoRA keys are not supported")
    # a tensor list for another UNet: no module set of the tiny UNet has its count
    torch.save([torch.randn(8, 2), torch.randn(2, 8)] * 10, tmp_path / "list.pt")
    _one_line_error(tmp_path / "list.pt", model, "10 \\(up, down\\) pairs matches no module set")
    torch.save([torch.randn(8, 2)] * 3, tmp_path / "odd.pt")
    _one_line_error(tmp_path / "odd.pt", model, "odd length 3")


def test_unpaired_and_non_finite(model, tmp_path: Path) -> None:
    tensors = _good()
    del tensors["unet.conv_in.lora_B.weight"]
    save_file(tensors, tmp_path / "x.safetensors")
    _one_line_error(tmp_path / "x.safetensors", model, "'unet.conv_in.lora_A.weight' has no matching up weight")
    tensors = _good()
    tensors["unet.conv_in.lora_B.weight"][0, 0] = float("nan")
    save_file(tensors, tmp_path / "nan.safetensors")
    _merge_error(tmp_path / "nan.safetensors", model, "non-finite")


@pytest.mark.parametrize("suffix", [".safetensors", ".pt"])
def test_truncated(model, tmp_path: Path, suffix: str) -> None:
    path = tmp_path / f"x{suffix}"
    if suffix == ".pt":
        torch.save(_good(), path)
    else:
        save_file(_good(), path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    _one_line_error(path, model, "truncated")


class Payload:
    """Unpickling this runs os.system: the weights-only loader must refuse before calling it."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("zip_format", [True, False])
def test_pickle_payload_never_runs(model, tmp_path: Path, zip_format: bool) -> None:
    marker = tmp_path / "PWNED"
    path = tmp_path / "unet_lora.pt"
    torch.save([torch.zeros(2, 2), Payload(marker)], path, _use_new_zipfile_serialization=zip_format)
    msg = _one_line_error(path, model, "refused without running it")
    assert "system" in msg  # names the global it refused
    assert not marker.exists()


def test_unsupported_layer_types(model, tmp_path: Path) -> None:
    save_file({**_good(), "unet.conv_in.lora_magnitude_vector": torch.ones(32)}, tmp_path / "dora.safetensors")
    _one_line_error(tmp_path / "dora.safetensors", model, "DoRA")
    folder = tmp_path / "peft"
    folder.mkdir()
    save_file(_good("base_model.model."), folder / "adapter_model.safetensors")
    (folder / "adapter_config.json").write_text('{"r": 2, "lora_alpha": 2, "use_dora": true}')
    _one_line_error(folder, model, "DoRA adapters")
    (folder / "adapter_config.json").write_text("{not json")
    _one_line_error(folder, model, "not readable JSON")


def test_missing_and_ambiguous_sources(model, tmp_path: Path) -> None:
    _one_line_error(tmp_path / "nope.safetensors", model, "does not exist")
    (tmp_path / "a.safetensors").write_bytes(b"")
    (tmp_path / "b.pt").write_bytes(b"")
    _one_line_error(tmp_path, model, "several weight files")
    (tmp_path / "c.txt").write_text("x")
    _one_line_error(tmp_path / "c.txt", model, "unknown extension")


def test_guidance_lora_on_a_unet_without_the_embedding(model, tmp_path: Path) -> None:
    tensors = {
        "time_embedding.cond_proj.lora_A.weight": torch.randn(2, 256),
        "time_embedding.cond_proj.lora_B.weight": torch.randn(32, 2),
    }
    save_file(tensors, tmp_path / "x.safetensors")
    lora = read_lora(tmp_path / "x.safetensors", TINY, _shapes(model))
    assert lora.needs_guidance_embedding
    _merge_error(tmp_path / "x.safetensors", model, "guidance embedding")


def test_a_bad_second_lora_leaves_the_first_unapplied(model, tmp_path: Path) -> None:
    save_file(_good(), tmp_path / "good.safetensors")
    bad = _good()
    bad["unet.conv_in.lora_A.weight"] = torch.randn(2, 4, 1, 1)
    save_file(bad, tmp_path / "bad.safetensors")
    shapes = _shapes(model)
    loras = [(read_lora(tmp_path / n, TINY, shapes), 1.0) for n in ("good.safetensors", "bad.safetensors")]
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(UsageError, match="bad|do not fit"):
        merge_into_module(model, loras)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
