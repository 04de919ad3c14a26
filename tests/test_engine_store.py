"""Engines on disk (keys, listing, stale detection, --clean), `t2vrt build` without TensorRT, and the backend's
refusals: all without a GPU. Engine files here are placeholder bytes: only their names and sidecars matter."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from t2vrt.cli import cli
from t2vrt.components import COMPONENTS
from t2vrt.config import preset
from t2vrt.engine import store
from t2vrt.engine.facts import bundle_facts, make_plan
from t2vrt.engine.plans import GiB, Request
from t2vrt.manifest import write_json_atomic

HERE = store.Target("NVIDIA GeForce RTX 3060", "8.6", "10.13.0")
OTHER = store.Target("NVIDIA A100-SXM4-80GB", "8.0", "10.13.0")


def make_bundle(root: Path) -> Path:
    """A bundle whose graphs are placeholder bytes (no export): enough for the planner and the engine store."""
    from dataclasses import replace

    from t2vrt.components import COMPONENTS
    from t2vrt.manifest import Component, ComponentFile, Manifest, SourceInfo, TokenizerInfo

    cfg = preset("tiny")
    cfg = replace(cfg, defaults=replace(cfg.defaults, num_inference_steps=2))
    components = {}
    for name, cdef in COMPONENTS.items():
        files = {}
        for prec in ("fp32", "fp16"):
            path = root / name / prec / "model.onnx"
            path.parent.mkdir(parents=True, exist_ok=True)
            data = f"{name} {prec}".encode()
            path.write_bytes(data)
            files[prec] = ComponentFile(path, None, hashlib.sha256(data).hexdigest(), 1000 * len(data))
        components[name] = Component(name, cdef.io(cfg), files)
    betas = tuple([0.01] * cfg.schedule.num_train_timesteps)
    tok = TokenizerInfo("tokenizer.json", cfg.text_encoder.context_length)
    m = Manifest(root, cfg, betas, tok, components, SourceInfo("embedded", "tiny", "0"))
    write_json_atomic(root / "manifest.json", m.to_json())
    return root


def fake_build(bundle: Path, target: store.Target, req: Request) -> dict[str, Path]:
    """What build_all writes, with placeholder engine bytes (no TensorRT)."""
    facts = bundle_facts(bundle)
    plan = make_plan(facts, req, 2 * GiB)
    files = {}
    assert facts.manifest is not None
    for ep in plan.engines:
        comp = facts.manifest.components[ep.component]
        prof = ep.profile(comp.io)
        stem = store.engine_stem(ep.component, ep.dims_min, ep.dims_max, prof, comp.files["fp16"].sha256, False, 3)
        path = store.target_dir(bundle, target) / f"{stem}.plan"
        store.write_engine(
            path,
            b"\0" * 4096,
            {
                "component": ep.component,
                "target": target.to_json(),
                "onnx_sha256": comp.files["fp16"].sha256,
                "dims_min": ep.dims_min,
                "dims_opt": ep.dims_opt,
                "dims_max": ep.dims_max,
                "device_memory": 7 << 20,
            },
        )
        files[ep.component] = path
    store.write_plan(
        bundle,
        target,
        {"target": target.to_json(), "plan": plan.to_json(), "engine_files": {c: p.name for c, p in files.items()}},
    )
    return files


def test_keys_list_and_clean(tmp_path: Path) -> None:
    bundle = make_bundle(tmp_path / "b")
    files = fake_build(bundle, HERE, Request(8, 64, 64))
    assert (
        files["unet"].name.startswith("unet-b2f8h8w8-")
        and files["unet"].parent.name == "nvidia-geforce-rtx-3060-sm86-trt10.13.0"
    )
    rows = store.bundle_engine_summary(bundle)
    assert len(rows) == len(COMPONENTS) and all(r["stale"] is None for r in rows)
    assert {r["gpu"] for r in rows} == {HERE.gpu} and all(r["bytes"] == 4096 for r in rows)
    # a rebuild for other shapes: the old engines are no longer in plan.json
    old = set(files.values())
    new = fake_build(bundle, HERE, Request(4, 64, 128))
    assert new["unet"] not in old and new["text_encoder"] in old  # same text profile, same key: reused
    # another GPU's engines, a half-written file, and a re-export that changes the VAE's ONNX
    fake_build(bundle, OTHER, Request(8, 64, 64))
    (store.target_dir(bundle, HERE) / ".unet-x.plan.tmp").write_bytes(b"partial")
    m = json.loads((bundle / "manifest.json").read_text())
    m["components"]["vae_decoder"]["files"]["fp16"]["sha256"] = "0" * 64
    write_json_atomic(bundle / "manifest.json", m)
    stale = {r["path"]: r["stale"] for r in store.bundle_engine_summary(bundle) if r["stale"]}
    print("\nstale:", json.dumps(stale, indent=1))
    assert (
        sum("not used by the current plan.json" in s for s in stale.values()) == 2
    )  # the old unet and vae_encoder shapes
    assert sum("older export" in s for s in stale.values()) == 3  # every vae engine (old shapes, new, other GPU)
    assert "unfinished temp file" in stale.values()
    r = CliRunner().invoke(cli, ["build", str(bundle), "--clean"])
    assert r.exit_code == 0 and "6 stale engine file(s) removed" in r.output, r.output
    left = store.bundle_engine_summary(bundle)
    assert len(left) == 6 and all(
        x["stale"] is None for x in left
    )  # text + unet + vae_encoder for each of the two targets
    assert not any(
        p.suffix == ".json" and not p.with_suffix(".plan").exists() and p.name != "plan.json"
        for p in (bundle / "engines").rglob("*")
    )


def test_backend_refuses_engines_of_another_gpu(tmp_path: Path) -> None:
    from t2vrt.runtime.tensorrt_backend import _engines_problem

    bundle = make_bundle(tmp_path / "b")
    msg = _engines_problem(bundle, HERE)
    assert msg and "no TensorRT engines" in msg and f"t2vrt build {bundle}" in msg
    fake_build(bundle, OTHER, Request(8, 64, 64))
    msg = _engines_problem(bundle, HERE)
    print("\n" + str(msg))
    assert msg and "built for NVIDIA A100-SXM4-80GB (sm 8.0) with TensorRT 10.13.0" in msg and "\n" not in msg
    fake_build(bundle, HERE, Request(8, 64, 64))
    assert _engines_problem(bundle, HERE) is None


def test_without_tensorrt_or_gpu_one_line(tmp_path: Path) -> None:
    from t2vrt.engine.build import tensorrt_missing
    from t2vrt.runtime.tensorrt_backend import TensorRTBackend, why_tensorrt_unavailable

    if tensorrt_missing() is None:
        pytest.skip("TensorRT is installed here: the refusal is not what happens")
    bundle = make_bundle(tmp_path / "b")
    reason = why_tensorrt_unavailable(bundle)
    print("\n" + str(reason))
    assert reason and "TensorRT is not installed" in reason and "\n" not in reason
    with pytest.raises(Exception, match="TensorRT is not installed"):
        TensorRTBackend(bundle)
    r = CliRunner().invoke(cli, ["build", str(bundle)])
    assert r.exit_code == 1 and r.output.startswith("error: TensorRT is not installed") and r.output.count("\n") == 1


def test_plan_command_on_a_bundle(tmp_path: Path) -> None:
    bundle = make_bundle(tmp_path / "b")
    r = CliRunner().invoke(cli, ["plan", str(bundle), "--vram", "1GiB", "--no-calibrate"])
    print("\n" + r.output)
    assert r.exit_code == 0 and "8 frames at 64x64 on 1.00 GiB" in r.output, r.output
    r = CliRunner().invoke(cli, ["build", str(tmp_path / "nope")])
    assert r.exit_code == 2 and "not a directory" in r.output


def test_measured_figures_and_card_memory_in_the_folder(tmp_path: Path) -> None:
    """A streaming build and a plain one at the same shapes are different engines with their own figures; the weights
    measured at a streaming budget are restated as all of them; the folder carries the card's memory."""
    from t2vrt.engine.sizes import Measured, dims_key

    bundle = make_bundle(tmp_path / "b")
    t12 = store.Target("NVIDIA GeForce RTX 3060", "8.6", "10.13.0", 12)
    assert store.target_dir(bundle, t12).name == "nvidia-geforce-rtx-3060-12g-sm86-trt10.13.0"
    assert store.target_dir(bundle, t12) != store.target_dir(bundle, store.Target(t12.gpu, "8.6", "10.13.0", 8))
    assert store.Target.from_json(t12.to_json()) == t12 and "12 GiB" in t12.describe()
    dims = {"batch": 1, "frames": 8, "latent_height": 8, "latent_width": 8}
    for streaming, extra in (
        (False, {"weights_on_card": 900}),
        (True, {"weights_on_card": 500, "streamable_weights": 600, "weight_streaming_budget": 200}),
    ):
        path = store.target_dir(bundle, t12) / f"unet-{int(streaming)}.plan"
        store.write_engine(
            path,
            b"\0",
            {
                "component": "unet",
                "dims_max": dims,
                "device_memory": 70 + streaming,
                "weight_streaming": streaming,
                **extra,
            },
        )
    got = store.measured_memory(bundle, t12)["unet"]
    assert got[dims_key(dims)] == Measured(70, 900)
    assert got[dims_key(dims, True)] == Measured(
        71, 500 - 200 + 600, 600, 200
    )  # 300 that cannot stream + 600 streamable
