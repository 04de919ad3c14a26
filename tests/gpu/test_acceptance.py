"""The acceptance run on a real card: the full-size ms-1.7b bundle (random weights) built in every planner mode by
forcing --vram, frames vs ONNX Runtime CUDA by PSNR, measured device memory vs the plan, eager vs CUDA-graph replay.

Needs TensorRT, cuda-python, onnxruntime-gpu, a GPU with room for the largest mode, and T2VRT_FULLSIZE_BUNDLE naming
an exported full-size bundle (scripts/gpu-check.sh exports one). Skips, saying which of these is missing, otherwise.
Never run on a GPU by its author: a first run may need its tolerances looked at, never loosened to pass."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from t2vrt.engine.build import tensorrt_missing
from t2vrt.engine.device import gpu_problem


def _why_not() -> str | None:
    reason = tensorrt_missing() or gpu_problem()
    if reason:
        return reason
    if not os.environ.get("T2VRT_FULLSIZE_BUNDLE"):
        return "T2VRT_FULLSIZE_BUNDLE is not set (scripts/gpu-check.sh exports the full-size bundle and sets it)"
    return None


REASON = _why_not()
pytestmark = [pytest.mark.gpu, pytest.mark.skipif(REASON is not None, reason=f"GPU acceptance: {REASON}")]
GiB = 1 << 30
STEPS = 4
PSNR_MIN = 30.0  # fp16 TensorRT vs fp16 ONNX Runtime CUDA over a few DDIM steps, uint8 frames
GRAPH_TOL = 2  # uint8 levels between eager and CUDA-graph replay (same kernels; reductions may reorder)

# (mode, --vram, frames, height, width, dynamic, what the planner must choose: residency, guidance batch, streaming)
MODES = [
    ("resident", "24GiB", 16, 256, 256, False, ("resident", 2, False)),
    ("guidance-batch-1", "6GiB", 24, 320, 576, False, ("resident", 1, False)),
    ("one-at-a-time", "4GiB", 16, 256, 256, False, ("sequential", 1, False)),
    ("weight-streaming", "4GiB", 24, 320, 576, False, ("sequential", None, True)),
    ("dynamic", "24GiB", 16, 256, 256, True, ("resident", 2, False)),
]


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return float("inf") if mse == 0 else 10 * np.log10(255.0**2 / mse)


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    src = Path(os.environ["T2VRT_FULLSIZE_BUNDLE"])
    out = tmp_path_factory.mktemp("accept") / "ms17b"
    out.mkdir()
    for item in src.iterdir():  # symlink the graphs, keep engines apart from the source bundle
        if item.name != "engines":
            (out / item.name).symlink_to(item.resolve())
    return out


def _frames(bundle: Path, backend: Any, req: tuple[int, int, int]) -> np.ndarray:
    from t2vrt.manifest import load_manifest
    from t2vrt.runtime.pipeline import Pipeline
    from t2vrt.runtime.tokenizer import Tokenizer

    m = load_manifest(bundle)
    tok = Tokenizer.from_file(m.tokenizer_path, context_length=m.tokenizer.context_length)
    with Pipeline(m, backend, tok) as pipe:
        return pipe(
            "a red panda eating bamboo",
            num_frames=req[0],
            height=req[1],
            width=req[2],
            num_inference_steps=STEPS,
            seed=0,
        ).frames


@pytest.mark.parametrize("mode,vram,frames,height,width,dynamic,want", MODES, ids=[m[0] for m in MODES])
def test_mode(
    bundle: Path, mode: str, vram: str, frames: int, height: int, width: int, dynamic: bool, want: tuple
) -> None:
    from t2vrt.engine import build
    from t2vrt.engine.facts import bundle_facts, make_plan
    from t2vrt.engine.plans import Request, parse_bytes
    from t2vrt.manifest import load_manifest
    from t2vrt.runtime import cuda
    from t2vrt.runtime.onnxruntime_backend import OnnxRuntimeBackend
    from t2vrt.runtime.tensorrt_backend import TensorRTBackend

    target, gpu = build.current_target()
    if parse_bytes(vram) > gpu.free_bytes:
        pytest.skip(f"{mode}: --vram {vram} is more than this card's {gpu.free_bytes >> 20} MiB free")
    req = Request(frames, height, width, dynamic)
    facts = bundle_facts(bundle, calibrate=req, target=target)
    plan = make_plan(facts, req, parse_bytes(vram))
    residency, g, stream = want
    assert plan.residency == residency and plan.engine("unet").weight_streaming == stream, plan.summary()
    assert g is None or plan.guidance_batch == g, plan.summary()
    shutil.rmtree(bundle / "engines", ignore_errors=True)
    plan = build.build(load_manifest(bundle), plan, target).plan  # as built: in TensorRT's own figures

    free0 = cuda.free_bytes()
    trt_graph = TensorRTBackend(bundle, cuda_graphs=True)
    got = _frames(bundle, trt_graph, (frames, height, width))
    used = free0 - cuda.free_bytes()  # what stayed allocated after the run (resident: all engines and the block)
    print(
        f"\n{mode}: {plan.summary()}\ndevice memory held after the run {used >> 20} MiB, plan peak {plan.peak >> 20} MiB"
    )
    assert used <= plan.peak
    eager = _frames(bundle, TensorRTBackend(bundle, cuda_graphs=False), (frames, height, width))
    assert np.abs(got.astype(int) - eager.astype(int)).max() <= GRAPH_TOL
    ref = _frames(bundle, OnnxRuntimeBackend(load_manifest(bundle), "cuda"), (frames, height, width))
    p = psnr(got, ref)
    print(f"{mode}: TensorRT vs ONNX Runtime CUDA {p:.1f} dB")
    assert p >= PSNR_MIN
