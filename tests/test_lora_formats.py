"""Each LoRA format, written by the test in that format, merged by t2vrt vs the same deltas applied by name on
diffusers' UNet3DConditionModel (the original formula of each format, transcribed here)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from lora_fixtures import TINY, diffusers_unet, module_shapes, product_pair, tiny_unet
from safetensors.torch import save_file

from t2vrt.lora import LoraSpec, merge_into_module, parse_lora_spec, read_lora, resolve_lora
from t2vrt.lora.names import module_names
from t2vrt.models.unet3d import UNet3D
from t2vrt.models.unet3d_keys import original_to_diffusers

pytest.importorskip("diffusers")

# One module of each kind: Linear, Linear onto the original's Conv1d (temporal proj_in/out), 3x3 Conv2d, 1x1 shortcut,
# strided downsampler, Conv3d (3,1,1) temporal conv, the time embedding; spatial, temporal and input transformers.
MODULES = [
    "time_embedding.linear_1",
    "transformer_in.proj_in",
    "transformer_in.transformer_blocks.0.attn1.to_q",
    "down_blocks.0.resnets.0.conv1",
    "down_blocks.0.temp_convs.1.conv2.3",
    "down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k",
    "down_blocks.0.temp_attentions.1.proj_out",
    "down_blocks.0.downsamplers.0.conv",
    "down_blocks.1.resnets.0.conv_shortcut",
    "mid_block.temp_attentions.0.transformer_blocks.0.ff.net.0.proj",
    "up_blocks.1.temp_convs.2.conv4.3",
    "up_blocks.2.upsamplers.0.conv",
    "conv_out",
]


@pytest.fixture(scope="module")
def base() -> tuple[dict[str, torch.Tensor], dict[str, tuple[int, ...]]]:
    ours = tiny_unet(seed=7)
    ref = diffusers_unet(ours.state_dict())
    shapes = module_shapes(ref)
    assert set(MODULES) <= set(shapes)
    return ours.state_dict(), shapes


def _merged_diffusers(sd: dict[str, torch.Tensor], path: Path, scale: float = 1.0) -> tuple[dict, object]:
    ours = UNet3D(TINY).eval()
    ours.load_state_dict(sd)
    lora = read_lora(path, TINY, {k: tuple(v.shape) for k, v in sd.items()})
    report = merge_into_module(ours, [(lora, scale)])
    return original_to_diffusers(ours.state_dict(), TINY), (lora, report)


def _expect(sd: dict[str, torch.Tensor], deltas: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    want = {k: v.clone() for k, v in original_to_diffusers(sd, TINY).items()}
    for module, d in deltas.items():
        want[module + ".weight"] = want[module + ".weight"] + d
    return want


def _assert_equal_weights(got: dict, want: dict, changed: int) -> None:
    diff = {k: float((got[k] - want[k]).abs().max()) for k in want}
    assert max(diff.values()) < 1e-6, max(diff, key=diff.get)
    assert sum(1 for k in want if not torch.equal(got[k], original_to_diffusers_base[k])) == changed


original_to_diffusers_base: dict[str, torch.Tensor] = {}


@pytest.fixture(autouse=True)
def _base_copy(base) -> None:
    original_to_diffusers_base.clear()
    original_to_diffusers_base.update(original_to_diffusers(base[0], TINY))


def _product(shapes: dict, rank: int = 3, seed: int = 0) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    return {m: product_pair(shapes[m], rank, g) for m in MODULES}


def _product_delta(up: torch.Tensor, down: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
    return (up.flatten(1) @ down.flatten(1)).reshape(shape)


@pytest.mark.parametrize("prefix", ["unet.", "base_model.model.", ""])
def test_diffusers_lora_a_b_without_config(base, tmp_path: Path, prefix: str) -> None:
    sd, shapes = base
    pairs = _product(shapes)
    tensors = {}
    for m, (up, down) in pairs.items():
        tensors[f"{prefix}{m}.lora_A.weight"], tensors[f"{prefix}{m}.lora_B.weight"] = down, up
    save_file(tensors, tmp_path / "pytorch_lora_weights.safetensors")
    got, (lora, report) = _merged_diffusers(sd, tmp_path, scale=0.5)
    assert lora.format == "diffusers" and report.modules == len(MODULES)
    _assert_equal_weights(
        got, _expect(sd, {m: 0.5 * _product_delta(u, d, shapes[m]) for m, (u, d) in pairs.items()}), len(MODULES)
    )


def test_older_diffusers_lora_down_up_and_attention_processors(base, tmp_path: Path) -> None:
    sd, shapes = base
    pairs = _product(shapes, seed=1)
    tensors = {}
    for m, (up, down) in pairs.items():
        if m.endswith("attn1.to_q"):  # the attention-processor spelling of diffusers 0.1x
            attn = m.removesuffix(".to_q")
            tensors[f"unet.{attn}.processor.to_q_lora.down.weight"] = down
            tensors[f"unet.{attn}.processor.to_q_lora.up.weight"] = up
        else:
            tensors[f"unet.{m}.lora.down.weight"], tensors[f"unet.{m}.lora.up.weight"] = down, up
    tensors["unet.conv_out.alpha"] = torch.tensor(6.0)  # network alpha 6 at rank 3: scale 2
    torch.save(tensors, tmp_path / "lora.bin")
    got, (lora, _) = _merged_diffusers(sd, tmp_path / "lora.bin")
    assert lora.format == "diffusers"
    scale = {m: 2.0 if m == "conv_out" else 1.0 for m in MODULES}
    _assert_equal_weights(
        got, _expect(sd, {m: scale[m] * _product_delta(u, d, shapes[m]) for m, (u, d) in pairs.items()}), len(MODULES)
    )


def test_peft_config_scale_patterns(base, tmp_path: Path) -> None:
    """PEFT: lora_alpha / r, alpha_pattern and rank_pattern by module-name suffix, rslora."""
    import json

    sd, shapes = base
    pairs = _product(shapes, rank=3, seed=2)
    tensors = {}
    for m, (up, down) in pairs.items():
        tensors[f"base_model.model.{m}.lora_A.weight"], tensors[f"base_model.model.{m}.lora_B.weight"] = down, up
    folder = tmp_path / "adapter"
    folder.mkdir()
    save_file(tensors, folder / "adapter_model.safetensors")
    config = {"peft_type": "LORA", "r": 3, "lora_alpha": 6, "alpha_pattern": {"conv_out": 1.5}, "target_modules": []}
    (folder / "adapter_config.json").write_text(json.dumps(config))
    got, (lora, _) = _merged_diffusers(sd, folder)
    assert lora.format == "peft"
    scale = {m: 0.5 if m == "conv_out" else 2.0 for m in MODULES}
    _assert_equal_weights(
        got, _expect(sd, {m: scale[m] * _product_delta(u, d, shapes[m]) for m, (u, d) in pairs.items()}), len(MODULES)
    )
    (folder / "adapter_config.json").write_text(json.dumps({**config, "alpha_pattern": {}, "use_rslora": True}))
    got, _ = _merged_diffusers(sd, folder)
    _assert_equal_weights(
        got, _expect(sd, {m: 6 / 3**0.5 * _product_delta(u, d, shapes[m]) for m, (u, d) in pairs.items()}), len(MODULES)
    )
    (folder / "adapter_config.json").write_text(json.dumps({**config, "r": 5}))
    with pytest.raises(Exception, match="rank 3 in the weights but r 5"):
        _merged_diffusers(sd, folder)


def test_kohya_with_temporal_modules(base, tmp_path: Path) -> None:
    sd, shapes = base
    pairs = _product(shapes, seed=3)
    tensors = {}
    for m, (up, down) in pairs.items():
        name = "lora_unet_" + m.replace(".", "_")
        tensors[f"{name}.lora_down.weight"], tensors[f"{name}.lora_up.weight"] = down, up
        tensors[f"{name}.alpha"] = torch.tensor(float(down.shape[0]) * 0.75)  # alpha / rank = 0.75
    assert "lora_unet_down_blocks_0_temp_attentions_1_proj_out.lora_down.weight" in tensors
    assert "lora_unet_transformer_in_proj_in.alpha" in tensors
    save_file(tensors, tmp_path / "kohya.safetensors")
    got, (lora, _) = _merged_diffusers(sd, tmp_path / "kohya.safetensors")
    assert lora.format == "kohya"
    _assert_equal_weights(
        got, _expect(sd, {m: 0.75 * _product_delta(u, d, shapes[m]) for m, (u, d) in pairs.items()}), len(MODULES)
    )


def _stable_pairs(shapes: dict, seed: int) -> dict[str, tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """loralib layout (Text-To-Video-Finetuning stable_lora): (A [r k, in k], B [out k, r k], expected delta)."""
    g = torch.Generator().manual_seed(seed)
    r, out = 2, {}
    for m in MODULES:
        shape = shapes[m]
        k = shape[2] if len(shape) >= 4 else 1
        a = torch.randn(r * k, shape[1] * k, generator=g) * 0.05
        b = torch.randn(shape[0] * k, r * k, generator=g) * 0.05
        if len(shape) == 5:  # their Conv3d: view (out, in, k, k, 1), mean over dim -2
            d = (b @ a).view(shape[0], shape[1], k, k, 1).mean(dim=-2, keepdim=True)
        else:  # Linear B@A; Conv2d (B@A).view(W.shape)
            d = (b @ a).view(shape)
        out[m] = (a, b, d)
    return out


def test_stable_lora_full_weights(base, tmp_path: Path) -> None:
    sd, shapes = base
    pairs = _stable_pairs(shapes, seed=4)
    tensors = {}
    for m, (a, b, _) in pairs.items():
        tensors[f"{m}.lora_A"], tensors[f"{m}.lora_B"] = a, b
    save_file(tensors, tmp_path / "500_lora_unet.safetensors")
    got, (lora, _) = _merged_diffusers(sd, tmp_path / "500_lora_unet.safetensors")
    assert lora.format == "stable-lora"
    _assert_equal_weights(got, _expect(sd, {m: d for m, (_, _, d) in pairs.items()}), len(MODULES))


def test_sd_webui_text2video_original_names_fp16(base, tmp_path: Path) -> None:
    """Original ModelScope names (their converter leaves the top-level time_embedding / conv_out names as they were),
    fp16 tensors, the metadata key; the user's weight multiplies the delta."""
    sd, shapes = base
    pairs = _stable_pairs(shapes, seed=5)
    names = module_names(TINY)
    tensors = {}
    for m, (a, b, _) in pairs.items():
        original = names.to_key[m].removesuffix(".weight")
        name = m if m in ("time_embedding.linear_1", "conv_out") else original
        tensors[f"{name}.lora_A"], tensors[f"{name}.lora_B"] = a.half(), b.half()
    assert "input_blocks.2.0.temopral_conv.conv2.3.lora_A" in tensors
    assert "input_blocks.0.1.proj_in.lora_A" in tensors  # transformer_in: a Conv1d in the original
    save_file(tensors, tmp_path / "webui_style.safetensors", metadata={"stable_lora_text_to_video": "v1"})
    got, (lora, _) = _merged_diffusers(sd, tmp_path / "webui_style.safetensors", scale=0.8)
    assert lora.format == "webui"
    want = {}
    for m, (a, b, _) in pairs.items():
        a16, b16, shape = a.half().float(), b.half().float(), shapes[m]
        k = shape[2] if len(shape) >= 4 else 1
        d = (
            (b16 @ a16).view(shape[0], shape[1], k, k, 1).mean(dim=-2, keepdim=True)
            if len(shape) == 5
            else ((b16 @ a16).view(shape))
        )
        want[m] = 0.8 * d
    _assert_equal_weights(got, _expect(sd, want), len(MODULES))


def test_two_loras_add_up_and_report(base, tmp_path: Path) -> None:
    sd, shapes = base
    p1, p2 = _product(shapes, seed=8), _product(shapes, seed=9)
    for name, pairs in (("a", p1), ("b", p2)):
        save_file(
            {f"unet.{m}.lora_{ab}.weight": t for m, (up, down) in pairs.items() for ab, t in (("A", down), ("B", up))},
            tmp_path / f"{name}.safetensors",
        )
    ours = UNet3D(TINY).eval()
    ours.load_state_dict(sd)
    shp = {k: tuple(v.shape) for k, v in sd.items()}
    la, lb = read_lora(tmp_path / "a.safetensors", TINY, shp), read_lora(tmp_path / "b.safetensors", TINY, shp)
    report = merge_into_module(ours, [(la, 1.0), (lb, -0.5)])
    assert report.modules == 2 * len(MODULES) and [n for n, _, _ in report.per_lora] == [
        "a.safetensors",
        "b.safetensors",
    ]
    deltas = {m: _product_delta(*p1[m], shapes[m]) - 0.5 * _product_delta(*p2[m], shapes[m]) for m in MODULES}
    _assert_equal_weights(original_to_diffusers(ours.state_dict(), TINY), _expect(sd, deltas), len(MODULES))
    total = sum(float(d.double().square().sum()) for d in deltas.values()) ** 0.5
    assert abs(report.delta_norm - total) < 1e-4 * total
    assert "modules changed" in report.summary() and len(la.sha256) == 64


# ---- --lora SOURCE[:SCALE] and the hub resolver (no network: fakes for the hub calls) ----


def test_parse_lora_spec() -> None:
    assert parse_lora_spec("jiachenli-ucsb/T2V-Turbo-MS") == LoraSpec("jiachenli-ucsb/T2V-Turbo-MS", 1.0)
    assert parse_lora_spec("yhzhai/mcm/modelscopet2v-laion:0.8") == LoraSpec("yhzhai/mcm/modelscopet2v-laion", 0.8)
    assert parse_lora_spec("./x.pt:-1e-1") == LoraSpec("./x.pt", -0.1)
    assert parse_lora_spec("C:\\loras\\x.pt") == LoraSpec("C:\\loras\\x.pt", 1.0)
    assert parse_lora_spec("C:\\loras\\x.pt:2") == LoraSpec("C:\\loras\\x.pt", 2.0)
    assert parse_lora_spec("x:abc").source == "x:abc"
    for bad in ("", ":0.5"):
        with pytest.raises(Exception, match="source"):
            parse_lora_spec(bad)


def test_resolve_local_and_hub(tmp_path: Path) -> None:
    local = tmp_path / "l.safetensors"
    local.write_bytes(b"")
    assert resolve_lora(LoraSpec(str(local))) == local
    files = [
        "README.md",
        "modelscopet2v-laion/adapter_config.json",
        "modelscopet2v-laion/adapter_model.safetensors",
        "modelscopet2v-webvid/adapter_model.safetensors",
        "modelscopet2v-laion/extra/x.bin",
        "unet_lora.pt",
    ]
    fetched: list[str] = []

    def download(repo: str, name: str) -> str:
        assert repo == "yhzhai/mcm"
        fetched.append(name)
        return str(tmp_path / "cache" / name)

    got = resolve_lora(LoraSpec("yhzhai/mcm/modelscopet2v-laion"), lambda repo: files, download)
    assert got == tmp_path / "cache" / "modelscopet2v-laion"
    assert fetched == ["modelscopet2v-laion/adapter_config.json", "modelscopet2v-laion/adapter_model.safetensors"]
    fetched.clear()
    assert resolve_lora(LoraSpec("yhzhai/mcm"), lambda repo: files, download) == tmp_path / "cache"
    assert fetched == ["unet_lora.pt"]  # the root's own LoRA file only, not every variant's
    fetched.clear()
    got = resolve_lora(LoraSpec("yhzhai/mcm/modelscopet2v-laion/adapter_model.safetensors"), lambda r: files, download)
    assert got.name == "adapter_model.safetensors" and "modelscopet2v-laion/adapter_config.json" in fetched
    with pytest.raises(Exception, match="no LoRA file"):
        resolve_lora(LoraSpec("yhzhai/mcm/nothing-here"), lambda repo: files, download)
    for bad in ("owner/../x", "./missing.pt", "/abs/missing.pt", "just-a-name"):
        with pytest.raises(Exception, match="does not exist|hub id"):
            resolve_lora(LoraSpec(bad), lambda repo: files, download)

    def offline(repo: str) -> list[str]:
        raise OSError("We couldn't connect to 'https://huggingface.co'.\nmore detail")

    with pytest.raises(Exception, match="cannot fetch LoRA 'owner/name' from the hub: OSError: We couldn't connect"):
        resolve_lora(LoraSpec("owner/name"), offline, download)
