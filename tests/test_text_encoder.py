"""Text encoder parity: open_clip's tower run to the penultimate block (ModelScope's FrozenOpenCLIPEmbedder),
transformers' CLIPTextModel through the diffusers key map, the key maps themselves, and the ONNX export."""

from __future__ import annotations

import time

import numpy as np
import open_clip
import pytest
import torch
from open_clip.model import CLIP, CLIPTextCfg, CLIPVisionCfg

from t2vrt.config.text import TEXT_ENCODER_PRESETS, TextEncoderConfig
from t2vrt.iospec import text_encoder_spec
from t2vrt.models import text_encoder_keys as keys
from t2vrt.models.random_init import randomize_
from t2vrt.models.text_encoder import TextEncoder

TINY = TEXT_ENCODER_PRESETS["tiny"]
PROMPTS = ["", "a panda playing guitar on times square", "An astronaut riding a horse, 4k, HDR!", "x " * 90]
# damo-vilab/text-to-video-ms-1.7b text_encoder/config.json, as published (the name/version fields left out).
MS17_TEXT_CONFIG = {
    "architectures": ["CLIPTextModel"],
    "attention_dropout": 0.0,
    "bos_token_id": 0,
    "dropout": 0.0,
    "eos_token_id": 2,
    "hidden_act": "gelu",
    "hidden_size": 1024,
    "initializer_factor": 1.0,
    "initializer_range": 0.02,
    "intermediate_size": 4096,
    "layer_norm_eps": 1e-05,
    "max_position_embeddings": 77,
    "model_type": "clip_text_model",
    "num_attention_heads": 16,
    "num_hidden_layers": 23,
    "pad_token_id": 1,
    "projection_dim": 512,
    "torch_dtype": "float16",
    "vocab_size": 49408,
}


def rel_l2(a: torch.Tensor | np.ndarray, b: torch.Tensor | np.ndarray) -> float:
    a, b = torch.as_tensor(a).detach().double(), torch.as_tensor(b).detach().double()
    return float((a - b).norm() / b.norm())


def openclip_model(cfg: TextEncoderConfig, seed: int = 0) -> CLIP:
    """A whole (tiny-vision) OpenCLIP model whose text tower has cfg's shape, every parameter random."""
    text = CLIPTextCfg(
        context_length=cfg.context_length,
        vocab_size=cfg.vocab_size,
        width=cfg.width,
        heads=cfg.heads,
        layers=cfg.layers,
    )
    vision = CLIPVisionCfg(layers=1, width=32, head_width=16, patch_size=8, image_size=16)
    model = CLIP(embed_dim=16, vision_cfg=vision, text_cfg=text).eval()
    return randomize_(model, seed=seed)


@torch.no_grad()
def penultimate_reference(model: CLIP, tokens: torch.Tensor) -> torch.Tensor:
    """ModelScope's FrozenOpenCLIPEmbedder.encode_with_transformer: all blocks but the last, then ln_final."""
    x = model.token_embedding(tokens) + model.positional_embedding
    if not model.transformer.batch_first:
        x = x.permute(1, 0, 2)  # older open_clip: (L, B, D)
    blocks = model.transformer.resblocks
    for i, block in enumerate(blocks):
        if i == len(blocks) - 1:
            break
        x = block(x, attn_mask=model.attn_mask)
    if not model.transformer.batch_first:
        x = x.permute(1, 0, 2)
    return model.ln_final(x)


def ours_from_openclip(model: CLIP) -> TextEncoder:
    sd = model.state_dict()
    head_width = model.transformer.width // model.transformer.resblocks[0].attn.num_heads
    cfg = keys.config_from_openclip_state(sd, head_width=head_width)
    enc = TextEncoder(cfg).eval()
    enc.load_state_dict(keys.openclip_to_ours(sd, cfg), strict=True)
    return enc


def test_tiny_matches_openclip_penultimate():
    model = openclip_model(TINY, seed=1)
    enc = ours_from_openclip(model)
    assert enc.cfg == TINY
    tokens = open_clip.tokenize(PROMPTS)
    assert tokens.shape == (len(PROMPTS), 77) and tokens.dtype == torch.int64
    with torch.no_grad():
        ours = enc(tokens)
    ref = penultimate_reference(model, tokens)
    err = rel_l2(ours, ref)
    n = sum(p.numel() for p in enc.parameters())
    print(f"\ntiny text encoder ({n:,} params) vs open_clip penultimate: rel L2 {err:.2e}")
    assert ours.shape == (len(PROMPTS), 77, TINY.width) and ours.dtype == torch.float32
    assert err <= 1e-5
    # the last block really is skipped: running it too gives something else
    assert (
        rel_l2(
            model.ln_final(
                model.transformer(model.token_embedding(tokens) + model.positional_embedding, attn_mask=model.attn_mask)
            ),
            ref,
        )
        > 1e-2
    )


def test_causal_mask_and_meta_init():
    enc = randomize_(TextEncoder(TINY).eval(), seed=2)
    tokens = open_clip.tokenize(PROMPTS[1:3])
    with torch.no_grad():
        base = enc(tokens)
        changed = tokens.clone()
        changed[:, 10:] = 123  # edits after position 10 must not move positions 0..9
        out = enc(changed)
    assert rel_l2(out[:, :10], base[:, :10]) < 1e-6
    assert rel_l2(out[:, 10:], base[:, 10:]) > 1e-3
    assert "attn_mask" not in enc.state_dict()
    with torch.device("meta"):
        lazy = TextEncoder(TINY)
    lazy.load_state_dict(enc.state_dict(), assign=True)
    lazy.init_buffers()
    with torch.no_grad():
        assert rel_l2(lazy(tokens), base) == 0.0


def test_fp16_attention_keeps_float32_scores():
    """Large q/k overflow an fp16 q.k^T (to inf, then NaN in softmax); the float32 scores keep the output finite."""
    enc = randomize_(TextEncoder(TINY).eval(), seed=3)
    with torch.no_grad():
        for block in enc.transformer.resblocks:
            block.attn.in_proj_weight.mul_(150.0)
    tokens = open_clip.tokenize(PROMPTS[:2])
    with torch.no_grad():
        ref = enc(tokens)
        half = enc.half()
        # what a plain fp16 attention would compute in block 0: q.k^T overflows
        blk = half.transformer.resblocks[0]
        x = blk.ln_1(half.token_embedding(tokens) + half.positional_embedding)
        q, k, _ = torch.nn.functional.linear(x, blk.attn.in_proj_weight, blk.attn.in_proj_bias).chunk(3, dim=-1)
        assert torch.isinf(q @ k.transpose(-1, -2)).any()
        out = half(tokens)
    assert out.dtype == torch.float16
    assert torch.isfinite(out).all()
    err = rel_l2(out.float(), ref)
    print(f"\nfp16 text encoder (q.k^T past fp16 range) vs fp32: rel L2 {err:.2e}")
    assert err < 5e-2


def test_tiny_matches_transformers_clip_text_model():
    from transformers import CLIPTextConfig, CLIPTextModel

    enc = randomize_(TextEncoder(TINY).eval(), seed=4)
    hf_cfg = CLIPTextConfig.from_dict(keys.config_to_diffusers(TINY))
    assert keys.config_from_diffusers(hf_cfg.to_dict()) == TINY
    ref_model = CLIPTextModel(hf_cfg).eval()
    ref_sd = ref_model.state_dict()
    # transformers 5.x drops the 'text_model.' level in memory (files keep it; from_pretrained strips it)
    prefix = "text_model." if any(k.startswith("text_model.") for k in ref_sd) else ""
    mapped = keys.original_to_diffusers(enc.state_dict(), TINY, prefix=prefix)
    assert set(mapped) == set(ref_sd)
    ref_model.load_state_dict(mapped, strict=True)
    tokens = open_clip.tokenize(PROMPTS)
    with torch.no_grad():
        ours = enc(tokens)
        ref = ref_model(input_ids=tokens).last_hidden_state
    err = rel_l2(ours, ref)
    print(
        f"\ntiny text encoder vs transformers CLIPTextModel ({len(hf_cfg.to_dict())} cfg keys, "
        f"attn {ref_model.config._attn_implementation}): rel L2 {err:.2e}"
    )
    assert err <= 1e-5


def test_diffusers_key_map_both_ways():
    from transformers import CLIPTextConfig, CLIPTextModel

    ref_sd = CLIPTextModel(CLIPTextConfig.from_dict(keys.config_to_diffusers(TINY))).state_dict()
    ref_sd = {k.removeprefix("text_model."): v for k, v in ref_sd.items()}
    ours = randomize_(TextEncoder(TINY), seed=5).state_dict()
    file_layout = keys.original_to_diffusers(ours, TINY)
    assert set(file_layout) == {"text_model." + k for k in ref_sd}
    for k, v in file_layout.items():
        assert v.shape == ref_sd[k.removeprefix("text_model.")].shape, k
    # q/k/v come from in_proj rows 0:w, w:2w, 2w:3w
    w = TINY.width
    q = file_layout["text_model.encoder.layers.1.self_attn.k_proj.weight"]
    assert torch.equal(q, ours["transformer.resblocks.1.attn.in_proj_weight"][w : 2 * w])
    for layout in (file_layout, {k.removeprefix("text_model."): v for k, v in file_layout.items()}):
        back = keys.diffusers_to_original(layout, TINY)
        assert list(back) == list(ours)
        assert all(torch.equal(back[k], ours[k]) for k in ours)
    # old files also carry the position_ids buffer: accepted and dropped
    with_buffer = dict(file_layout, **{"text_model.embeddings.position_ids": torch.arange(77)[None]})
    assert set(keys.diffusers_to_original(with_buffer, TINY)) == set(ours)
    with pytest.raises(KeyError, match="text_projection"):
        keys.diffusers_to_original(dict(file_layout, **{"text_model.text_projection.weight": q}), TINY)
    missing = dict(file_layout)
    del missing["text_model.encoder.layers.0.self_attn.v_proj.bias"]
    with pytest.raises(KeyError, match="v_proj.bias"):
        keys.diffusers_to_original(missing, TINY)
    with pytest.raises(KeyError, match="lacks the 'text_model.' prefix"):
        keys.diffusers_to_original(dict(file_layout, **{"final_layer_norm.bias": q}), TINY)
    with pytest.raises(KeyError, match="resblocks.2"):
        keys.original_to_diffusers(dict(ours, **{"transformer.resblocks.2.ln_1.bias": q}), TINY)


def test_openclip_key_map_exact():
    model = openclip_model(TINY, seed=6)
    sd = model.state_dict()
    ours = keys.openclip_to_ours(sd, TINY)
    assert list(ours) == list(TextEncoder(TINY).state_dict())
    assert any(k.startswith("visual.") for k in sd) and "text_projection" in sd and "logit_scale" in sd
    assert not any(k.startswith("transformer.resblocks.2.") for k in ours)
    keys.check_state(ours, TINY)
    with pytest.raises(KeyError, match="resblocks.3.ln_1.weight"):
        keys.openclip_to_ours(dict(sd, **{"transformer.resblocks.3.ln_1.weight": sd["ln_final.weight"]}), TINY)
    partial = dict(sd)
    del partial["transformer.resblocks.1.mlp.c_proj.bias"]
    with pytest.raises(KeyError, match="resblocks.1.mlp.c_proj.bias"):
        keys.openclip_to_ours(partial, TINY)
    with pytest.raises(ValueError, match="ln_final.bias"):
        keys.check_state(dict(ours, **{"ln_final.bias": torch.zeros(3)}), TINY)


def test_config_inference():
    model = openclip_model(TINY, seed=7)
    assert keys.config_from_openclip_state(model.state_dict(), head_width=8) == TINY
    wide = TextEncoderConfig(vocab_size=1000, context_length=16, width=128, heads=2, layers=4, layers_used=3)
    all_blocks = TextEncoderConfig(vocab_size=1000, context_length=16, width=128, heads=2, layers=4, layers_used=4)
    wide_sd = {k: torch.empty(s) for k, s in keys.expected_shapes(all_blocks).items()}
    wide_sd["text_projection"] = torch.empty(128, 64)
    assert keys.config_from_openclip_state(wide_sd) == wide  # 64-d heads by default
    assert keys.config_from_diffusers(MS17_TEXT_CONFIG) == TEXT_ENCODER_PRESETS["ms-1.7b"]
    ours = keys.config_to_diffusers(TEXT_ENCODER_PRESETS["ms-1.7b"])
    assert ours == {k: v for k, v in MS17_TEXT_CONFIG.items() if k != "torch_dtype"}
    from t2vrt.errors import UsageError

    with pytest.raises(UsageError, match="quick_gelu"):
        keys.config_from_diffusers(dict(MS17_TEXT_CONFIG, hidden_act="quick_gelu"))


def test_onnx_export_two_batch_sizes(tmp_path):
    import onnxruntime as ort

    enc = randomize_(TextEncoder(TINY).eval(), seed=8)
    spec = text_encoder_spec(TINY.context_length, TINY.width)
    path = tmp_path / "text_encoder.onnx"
    sample = open_clip.tokenize(PROMPTS[:2])
    with torch.no_grad():
        torch.onnx.export(
            enc,
            (sample,),
            str(path),
            input_names=spec.input_names,
            output_names=spec.output_names,
            dynamic_axes=spec.dynamic_axes(),
            opset_version=17,
            dynamo=False,
        )
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for prompts in (PROMPTS[:1], PROMPTS):
        tokens = open_clip.tokenize(prompts)
        (got,) = sess.run(None, {"tokens": tokens.numpy()})
        with torch.no_grad():
            want = enc(tokens)
        err = rel_l2(got, want)
        print(f"\ntext encoder ONNX (ORT CPU) batch {len(prompts)}: rel L2 {err:.2e}")
        assert got.shape == spec.shapes({"text_batch": len(prompts)})["text_embeddings"]
        assert err <= 1e-5


def test_full_vit_h_matches_openclip():
    """The real ViT-H-14 text shape (24 blocks, 1024 wide), random weights, against open_clip's own tower."""
    start = time.perf_counter()
    cfg = TEXT_ENCODER_PRESETS["ms-1.7b"]
    text = CLIPTextCfg(context_length=77, vocab_size=49408, width=1024, heads=16, layers=24)
    from open_clip.model import _build_text_tower

    with torch.device("meta"):  # skip open_clip's own init: every weight is drawn below anyway
        tower = _build_text_tower(16, text).eval()  # open_clip's TextTransformer
    tower = randomize_(tower.to_empty(device="cpu"), seed=9)
    tower.attn_mask = tower.build_causal_mask()  # to_empty left the non-persistent buffer uninitialised
    sd = tower.state_dict()
    assert keys.config_from_openclip_state(sd) == cfg
    with torch.device("meta"):  # as the loader builds it: no allocation until the weights are assigned
        enc = TextEncoder(cfg).eval()
    enc.load_state_dict(keys.openclip_to_ours(sd, cfg), strict=True, assign=True)
    enc.init_buffers()
    tokens = open_clip.tokenize(PROMPTS[:2])
    with torch.no_grad():
        ours = enc(tokens)
        x = tower.token_embedding(tokens) + tower.positional_embedding
        for block in tower.transformer.resblocks[:-1]:
            x = block(x, attn_mask=tower.attn_mask)
        ref = tower.ln_final(x)
    err = rel_l2(ours, ref)
    n_ours = sum(p.numel() for p in enc.parameters())
    n_tower = sum(p.numel() for p in tower.parameters())
    print(
        f"\nViT-H-14 text: ours {n_ours:,} params (23 blocks), open_clip tower {n_tower:,} (24 + projection); "
        f"rel L2 {err:.2e}; {time.perf_counter() - start:.1f} s"
    )
    assert err <= 1e-5
