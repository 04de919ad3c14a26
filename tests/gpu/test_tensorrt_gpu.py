"""TensorRT on a real GPU: build the tiny bundle's engines, compare with ONNX Runtime CPU on the fp32 graphs, and
check the memory TensorRT reports against the plan. Skipped (with the reason) where TensorRT or a GPU is missing."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from t2vrt.engine.build import tensorrt_missing
from t2vrt.engine.device import gpu_problem


def _why_not() -> str | None:
    return tensorrt_missing() or gpu_problem()  # gpu_problem names the real CUDA error (driver, device, package)


REASON = _why_not()
pytestmark = [pytest.mark.gpu, pytest.mark.skipif(REASON is not None, reason=f"TensorRT GPU tests: {REASON}")]


def psnr(a: np.ndarray, b: np.ndarray, peak: float = 2.0) -> float:
    """Frames in [-1, 1]: peak-to-peak 2."""
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return float("inf") if mse == 0 else 10 * np.log10(peak**2 / mse)


@pytest.fixture(scope="module")
def built(tiny_bundle: Path, tmp_path_factory: pytest.TempPathFactory):
    from t2vrt.engine.build import build, current_target
    from t2vrt.engine.facts import bundle_facts, make_plan, request_from
    from t2vrt.engine.plans import GiB

    bundle = tmp_path_factory.mktemp("trt") / "tiny"
    shutil.copytree(tiny_bundle, bundle)
    target, _ = current_target()
    facts = bundle_facts(bundle)
    req = request_from(facts, None, None, None, False)
    facts = bundle_facts(bundle, calibrate=req, target=target)
    plan = make_plan(facts, req, 4 * GiB)
    built = build(facts.manifest, plan, target, echo=print)
    return bundle, plan, built  # the plan as estimated, and as built (in TensorRT's figures: what plan.json holds)


def _ort(bundle: Path, component: str, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    import onnxruntime as ort

    from t2vrt.manifest import load_manifest

    comp = load_manifest(bundle).components[component]
    s = ort.InferenceSession(str(comp.file("fp32").path), providers=["CPUExecutionProvider"])
    return dict(zip(comp.io.output_names, s.run(None, inputs)))


def test_engines_match_onnxruntime_cpu(built) -> None:
    from t2vrt.manifest import load_manifest
    from t2vrt.runtime.tensorrt_backend import TensorRTBackend

    bundle, plan, _ = built
    m = load_manifest(bundle)
    rng = np.random.default_rng(0)
    backend = TensorRTBackend(bundle)
    try:
        hints = backend.hints()
        assert hints.guidance_batch == plan.guidance_batch and hints.vae_chunk == plan.vae_chunk
        for name in ("text_encoder", "unet", "vae_decoder"):
            ep = plan.engine(name)
            feeds = {}
            for t in m.components[name].io.inputs:
                shape = t.resolve(ep.dims_opt)
                if t.dtype == "int64":
                    feeds[t.name] = rng.integers(0, 1000, shape).astype(np.int64)
                elif t.name == "timestep":
                    feeds[t.name] = np.full(shape, 500.0, np.float32)
                else:
                    feeds[t.name] = rng.standard_normal(shape).astype(np.float32)
            runner = backend.open(name)
            got = runner.run(feeds)
            again = runner.run(feeds)  # the UNet's second call replays a CUDA graph
            want = _ort(bundle, name, feeds)
            for k in want:
                rel = float(np.linalg.norm(got[k] - want[k]) / (np.linalg.norm(want[k]) + 1e-12))
                print(
                    f"\n{name}.{k}: TensorRT fp16 vs ORT CPU fp32 rel L2 {rel:.2e}, PSNR {psnr(got[k], want[k]):.1f} dB"
                )
                assert rel < 2e-2
                np.testing.assert_array_equal(got[k], again[k])
            if name == "vae_decoder":
                assert psnr(got["images"], want["images"]) >= 35.0
            backend.release(name)
    finally:
        backend.close()


def test_measured_memory_matches_the_plan(built) -> None:
    from t2vrt.engine import store

    _, plan, done = built
    for name, path in done.files.items():
        meta = store.read_json(path.with_suffix(".json"))
        assert meta is not None
        ep = plan.engine(name)
        measured, planned = int(meta["device_memory"]), ep.activation_bytes + plan.workspace
        print(
            f"\n{name}: TensorRT device memory {measured >> 20} MiB, planned activations {ep.activation_bytes >> 20} MiB "
            f"+ workspace {plan.workspace >> 20} MiB"
        )
        assert measured <= planned


def test_cuda_memory_used_stays_within_the_plan(built) -> None:
    from t2vrt.runtime import cuda
    from t2vrt.runtime.tensorrt_backend import TensorRTBackend

    bundle, _, done = built
    plan = done.plan  # TensorRT's figures; each stage's peak holds the runtime reserve, not the CUDA context
    free0 = cuda.free_bytes()
    backend = TensorRTBackend(bundle)
    try:
        for name in ("text_encoder", "unet", "vae_decoder"):
            backend.open(name)
        free1 = cuda.free_bytes()
    finally:
        backend.close()
    used = free0 - free1
    print(f"\nopening all engines used {used >> 20} MiB; plan peak {plan.peak >> 20} MiB")
    assert used <= plan.peak  # cudaMemGetInfo's free already excluded this process's CUDA context: so does the peak
