"""ONNX liveness estimate on hand-made graphs (exact figures), and the analytic model checked against it and
against the real models' parameter counts."""

from __future__ import annotations

import warnings

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from t2vrt.engine import analytic, sizes
from t2vrt.engine.liveness import liveness


def _vi(name: str, shape: list[object], dtype: int = TensorProto.FLOAT) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, dtype, shape)


def _chain_model() -> onnx.ModelProto:
    """x -> Relu a -> Mul(a, W) b -> Add(a, b) c -> Relu y : a lives until the Add, so a, b, c are live together."""
    w = numpy_helper.from_array(np.ones((1, 8), np.float32), "W")
    nodes = [
        helper.make_node("Relu", ["x"], ["a"]),
        helper.make_node("Mul", ["a", "W"], ["b"]),
        helper.make_node("Add", ["a", "b"], ["c"]),
        helper.make_node("Relu", ["c"], ["y"]),
    ]
    g = helper.make_graph(nodes, "chain", [_vi("x", ["n", 8])], [_vi("y", ["n", 8])], [w])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])


def test_chain_peak_is_exact() -> None:
    live = liveness(_chain_model(), {"x": (10, 8)})
    # at the Add: a, b and c (10*8 float32 each = 320 B); x and y are I/O, W a weight
    print(f"\nchain graph at n=10: peak {live.peak_bytes} B at {live.peak_node}, {live.tensors} tensors")
    assert live.peak_bytes == 3 * 320 and live.unknown == ()
    assert liveness(_chain_model(), {"x": (20, 8)}).peak_bytes == 3 * 640  # scales with the shape given


def _attention_model() -> onnx.ModelProto:
    """q @ k^T * s -> Softmax -> @ v, on (heads, seq, d): the score tensors are (heads, seq, seq)."""
    scale = numpy_helper.from_array(np.array(0.125, np.float32), "s")
    nodes = [
        helper.make_node("Transpose", ["k"], ["kt"], perm=[0, 2, 1]),
        helper.make_node("MatMul", ["q", "kt"], ["scores"]),
        helper.make_node("Mul", ["scores", "s"], ["scaled"]),
        helper.make_node("Softmax", ["scaled"], ["probs"], axis=-1),
        helper.make_node("MatMul", ["probs", "v"], ["out"]),
    ]
    ins = [_vi(n, [4, "seq", 16]) for n in ("q", "k", "v")]
    g = helper.make_graph(nodes, "attn", ins, [_vi("out", [4, "seq", 16])], [scale])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])


def test_fused_attention_drops_the_score_matrix() -> None:
    shapes = {n: (4, 256, 16) for n in "qkv"}
    fused = liveness(_attention_model(), shapes, fused_attention=True)
    unfused = liveness(_attention_model(), shapes, fused_attention=False)
    scores = 4 * 256 * 256 * 4
    print(f"\nattention seq 256: unfused peak {unfused.peak_bytes} B, fused {fused.peak_bytes} B")
    assert unfused.peak_bytes == 2 * scores  # scores and scaled live together at the Mul (then scaled + probs)
    assert fused.peak_bytes == 4 * 256 * 16 * 4  # only k^T remains


def test_missing_input_shape_is_named() -> None:
    with pytest.raises(KeyError, match="'x'"):
        liveness(_chain_model(), {})


def test_analytic_parameter_counts_match_reference() -> None:
    from t2vrt.config import preset

    w = sizes.weight_bytes(preset("ms-1.7b"), itemsize=4)
    print(
        f"\nms-1.7b fp32 weights: unet {w['unet'] / 1e9:.3f} GB, text {w['text_encoder'] / 1e9:.3f} GB, "
        f"vae decoder {w['vae_decoder'] / 1e9:.3f} GB"
    )
    assert abs(w["unet"] - 5.645e9) / 5.645e9 < 0.002  # text2video_pytorch_model.pth: 5.65 GB of fp32


@pytest.mark.parametrize("name", ["tiny", "ms-1.7b"])
def test_analytic_unet_parameters_equal_the_model(name: str) -> None:
    torch = pytest.importorskip("torch")
    from t2vrt.config import preset
    from t2vrt.models.unet3d import UNet3D

    cfg = preset(name)
    with torch.device("meta"):
        model = UNet3D(cfg.unet)
    counted = sum(p.numel() for p in model.parameters())
    ours = analytic.unet(cfg.unet, 1, 1, 8, 8)[0]
    print(f"\n{name} UNet parameters: model {counted:,}, analytic {ours:,}")
    assert ours == counted


@pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::UserWarning")
def test_analytic_unet_activations_track_onnx_liveness(tmp_path) -> None:
    """The analytic walk against tensor liveness of the exported tiny UNet graph, at several shapes."""
    torch = pytest.importorskip("torch")
    from t2vrt.config import preset
    from t2vrt.iospec import unet_spec
    from t2vrt.models.random_init import randomize_
    from t2vrt.models.unet3d import UNet3D

    cfg = preset("tiny")
    u = cfg.unet
    spec = unet_spec(u.in_channels, u.out_channels, cfg.text_encoder.context_length, u.context_dim)
    model = randomize_(UNet3D(u), seed=0).eval()
    sample = spec.shapes({"batch": 2, "frames": 4, "latent_height": 16, "latent_width": 16})
    args = tuple(torch.zeros(sample[n]) for n in spec.input_names)
    path = tmp_path / "unet.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model,
            args,
            str(path),
            input_names=spec.input_names,
            output_names=spec.output_names,
            dynamic_axes=spec.dynamic_axes(),
            opset_version=17,
            dynamo=False,
        )
    graph = onnx.load(str(path))
    ratios = []
    for b, f, h, w in [(2, 4, 16, 16), (1, 8, 16, 24)]:
        dims = {"batch": b, "frames": f, "latent_height": h, "latent_width": w}
        live = liveness(graph, spec.shapes(dims))
        est = sizes.activation_bytes(cfg, "unet", dims, itemsize=4)
        ratios.append(live.peak_bytes / est)
        print(
            f"\ntiny UNet {dims}: ONNX liveness {live.peak_bytes / 2**20:.2f} MiB (at {live.peak_node}), "
            f"analytic {est / 2**20:.2f} MiB, ratio {ratios[-1]:.2f}, unresolved {len(live.unknown)}"
        )
    # The analytic model is what the planner uses at full size; it must stay within the planner's margin of the
    # graph's own liveness, and scale with the shapes as the graph does.
    assert all(0.9 <= r <= 1.1 for r in ratios), ratios
