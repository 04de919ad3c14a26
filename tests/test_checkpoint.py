"""Checkpoint layouts: the tiny model written in each layout loads back to the same weights and outputs; every
broken checkpoint gives one clear error naming what is wrong."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from support.writers import write_diffusers, write_original

from t2vrt.config import preset
from t2vrt.errors import T2VError, UsageError
from t2vrt.models import checkpoint

LAYOUTS = ("original", "diffusers")


@pytest.fixture(scope="module")
def tiny():
    return checkpoint.tiny_model()


@pytest.fixture(scope="module")
def written(tiny, tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("ckpt")
    cfg = preset("tiny")
    return {
        "original": write_original(root / "original", tiny, cfg),
        "diffusers": write_diffusers(root / "diffusers", tiny, cfg),
    }


def _copy(written, layout: str, tmp_path: Path) -> Path:
    dst = tmp_path / layout
    shutil.copytree(written[layout], dst)
    return dst


def _inputs(cfg):
    g = torch.Generator().manual_seed(123)
    tokens = torch.randint(0, cfg.text_encoder.vocab_size, (2, cfg.text_encoder.context_length), generator=g)
    latents = torch.randn(1, cfg.unet.in_channels, 2, 8, 8, generator=g)  # (b, c, f, h, w)
    context = torch.randn(1, cfg.text_encoder.context_length, cfg.unet.context_dim, generator=g)
    z = torch.randn(2, cfg.vae.embed_dim, 4, 4, generator=g)
    return {
        "text_encoder": (tokens,),
        "unet": (latents, torch.tensor([501.0]), context),
        "vae_decoder": (z,),
    }


@torch.no_grad()
def _outputs(models, cfg):
    return {name: models[name](*args) for name, args in _inputs(cfg).items()}


def test_tiny_model_is_deterministic(tiny):
    again = checkpoint.tiny_model()
    for name, module in tiny.items():
        a, b = module.state_dict(), again[name].state_dict()
        assert all(torch.equal(a[k], b[k]) for k in a), name
    total = sum(float(p.double().abs().sum()) for m in tiny.values() for p in m.parameters())
    print(f"tiny: sum |w| over all components = {total:.6f}")
    assert (
        checkpoint.tiny_model(seed=1)["unet"]
        .state_dict()["out.2.weight"]
        .ne(tiny["unet"].state_dict()["out.2.weight"])
        .any()
    )


@pytest.mark.parametrize("layout", LAYOUTS)
def test_round_trip_weights_and_outputs(tiny, written, layout):
    source = checkpoint.resolve(str(written[layout]))
    assert source.layout == layout
    assert all(Path(f).is_file() for f in source.files)
    cfg, models = checkpoint.load_model(source)
    assert cfg == preset("tiny")
    for name, module in tiny.items():
        want, got = module.state_dict(), models[name].state_dict()
        assert list(want) == list(got), name
        for k in want:
            assert got[k].dtype == torch.float32
            assert torch.equal(want[k], got[k]), f"{name}: {k}"
        assert not models[name].training
        assert not any(p.requires_grad for p in models[name].parameters())
    ref, out = _outputs(tiny, cfg), _outputs(models, cfg)
    for name in ref:
        diff = (ref[name] - out[name]).abs().max().item()
        print(f"{layout} {name}: output {tuple(out[name].shape)}, max |diff| vs embedded = {diff:.3g}")
        assert torch.equal(ref[name], out[name]), name


def test_embedded_and_fp16_cast(tiny):
    cfg, models = checkpoint.load_model(checkpoint.resolve("tiny"), dtype=torch.float16)
    assert cfg == preset("tiny")
    for name, module in models.items():
        assert all(p.dtype == torch.float16 for p in module.parameters()), name
        w = tiny[name].state_dict()
        assert all(torch.equal(v, w[k].half()) for k, v in module.state_dict().items() if v.is_floating_point())


def test_diffusers_bin_weights_and_no_model_index(written, tmp_path):
    """pytorch_model-style .bin weights instead of safetensors, and no model_index.json: still diffusers."""
    from safetensors.torch import load_file

    root = _copy(written, "diffusers", tmp_path)
    st = root / "unet" / "diffusion_pytorch_model.safetensors"
    torch.save(load_file(str(st)), root / "unet" / "diffusion_pytorch_model.bin")
    st.unlink()
    (root / "model_index.json").unlink()
    source = checkpoint.resolve(str(root))
    assert source.layout == "diffusers" and source.parts["unet"].suffix == ".bin"
    _, models = checkpoint.load_model(source)
    _, ref = checkpoint.load_model(checkpoint.resolve(str(written["diffusers"])))
    assert all(torch.equal(v, ref["unet"].state_dict()[k]) for k, v in models["unet"].state_dict().items())


def test_written_original_is_a_lightning_checkpoint(written):
    """The writer's VQGAN file names pytorch_lightning's class, so torch's weights-only loader refuses it."""
    from t2vrt.models.safe_load import RefusedPickle, load_state_file

    with pytest.raises(RefusedPickle, match="pytorch_lightning.callbacks.model_checkpoint.ModelCheckpoint"):
        load_state_file(written["original"] / "VQGAN_autoencoder.pth")
    cfg = json.loads((written["original"] / "configuration.json").read_text())
    assert cfg["model"]["model_cfg"]["temporal_attention"] == "True"
    assert cfg["model"]["model_args"]["ckpt_unet"] == "text2video_pytorch_model.pth"
    clip = load_state_file(written["original"] / "open_clip_pytorch_model.bin")
    t = preset("tiny").text_encoder
    assert f"transformer.resblocks.{t.layers - 1}.ln_1.weight" in clip  # the unused last block is there
    assert {"text_projection", "logit_scale", "visual.proj"} <= set(clip)


# ---- errors -----------------------------------------------------------------------------------------------------


def test_missing_paths_and_unknown_layouts(tmp_path):
    with pytest.raises(UsageError, match="no such directory"):
        checkpoint.resolve(str(tmp_path / "nope"))
    with pytest.raises(UsageError, match="holds no checkpoint.*configuration.json.*model_index.json"):
        checkpoint.resolve(str(tmp_path))
    (tmp_path / "f.bin").write_bytes(b"")
    with pytest.raises(UsageError, match="is a file"):
        checkpoint.resolve(str(tmp_path / "f.bin"))


def test_missing_file_in_each_layout(written, tmp_path):
    orig = _copy(written, "original", tmp_path)
    (orig / "VQGAN_autoencoder.pth").unlink()
    with pytest.raises(UsageError, match=r"VQGAN_autoencoder.pth \(vae\) is missing"):
        checkpoint.resolve(str(orig))
    diff = _copy(written, "diffusers", tmp_path)
    (diff / "vae" / "config.json").unlink()
    with pytest.raises(UsageError, match="vae/config.json is missing"):
        checkpoint.resolve(str(diff))
    shutil.rmtree(diff / "text_encoder")
    (diff / "vae" / "config.json").write_text("{}")
    with pytest.raises(UsageError, match="text_encoder/config.json is missing"):
        checkpoint.resolve(str(diff))


def _edit_unet(path: Path, edit) -> None:
    sd = dict(torch.load(path, weights_only=True))
    edit(sd)
    torch.save(sd, path)


def test_wrong_shape_missing_and_unexpected_keys(written, tmp_path):
    root = _copy(written, "original", tmp_path)
    pth = root / "text2video_pytorch_model.pth"
    key = "input_blocks.1.0.in_layers.2.weight"
    shape = list(torch.load(pth, weights_only=True)[key].shape)
    _edit_unet(pth, lambda sd: sd.__setitem__(key, sd[key][:, :-1]))
    with pytest.raises(T2VError) as e:
        checkpoint.load_model(checkpoint.resolve(str(root)))
    bad = [shape[0], shape[1] - 1, *shape[2:]]
    assert str(e.value) == (
        f"unet (text2video_pytorch_model.pth): checkpoint key {key} has shape {bad} but the model expects {shape}"
    )
    _edit_unet(pth, lambda sd: sd.pop(key))
    with pytest.raises(T2VError, match=f"unet .*lacks key {key} "):
        checkpoint.load_model(checkpoint.resolve(str(root)))
    shutil.copy(written["original"] / pth.name, pth)
    _edit_unet(pth, lambda sd: sd.__setitem__("input_blocks.1.0.extra.weight", torch.zeros(1)))
    with pytest.raises(T2VError, match="unexpected checkpoint key input_blocks.1.0.extra.weight"):
        checkpoint.load_model(checkpoint.resolve(str(root)))


def test_diffusers_missing_key_and_wrong_shape(written, tmp_path):
    from safetensors.torch import load_file, save_file

    root = _copy(written, "diffusers", tmp_path)
    vae = root / "vae" / "diffusion_pytorch_model.safetensors"
    sd = load_file(str(vae))
    sd.pop("decoder.conv_out.bias")
    save_file(sd, str(vae))
    with pytest.raises(
        T2VError, match=r"^vae_decoder \(diffusion_pytorch_model.safetensors\): .*decoder.conv_out.bias"
    ):
        checkpoint.load_model(checkpoint.resolve(str(root)))
    te = root / "text_encoder" / "model.safetensors"
    sd = load_file(str(te))
    sd["text_model.final_layer_norm.weight"] = sd["text_model.final_layer_norm.weight"][:-1].clone()
    save_file(sd, str(te))
    shutil.copy(written["diffusers"] / "vae" / vae.name, vae)
    with pytest.raises(T2VError, match=r"text_encoder \(model.safetensors\): checkpoint key ln_final.weight has shape"):
        checkpoint.load_model(checkpoint.resolve(str(root)))


@pytest.mark.parametrize(
    "layout,file",
    [
        ("original", "open_clip_pytorch_model.bin"),
        ("original", "VQGAN_autoencoder.pth"),
        ("diffusers", "unet/diffusion_pytorch_model.safetensors"),
    ],
)
def test_truncated_weights_file(written, tmp_path, layout, file):
    root = _copy(written, layout, tmp_path)
    data = (root / file).read_bytes()
    (root / file).write_bytes(data[: len(data) // 3])
    with pytest.raises(T2VError) as e:
        checkpoint.load_model(checkpoint.resolve(str(root)))
    print(f"{layout}/{file}: {e.value}")
    assert Path(file).name in str(e.value) and "\n" not in str(e.value)


def test_hub_id_without_network_is_one_clear_error(monkeypatch):
    import huggingface_hub

    def offline(self, repo_id, **kw):
        raise ConnectionError("no network in tests")

    monkeypatch.setattr(huggingface_hub.HfApi, "list_repo_files", offline)
    with pytest.raises(T2VError, match="'damo-vilab/text-to-video-ms-1.7b' is not a local directory, and downloading"):
        checkpoint.resolve("damo-vilab/text-to-video-ms-1.7b")


# ---- configs from files -----------------------------------------------------------------------------------------


def _config_only_diffusers(root: Path, name: str = "ms-1.7b", **overrides) -> Path:
    """A diffusers directory with the preset's config files and empty weight files (enough for load_config)."""
    from t2vrt.models import text_encoder_keys, unet3d_keys, vae_keys

    cfg = preset(name)
    parts = {
        "unet": (unet3d_keys.config_to_diffusers(cfg.unet), "diffusion_pytorch_model.safetensors"),
        "vae": (vae_keys.config_to_diffusers(cfg.vae), "diffusion_pytorch_model.safetensors"),
        "text_encoder": (text_encoder_keys.config_to_diffusers(cfg.text_encoder), "model.safetensors"),
    }
    for part, (config, weights) in parts.items():
        (root / part).mkdir(parents=True)
        (root / part / "config.json").write_text(json.dumps(config | overrides.get(part, {})))
        (root / part / weights).write_bytes(b"")
    (root / "model_index.json").write_text("{}")
    return root


def test_config_from_files_and_defaults_by_name(tmp_path):
    cfg = checkpoint.load_config(checkpoint.resolve(str(_config_only_diffusers(tmp_path / "text-to-video-ms-1.7b"))))
    assert cfg == preset("ms-1.7b")
    zs = checkpoint.load_config(checkpoint.resolve(str(_config_only_diffusers(tmp_path / "zeroscope_v2_576w"))))
    assert zs.name == "zeroscope-576w" and zs.defaults == preset("zeroscope-576w").defaults
    assert (zs.defaults.width, zs.defaults.height, zs.defaults.num_frames) == (576, 320, 24)
    # Values in the files win over presets.
    odd = _config_only_diffusers(tmp_path / "odd", vae={"scaling_factor": 0.2}, unet={"cross_attention_dim": 768})
    (odd / "scheduler").mkdir()
    (odd / "scheduler" / "scheduler_config.json").write_text(json.dumps({"beta_end": 0.02, "num_train_timesteps": 500}))
    c = checkpoint.load_config(checkpoint.resolve(str(odd)))
    assert c.name == "odd" and c.defaults == preset("ms-1.7b").defaults
    assert (c.vae.scaling_factor, c.unet.context_dim) == (0.2, 768)
    assert (c.schedule.beta_end, c.schedule.num_train_timesteps) == (0.02, 500)


def test_original_config_honours_configuration_json(written, tmp_path):
    root = _copy(written, "original", tmp_path)
    cfg = json.loads((root / "configuration.json").read_text())
    cfg["model"]["model_cfg"]["num_timesteps"] = 800
    cfg["model"]["model_args"]["ckpt_unet"] = "renamed_unet.pth"
    (root / "text2video_pytorch_model.pth").rename(root / "renamed_unet.pth")
    (root / "configuration.json").write_text(json.dumps(cfg))
    source = checkpoint.resolve(str(root))
    assert source.parts["unet"].name == "renamed_unet.pth"
    c = checkpoint.load_config(source)
    assert c.schedule.num_train_timesteps == 800 and c.unet == preset("tiny").unet
    cfg["model"]["model_cfg"]["mean_type"] = "x0"
    (root / "configuration.json").write_text(json.dumps(cfg))
    with pytest.raises(T2VError, match="mean_type 'x0' is not supported"):
        checkpoint.load_config(checkpoint.resolve(str(root)))


# ---- the written diffusers directory is one that diffusers and transformers themselves read ---------------------


@torch.no_grad()
def test_written_diffusers_loads_in_reference_libraries(tiny, written):
    from diffusers import AutoencoderKL, UNet3DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    root, cfg = written["diffusers"], preset("tiny")
    (tokens,), (latents, t, context), (z,) = _inputs(cfg).values()
    unet = UNet3DConditionModel.from_pretrained(root / "unet").eval()
    vae = AutoencoderKL.from_pretrained(root / "vae").eval()
    text = CLIPTextModel.from_pretrained(root / "text_encoder").eval()
    diffs = {
        "unet": tiny["unet"](latents, t, context) - unet(latents, t, encoder_hidden_states=context).sample,
        "vae_decoder": tiny["vae_decoder"](z) - vae.decode(z / cfg.vae.scaling_factor).sample,
        "text_encoder": tiny["text_encoder"](tokens) - text(tokens).last_hidden_state,
    }
    for name, d in diffs.items():
        print(f"written diffusers {name} vs reference library: max |diff| = {d.abs().max().item():.3g}")
        assert d.abs().max().item() < 1e-4, name

    import open_clip  # type: ignore[import-untyped]

    tok = CLIPTokenizer.from_pretrained(root / "tokenizer")
    # No "!" here: the diffusers repos make "!" their pad token, so transformers splits it out as id 0 where
    # open_clip has "!</w>" (256); the real repo's tokenizer does the same.
    prompts = ["An astronaut riding a horse, 4k.", "   Hello\tWORLD  café ", "a " * 100]
    ids = tok(prompts, padding="max_length", max_length=77, truncation=True, return_tensors="pt").input_ids
    want = open_clip.tokenize(prompts)
    assert torch.equal(ids, want), (ids[:, :12], want[:, :12])
    assert tok.pad_token == "!" and tok.pad_token_id == 0 and tok.bos_token_id == 49406 and tok.eos_token_id == 49407


def test_sharded_diffusers_weights(tiny, tmp_path):
    root = write_diffusers(tmp_path / "sharded", tiny, preset("tiny"), max_shard_bytes=4 << 20)
    index = root / "unet" / "diffusion_pytorch_model.safetensors.index.json"
    shards = sorted(p.name for p in (root / "unet").glob("*-of-*.safetensors"))
    print(f"unet shards: {shards}")
    assert index.is_file() and len(shards) >= 4
    source = checkpoint.resolve(str(root))
    assert source.parts["unet"] == index and all(root / "unet" / s in source.files for s in shards)
    _, models = checkpoint.load_model(source)
    for name, module in tiny.items():
        want = module.state_dict()
        assert all(torch.equal(v, want[k]) for k, v in models[name].state_dict().items()), name


def test_hub_files_pick_one_weights_variant():
    listing = {
        "model_index.json",
        "README.md",
        "scheduler/scheduler_config.json",
        "tokenizer/vocab.json",
        "tokenizer/merges.txt",
        "unet/config.json",
        "unet/diffusion_pytorch_model.bin",
        "unet/diffusion_pytorch_model.fp16.safetensors",
        "unet/diffusion_pytorch_model.safetensors.index.json",
        "unet/diffusion_pytorch_model-00001-of-00002.safetensors",
        "unet/diffusion_pytorch_model-00002-of-00002.safetensors",
        "vae/config.json",
        "vae/diffusion_pytorch_model.bin",
        "vae/diffusion_pytorch_model.fp16.bin",
        "text_encoder/config.json",
        "text_encoder/pytorch_model.bin",  # fp32 before the fp16 variant "text_encoder/pytorch_model.bin",
        "zs2_576w/text2video_pytorch_model.pth",
    }
    files = checkpoint.hub_files("org/x", listing)
    assert files == [
        "model_index.json",
        "scheduler/scheduler_config.json",
        "tokenizer/merges.txt",
        "tokenizer/vocab.json",
        "unet/config.json",
        "unet/diffusion_pytorch_model.safetensors.index.json",
        "unet/diffusion_pytorch_model-00001-of-00002.safetensors",
        "unet/diffusion_pytorch_model-00002-of-00002.safetensors",
        "vae/config.json",
        "vae/diffusion_pytorch_model.bin",
        "text_encoder/config.json",
        "text_encoder/pytorch_model.bin",  # fp32 before the fp16 variant
    ]
    original = {
        "configuration.json",
        "text2video_pytorch_model.pth",
        "open_clip_pytorch_model.bin",
        "VQGAN_autoencoder.pth",
    }
    assert sorted(checkpoint.hub_files("org/y", original | {"README.md"})) == sorted(original)
    with pytest.raises(T2VError, match="neither a diffusers nor an original"):
        checkpoint.hub_files("org/z", {"README.md"})


@pytest.mark.slow
@pytest.mark.parametrize("layout", LAYOUTS)
def test_full_size_fp16_round_trip_stays_memory_mapped(tmp_path, layout):
    """ms-1.7b at full size (fp16 files, 3.6 GB): written, resolved, checked key by key and loaded without copies."""
    import gc

    import psutil

    cfg = preset("ms-1.7b")
    models = checkpoint.build_modules(cfg, device="meta")
    marks = {}
    for name, module in models.items():
        module.to(torch.float16).to_empty(device="cpu")
        for i, (key, p) in enumerate(module.named_parameters()):
            p.data.fill_((i % 97) / 97)  # cheap and recognisable: no 1.8B random draws
            marks[(name, key)] = (i % 97) / 97
        init = getattr(module, "init_buffers", None)
        if callable(init):
            init("cpu")
    writer = write_original if layout == "original" else write_diffusers
    writer(tmp_path / "ckpt", models, cfg)
    del models, module, p
    gc.collect()
    proc = psutil.Process()
    before = proc.memory_info().rss
    source = checkpoint.resolve(str(tmp_path / "ckpt"))
    loaded_cfg, loaded = checkpoint.load_model(source, dtype=torch.float16)
    grew = (proc.memory_info().rss - before) / 2**30
    peak = resource_peak_gb()
    n = {name: sum(p.numel() for p in m.parameters()) for name, m in loaded.items()}
    print(f"{layout}: loaded {n} params; RSS grew {grew:.2f} GB while loading; process peak {peak:.1f} GB")
    assert loaded_cfg.unet == cfg.unet and loaded_cfg.vae == cfg.vae and loaded_cfg.text_encoder == cfg.text_encoder
    for (name, key), value in list(marks.items())[::97]:
        t = dict(loaded[name].named_parameters())[key]
        assert t.dtype == torch.float16 and float(t.flatten()[0]) == pytest.approx(value, abs=1e-3), (name, key)
    assert peak < 12
    del loaded
    shutil.rmtree(tmp_path / "ckpt")  # 3.6 GB: don't leave it in pytest's kept temp dirs


def resource_peak_gb() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
