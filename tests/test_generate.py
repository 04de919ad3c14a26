"""The runtime end to end on the tiny bundle: prompt -> frames -> file, against an independent PyTorch reference
(our torch modules + diffusers' DDIMScheduler), and every bad input as one clear line."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import ClassVar

import numpy as np
import pytest
from click.testing import CliRunner

from t2vrt.cli import cli
from t2vrt.errors import T2VError, UsageError
from t2vrt.manifest import load_manifest
from t2vrt.runtime.backend import Hints
from t2vrt.runtime.onnxruntime_backend import OnnxRuntimeBackend
from t2vrt.runtime.pipeline import Pipeline
from t2vrt.runtime.tokenizer import Tokenizer
from t2vrt.runtime.video import read_video

PROMPT = "a tiny green monster and a big flying UFO"
SMALL = dict(num_frames=3, height=64, width=128, num_inference_steps=4)


@pytest.fixture(scope="module")
def pipe(tiny_bundle: Path):
    with Pipeline.from_bundle(tiny_bundle, backend="onnxruntime-cpu") as p:
        yield p


def _torch_reference(tiny_models, tokens: np.ndarray, latents: np.ndarray, steps: int, guidance: float) -> np.ndarray:
    """The same model in PyTorch with diffusers' DDIM (leading spacing, offset 1, alpha_prev = acp[0] at the end)."""
    import torch
    from diffusers import DDIMScheduler

    from t2vrt.runtime.video import to_uint8

    _, m = tiny_models
    sched = DDIMScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,
        timestep_spacing="leading",
    )
    sched.set_timesteps(steps)
    with torch.no_grad():
        emb = m["text_encoder"](torch.from_numpy(tokens))  # (2, L, C): cond, uncond
        x = torch.from_numpy(latents)
        for t in sched.timesteps:
            eps = m["unet"](torch.cat([x, x]), torch.full((2,), float(t)), emb)
            eps = eps[1:] + guidance * (eps[:1] - eps[1:])
            x = sched.step(eps, t, x).prev_sample
        z = x[0].permute(1, 0, 2, 3)  # (f, c, h, w)
        images = m["vae_decoder"](z).numpy()
    return to_uint8(images)


def test_frames_match_pytorch_reference(pipe: Pipeline, tiny_models) -> None:
    rng = np.random.default_rng(11)
    latents = rng.standard_normal((1, 4, 3, 8, 16)).astype(np.float32)
    video = pipe(PROMPT, latents=latents, guidance_scale=9.0, **SMALL)
    assert video.frames.shape == (3, 64, 128, 3) and video.frames.dtype == np.uint8
    tokens = pipe.tokenizer.encode([PROMPT, ""])
    ref = _torch_reference(tiny_models, tokens, latents, SMALL["num_inference_steps"], 9.0)
    diff = np.abs(video.frames.astype(int) - ref.astype(int))
    print(f"runtime vs PyTorch reference: max |diff| {diff.max()} levels, {np.mean(diff > 0):.4%} of values differ")
    assert diff.max() <= 1
    assert ref.std() > 5  # the comparison is not between two constant images


def test_guidance_batching_and_vae_chunks_give_the_same_frames(pipe: Pipeline) -> None:
    base = pipe(PROMPT, seed=3, guidance_batch=2, vae_chunk=0, **SMALL).frames
    two_calls = pipe(PROMPT, seed=3, guidance_batch=1, vae_chunk=0, **SMALL).frames
    chunked = pipe(PROMPT, seed=3, guidance_batch=2, vae_chunk=2, **SMALL).frames
    assert np.abs(base.astype(int) - two_calls.astype(int)).max() <= 1
    assert np.array_equal(base, chunked)
    other_seed = pipe(PROMPT, seed=4, **SMALL).frames
    assert not np.array_equal(base, other_seed)


def test_seed_negative_prompt_and_samplers(pipe: Pipeline) -> None:
    a = pipe(PROMPT, seed=5, **SMALL).frames
    assert np.array_equal(a, pipe(PROMPT, seed=5, **SMALL).frames)  # deterministic
    assert not np.array_equal(a, pipe(PROMPT, seed=5, negative_prompt="blurry", **SMALL).frames)
    dpm = pipe(PROMPT, seed=5, scheduler="dpm++", **SMALL)
    assert dpm.frames.shape == a.shape and not np.array_equal(a, dpm.frames)
    noisy = pipe(PROMPT, seed=5, eta=1.0, **SMALL).frames
    assert not np.array_equal(a, noisy)
    v = pipe(PROMPT, seed=5, guidance_scale=1.0, **SMALL)  # no unconditional pass at all
    assert v.frames.shape == a.shape and set(v.timings) >= {"text_encode", "denoise", "step", "decode"}


class _NanRunner:
    def __init__(self, inner, bad: str) -> None:
        self.inner, self.bad = inner, bad
        self.component, self.io = inner.component, inner.io

    def run(self, inputs):
        out = self.inner.run(inputs)
        if self.component == self.bad:
            out = {k: np.full_like(v, np.nan) for k, v in out.items()}
        return out


class _NanBackend(OnnxRuntimeBackend):
    bad = "unet"

    def open(self, component: str):
        return _NanRunner(super().open(component), self.bad)


@pytest.mark.parametrize(
    "bad, stage", [("text_encoder", "text encoder"), ("unet", "UNet"), ("vae_decoder", "VAE decoder")]
)
def test_nan_is_reported_with_its_stage(tiny_bundle: Path, bad: str, stage: str) -> None:
    m = load_manifest(tiny_bundle)
    backend = _NanBackend(m, "cpu")
    backend.bad = bad
    p = Pipeline(m, backend, Tokenizer.from_file(tiny_bundle / "tokenizer.json"))
    with pytest.raises(T2VError, match=f"^the {stage} graph produced NaN or inf"):  # finite inputs: the graph's fault
        p(PROMPT, **SMALL)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(height=60), "height must be a positive multiple of 64"),
        (dict(width=0), "width must be a positive multiple of 64"),
        (dict(num_frames=0), "frames must be an integer in 1..1024"),
        (dict(num_inference_steps=0), "steps must be an integer in 1..999"),
        (dict(num_inference_steps=1000), "steps must be an integer in 1..999"),
        (dict(guidance_scale=0.5), "guidance must be in 1..1000"),
        (dict(guidance_scale=1e39), "guidance must be in 1..1000"),
        (dict(eta=-1.0), "eta must be in"),
        (dict(scheduler="euler"), "scheduler must be one of"),
        (dict(scheduler="dpm++", eta=0.5), "eta applies to ddim only"),
        (dict(latents=np.zeros((1, 4, 2, 8, 8), np.float32)), r"latents must have shape \(1, 4, 3, 8, 16\)"),
    ],
)
def test_bad_generation_options(pipe: Pipeline, kwargs: dict, message: str) -> None:
    with pytest.raises(UsageError, match=message):
        pipe(PROMPT, **{**SMALL, **kwargs})


def test_cli_generate_writes_a_readable_mp4(tiny_bundle: Path, tmp_path: Path) -> None:
    out = tmp_path / "ufo.mp4"
    r = CliRunner().invoke(
        cli,
        [
            "generate",
            PROMPT,
            "--bundle",
            str(tiny_bundle),
            "-o",
            str(out),
            "--frames",
            "4",
            "--steps",
            "3",
            "--backend",
            "onnxruntime-cpu",
            "-q",
        ],
    )
    assert r.exit_code == 0, r.output
    assert "text encode" in r.output and "ms/step" in r.output
    frames = read_video(out)
    assert frames.shape == (4, 64, 64, 3)
    again = CliRunner().invoke(cli, ["generate", PROMPT, "--bundle", str(tiny_bundle), "-o", str(out), "-q"])
    assert again.exit_code == 2 and "exists" in again.output  # no --overwrite
    assert read_video(out).shape == (4, 64, 64, 3)  # untouched


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "t2vrt.cli", *args], capture_output=True, text=True)


def test_cli_bad_inputs_are_one_line(tiny_bundle: Path, tmp_path: Path) -> None:
    out = tmp_path / "x.mp4"
    cases = [
        (["--height", "100"], 2, "height must be a positive multiple of 64"),
        (["--steps", "0"], 2, "steps must be"),
        (["--guidance", "0.3"], 2, "guidance must be in 1..1000"),
        (["--backend", "tensorrt"], 2, "--backend tensorrt: TensorRT"),
    ]
    for extra, code, message in cases:
        p = _cli("generate", PROMPT, "--bundle", str(tiny_bundle), "-o", str(out), "-q", *extra)
        assert p.returncode == code, (extra, p.stderr)
        assert message in p.stderr and "Traceback" not in p.stderr, p.stderr
        assert not out.exists()
    p = _cli("generate", PROMPT, "--bundle", str(tmp_path / "nope"), "-o", str(out))
    assert p.returncode == 2 and "not a directory" in p.stderr
    p = _cli("generate", PROMPT, "--bundle", str(tiny_bundle), "-o", str(tmp_path / "x.avi"))
    assert p.returncode == 2 and ".mp4" in p.stderr
    p = _cli("generate", PROMPT, "--bundle", str(tiny_bundle), "-o", "/proc/nope/x.mp4")
    assert p.returncode == 2 and "Traceback" not in p.stderr


def test_damaged_bundles(tiny_bundle: Path, tmp_path: Path) -> None:
    b = tmp_path / "b"
    shutil.copytree(tiny_bundle, b)
    raw = json.loads((b / "manifest.json").read_text())
    (b / "manifest.json").write_text(json.dumps({**raw, "schema_version": 99}))
    with pytest.raises(UsageError, match="schema version 99"):
        load_manifest(b)
    (b / "manifest.json").write_text("{not json")
    with pytest.raises(UsageError, match="is not valid JSON"):
        load_manifest(b)
    (b / "manifest.json").write_text(json.dumps(raw))
    unet = b / raw["components"]["unet"]["files"]["fp32"]["path"]
    unet.write_bytes(unet.read_bytes()[:1000])  # truncated graph: caught by the size/sha256 check before loading
    p = _cli(
        "generate", PROMPT, "--bundle", str(b), "-o", str(tmp_path / "y.mp4"), "-q", "--backend", "onnxruntime-cpu"
    )
    assert p.returncode == 2 and "changed or truncated" in p.stderr and "Traceback" not in p.stderr
    assert not (tmp_path / "y.mp4").exists()
    unet.unlink()
    p = _cli(
        "generate", PROMPT, "--bundle", str(b), "-o", str(tmp_path / "y.mp4"), "-q", "--backend", "onnxruntime-cpu"
    )
    assert p.returncode == 2 and "missing" in p.stderr


def test_generate_never_imports_torch(tiny_bundle: Path, tmp_path: Path) -> None:
    code = f"""
import sys
from click.testing import CliRunner
from t2vrt.cli import cli
r = CliRunner().invoke(cli, ["generate", "hi", "--bundle", {str(tiny_bundle)!r}, "-o", {str(tmp_path / "v.gif")!r},
                             "--frames", "2", "--steps", "2", "-q"])
assert r.exit_code == 0, r.output
print(sorted(m for m in ("torch", "onnx", "t2vrt.models", "open_clip") if m in sys.modules))
"""
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    assert p.stdout.strip().splitlines()[-1] == "[]"


def test_backend_hints_are_obeyed(tiny_bundle: Path) -> None:
    class Hinted(OnnxRuntimeBackend):
        calls: ClassVar[list[int]] = []

        def hints(self) -> Hints:
            return Hints(guidance_batch=1, vae_chunk=1)

        def open(self, component: str):
            runner = super().open(component)
            outer = self

            class Counting:
                component, io = runner.component, runner.io

                def run(self, inputs):
                    outer.calls.append((component, next(iter(inputs.values())).shape[0]))
                    return runner.run(inputs)

            return Counting()

    m = load_manifest(tiny_bundle)
    b = Hinted(m, "cpu")
    Pipeline(m, b, Tokenizer.from_file(tiny_bundle / "tokenizer.json"))(PROMPT, **SMALL)
    unet = [n for c, n in b.calls if c == "unet"]
    vae = [n for c, n in b.calls if c == "vae_decoder"]
    assert unet == [1] * (2 * SMALL["num_inference_steps"])  # two batch-1 calls per step
    assert vae == [1, 1, 1]  # one frame per VAE call
