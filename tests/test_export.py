"""`t2vrt export`: bundles from the embedded tiny model and from checkpoint directories of both layouts, each
gated against PyTorch; failures leave no bundle behind."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import onnx
import pytest
from click.testing import CliRunner

from t2vrt.cli import cli
from t2vrt.components import COMPONENTS
from t2vrt.errors import T2VError, UsageError
from t2vrt.export import bundle as bundle_mod
from t2vrt.export.bundle import ExportOptions, export_bundle
from t2vrt.export.gates import FP16_PSNR_BAR_DB, FP32_REL_L2_BAR
from t2vrt.export.numerics import rel_l2, sample_inputs
from t2vrt.manifest import load_manifest
from t2vrt.runtime.onnxruntime_backend import make_session


def _leftovers(parent: Path) -> list[str]:
    return [p.name for p in parent.iterdir() if ".tmp-" in p.name or ".old-" in p.name]


def test_tiny_bundle_is_complete_and_gated(tiny_bundle: Path) -> None:
    m = load_manifest(tiny_bundle)
    assert m.precisions == ["fp32", "fp16"]
    assert (tiny_bundle / "tokenizer.json").is_file()
    assert len(m.betas) == 1000 and m.defaults.fps == 8
    for name in COMPONENTS:
        c = m.components[name]
        for p in ("fp32", "fp16"):
            f = c.file(p)
            assert f.path.is_file() and f.bytes > 0
            print(f"{name} {p}: rel L2 vs PyTorch fp32 = {f.parity['rel_l2']:.2e}")
        assert c.file("fp32").parity["rel_l2"] <= FP32_REL_L2_BAR
        assert c.file("fp16").parity["rel_l2"] < 1e-2
        # fp16 graphs keep an fp32 boundary and fp16 weights inside
        g = onnx.load(str(c.file("fp16").path))
        kinds = {i.data_type for i in g.graph.initializer if len(i.dims) > 1}
        assert onnx.TensorProto.FLOAT16 in kinds
        assert [i.type.tensor_type.elem_type for i in g.graph.input] == [
            onnx.TensorProto.INT64 if t.dtype == "int64" else onnx.TensorProto.FLOAT for t in c.io.inputs
        ]
    gate = m.fp16_gate
    print(f"fp16 gate: {gate['psnr_db']:.1f} dB")
    assert gate["psnr_db"] >= FP16_PSNR_BAR_DB


def test_graphs_are_dynamic(tiny_bundle: Path, tiny_models) -> None:
    """Each ONNX graph runs at sizes other than both the trace's and the gate's, matching PyTorch."""
    from t2vrt.export.gates import torch_run

    _, models = tiny_models
    m = load_manifest(tiny_bundle)
    other = {
        "text_encoder": {"text_batch": 1},
        "unet": {"batch": 2, "frames": 1, "latent_height": 8, "latent_width": 24},
        "vae_decoder": {"vae_batch": 1, "latent_height": 5, "latent_width": 7},
        "vae_encoder": {"vae_batch": 1, "latent_height": 3, "latent_width": 7},
    }
    for name in COMPONENTS:
        c = m.components[name]
        x = sample_inputs(c.io, other[name], seed=3)
        got = make_session(c.file("fp32").path).run(None, x)[0]
        err = rel_l2(got, torch_run(models[name], x))
        print(f"{name} at {other[name]}: rel L2 {err:.2e}")
        assert err <= FP32_REL_L2_BAR


def test_tracing_leaves_the_model_in_eval_mode(tmp_path: Path, tiny_models) -> None:
    """The exporter restores the wrapper's train/eval mode recursively; a wrapper in training mode would switch the
    model's Dropouts on for everything run after the export."""
    import torch

    from t2vrt.export.bundle import EngineIO
    from t2vrt.export.onnx_io import trace_to_onnx

    cfg, models = tiny_models
    spec = COMPONENTS["vae_decoder"].io(cfg)
    trace_to_onnx(
        EngineIO(models["vae_decoder"], torch.float32),
        spec,
        sample_inputs(spec, COMPONENTS["vae_decoder"].trace_dims),
        tmp_path / "vae.onnx",
        17,
    )
    assert not any(m.training for m in models["vae_decoder"].modules())


def test_reexport_reuses_unchanged_components(tiny_bundle: Path, tmp_path: Path) -> None:
    out = tmp_path / "b"
    shutil.copytree(tiny_bundle, out)
    before = json.loads((out / "manifest.json").read_text())["components"]
    log: list[str] = []
    export_bundle(ExportOptions(model="tiny", out=out, precision="fp32"), progress=log.append)
    assert sum("reused" in line for line in log) == len(COMPONENTS), log  # all four, the VAE encoder too
    assert not any("tracing" in line for line in log)
    after = load_manifest(out)
    assert after.precisions == ["fp32"]
    for name in COMPONENTS:
        assert after.components[name].file("fp32").sha256 == before[name]["files"]["fp32"]["sha256"]
    assert _leftovers(tmp_path) == []


@pytest.mark.parametrize("layout", ["original", "diffusers"])
def test_export_checkpoint_directory(layout: str, tmp_path: Path, tiny_bundle: Path, tiny_models) -> None:
    """A checkpoint directory of each layout exports to a bundle computing what the embedded model computes."""
    from support import writers

    cfg, models = tiny_models
    ckpt = tmp_path / layout
    (writers.write_original if layout == "original" else writers.write_diffusers)(ckpt, models, cfg)
    out = export_bundle(ExportOptions(model=str(ckpt), out=tmp_path / "bundle", precision="fp32"))
    m, ref = load_manifest(out), load_manifest(tiny_bundle)
    assert m.source.layout == layout
    assert len(m.source.files) >= 3 and all(len(f["sha256"]) == 64 for f in m.source.files)
    for name in COMPONENTS:
        x = sample_inputs(m.components[name].io, COMPONENTS[name].check_dims, seed=5)
        a = make_session(m.components[name].file("fp32").path).run(None, x)[0]
        b = make_session(ref.components[name].file("fp32").path).run(None, x)[0]
        assert rel_l2(a, b) <= 1e-6, name


def test_broken_checkpoint_leaves_no_bundle(tmp_path: Path, tiny_models) -> None:
    from support import writers

    cfg, models = tiny_models
    ckpt = writers.write_original(tmp_path / "ckpt", models, cfg)
    unet = Path(ckpt) / "text2video_pytorch_model.pth"
    unet.write_bytes(unet.read_bytes()[: unet.stat().st_size // 2])  # truncated download
    out = tmp_path / "bundle"
    with pytest.raises(T2VError, match="text2video_pytorch_model.pth"):
        export_bundle(ExportOptions(model=str(ckpt), out=out, precision="fp32"))
    assert not out.exists() and _leftovers(tmp_path) == []


def test_interrupted_export_leaves_no_bundle(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real = bundle_mod.trace_to_onnx
    calls = []

    def interrupt_second(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(bundle_mod, "trace_to_onnx", interrupt_second)
    out = tmp_path / "bundle"
    with pytest.raises(KeyboardInterrupt):
        export_bundle(ExportOptions(model="tiny", out=out, precision="fp32"))
    assert not out.exists() and _leftovers(tmp_path) == []


def test_failed_parity_gate_refuses_the_bundle(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A graph that does not compute what PyTorch computes is refused, loudly, and nothing is written."""
    real = bundle_mod.gates.torch_run
    monkeypatch.setattr(bundle_mod.gates, "torch_run", lambda module, x: real(module, x) * 1.001)
    out = tmp_path / "bundle"
    with pytest.raises(T2VError, match="parity gate: text_encoder fp32 .* rel L2"):
        export_bundle(ExportOptions(model="tiny", out=out, precision="fp32"))
    assert not out.exists() and _leftovers(tmp_path) == []


def test_bad_out_and_options(tmp_path: Path) -> None:
    afile = tmp_path / "file"
    afile.write_text("x")
    with pytest.raises(UsageError, match="cannot create its parent"):
        export_bundle(ExportOptions(model="tiny", out=afile / "bundle"))
    notbundle = tmp_path / "stuff"
    notbundle.mkdir()
    (notbundle / "keep.txt").write_text("mine")
    with pytest.raises(UsageError, match="not a t2vrt bundle"):
        export_bundle(ExportOptions(model="tiny", out=notbundle))
    assert (notbundle / "keep.txt").read_text() == "mine"
    with pytest.raises(UsageError, match="--precision"):
        export_bundle(ExportOptions(model="tiny", out=tmp_path / "b", precision="int8"))
    with pytest.raises(UsageError, match="--opset"):
        export_bundle(ExportOptions(model="tiny", out=tmp_path / "b", opset=11))
    with pytest.raises(UsageError):
        export_bundle(ExportOptions(model=str(tmp_path / "missing-dir"), out=tmp_path / "b"))
    assert not (tmp_path / "b").exists()


def test_cli_errors_are_one_line(tmp_path: Path) -> None:
    r = CliRunner().invoke(cli, ["export", str(tmp_path / "nope"), "--out", str(tmp_path / "b")])
    assert r.exit_code == 2
    assert r.output.count("\n") == 1 and r.output.startswith("error: ") and "Traceback" not in r.output
    p = subprocess.run(
        [sys.executable, "-m", "t2vrt.cli", "export", "tiny", "--out", str(tmp_path / "b"), "--precision", "int8"],
        capture_output=True,
        text=True,
    )
    assert p.returncode == 2 and "Traceback" not in p.stderr and "int8" in p.stderr


@pytest.mark.slow
def test_full_size_unet_exports_with_external_data(tmp_path: Path) -> None:
    """The real size is where external data, memory and time bite: the full ms-1.7b UNet (random weights)."""
    import time

    import psutil
    import torch

    from t2vrt.config import preset
    from t2vrt.export.bundle import EngineIO
    from t2vrt.export.gates import torch_run
    from t2vrt.export.onnx_io import trace_to_onnx
    from t2vrt.models.random_init import randomize_
    from t2vrt.models.unet3d import UNet3D

    cfg = preset("ms-1.7b")
    unet = randomize_(UNet3D(cfg.unet), seed=0).eval()
    n_params = sum(p.numel() for p in unet.parameters())
    spec = COMPONENTS["unet"].io(cfg)
    path = tmp_path / "unet" / "model.onnx"
    t0 = time.perf_counter()
    data = trace_to_onnx(
        EngineIO(unet, torch.float32), spec, sample_inputs(spec, COMPONENTS["unet"].trace_dims), path, 17
    )
    took = time.perf_counter() - t0
    assert data is not None and data.name == "model.onnx.data"
    assert sorted(p.name for p in path.parent.iterdir()) == ["model.onnx", "model.onnx.data"]  # ONE data file
    assert data.stat().st_size > 5.5e9 and path.stat().st_size < 50e6
    x = sample_inputs(spec, {"batch": 1, "frames": 2, "latent_height": 8, "latent_width": 8}, seed=2)
    ref = torch_run(unet, x)
    del unet
    try:
        got = make_session(path).run(None, x)[0]
    finally:
        shutil.rmtree(path.parent)  # 5.6 GB: pytest keeps the last runs' temp dirs, which would fill small disks
    err = rel_l2(got, ref)
    rss = psutil.Process().memory_info().rss / 2**30
    print(f"full UNet: {n_params / 1e9:.3f} B params, export {took:.0f} s, rel L2 {err:.2e}, RSS now {rss:.1f} GiB")
    assert n_params > 1.4e9
    assert err <= FP32_REL_L2_BAR
