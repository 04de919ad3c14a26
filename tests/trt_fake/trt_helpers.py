"""Helpers of the TensorRT-on-CPU tests (tests/trt_fake): the environment the fakes make, plans forced into one mode,
engine builds, generation, and the check that a closed backend left nothing on the fake device."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np
from fakes.cuda_runtime import FakeCudaRuntime, GiB
from fakes.tensorrt import FakeTensorRT

from t2vrt.engine import build, store
from t2vrt.engine.facts import bundle_facts, make_plan
from t2vrt.engine.plans import Plan, Request
from t2vrt.manifest import load_manifest
from t2vrt.runtime.onnxruntime_backend import OnnxRuntimeBackend
from t2vrt.runtime.pipeline import Pipeline
from t2vrt.runtime.tokenizer import Tokenizer

TRT_VERSION = "10.13.0"
GPU_NAME = "NVIDIA Fake RTX 9000"
PROMPT = "a tiny green monster and a big flying UFO"
REQ = Request(frames=3, height=64, width=64)
STEPS = 3


@dataclasses.dataclass
class Env:
    bundle: Path
    cuda: FakeCudaRuntime
    fake: FakeTensorRT

    @property
    def target(self) -> store.Target:
        return build.current_target()[0]


def make(
    bundle: Path,
    residency: str = "resident",
    g: int = 2,
    chunk: int | None = None,
    stream: bool = False,
    req: Request = REQ,
    vram: int = 8 * GiB,
) -> Plan:
    """The planner's plan for the tiny bundle, with residency / guidance batch / VAE chunk / streaming forced."""
    p = make_plan(bundle_facts(bundle), req, vram)
    engines = []
    for e in p.engines:
        if e.component == "unet":
            lo, opt, hi = ({**d, "batch": g} for d in (e.dims_min, e.dims_opt, e.dims_max))
            e = dataclasses.replace(
                e,
                dims_min=lo,
                dims_opt=opt,
                dims_max=hi,
                resident_weight_bytes=e.weight_bytes * 7 // 8 if stream else e.weight_bytes,
            )
        if e.component == "vae_decoder" and chunk:
            e = dataclasses.replace(
                e, dims_opt={**e.dims_opt, "vae_batch": chunk}, dims_max={**e.dims_max, "vae_batch": chunk}
            )
        engines.append(e)
    return dataclasses.replace(
        p, residency=residency, guidance_batch=g, vae_chunk=chunk or p.vae_chunk, engines=tuple(engines)
    )


def build_engines(env: Env, plan: Plan, target: store.Target | None = None) -> dict[str, Path]:
    return build.build_all(load_manifest(env.bundle), plan, target or env.target, echo=lambda s: None)


def tokenizer(bundle: Path) -> Tokenizer:
    m = load_manifest(bundle)
    return Tokenizer.from_file(m.tokenizer_path, context_length=m.tokenizer.context_length)


def generate(bundle: Path, backend: Any, **kw: Any) -> np.ndarray:
    pipe = Pipeline(load_manifest(bundle), backend, tokenizer(bundle))
    size = dict(num_frames=REQ.frames, height=REQ.height, width=REQ.width, num_inference_steps=STEPS, seed=3)
    return pipe(PROMPT, **size, **kw).frames


def ort_frames(bundle: Path, g: int, chunk: int) -> np.ndarray:
    return generate(bundle, OnnxRuntimeBackend(load_manifest(bundle)), guidance_batch=g, vae_chunk=chunk)


def backend(env: Env, **kw: Any) -> Any:
    from t2vrt.runtime.tensorrt_backend import TensorRTBackend

    return TensorRTBackend(env.bundle, **kw)


def unet_inputs(b: Any, rng: np.random.Generator, batch: int, frames: int = REQ.frames) -> dict[str, np.ndarray]:
    spec = {t.name: t for t in b.manifest.components["unet"].io.inputs}
    dims = {"batch": batch, "frames": frames, "latent_height": REQ.height // 8, "latent_width": REQ.width // 8}
    out = {n: rng.standard_normal(t.resolve(dims)).astype(np.float32) for n, t in spec.items()}
    out["timestep"] = np.full((batch,), 500.0, np.float32)
    return out


def closed_clean(env: Env) -> None:
    """After close: nothing of ours on the device (engine weights included), no graphs, no streams, no bad frees."""
    import gc

    gc.collect()
    assert env.cuda.mem == {}, {p: env.cuda.owner.get(p) for p in env.cuda.mem}
    assert env.cuda.execs == {} and env.cuda.graphs == {} and env.cuda.streams == {}
    assert env.cuda.calls["bad_free"] == 0
