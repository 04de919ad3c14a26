"""An explicit guidance batch vs the backend's hint: `--guidance-batch 2` for an unguided (few-step) sampler is one
line, exit 2, nothing written; the same 2 coming from a backend's memory plan is not the user's choice and the run
is one batch-1 UNet call per step."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from t2vrt.errors import UsageError
from t2vrt.manifest import load_manifest
from t2vrt.runtime.backend import Hints
from t2vrt.runtime.onnxruntime_backend import OnnxRuntimeBackend
from t2vrt.runtime.options import resolve_options
from t2vrt.runtime.pipeline import Pipeline
from t2vrt.runtime.tokenizer import Tokenizer

PROMPT = "a lighthouse in a storm"
FEW = dict(num_frames=2, num_inference_steps=2, guidance_scale=1.0, negative_prompt="", scheduler="lcm")


def test_explicit_two_is_refused_the_hint_is_not(tiny_bundle: Path) -> None:
    m = load_manifest(tiny_bundle)
    with pytest.raises(UsageError, match="guidance batch 2 .* does not apply to the lcm sampler"):
        resolve_options(m, PROMPT, guidance_batch=2, **FEW)
    hinted = resolve_options(m, PROMPT, hints=Hints(guidance_batch=2, vae_chunk=1), **FEW)
    assert hinted.guidance_batch == 1 and hinted.vae_chunk == 1  # the hint fills vae_chunk, not a batch of 2
    assert resolve_options(m, PROMPT, guidance_batch=1, **FEW).guidance_batch == 1  # what runs anyway: allowed
    # guided samplers: the hint fills an unset batch, the caller's choice wins over it
    assert resolve_options(m, PROMPT, hints=Hints(guidance_batch=1)).guidance_batch == 1
    assert resolve_options(m, PROMPT, guidance_batch=2, hints=Hints(guidance_batch=1)).guidance_batch == 2
    assert resolve_options(m, PROMPT).guidance_batch == 2
    with pytest.raises(UsageError, match="guidance batch must be 1"):
        resolve_options(m, PROMPT, hints=Hints(guidance_batch=3))  # a hint is checked like a choice


class _Hinted(OnnxRuntimeBackend):
    """A backend whose plan says guidance batch 2, counting the UNet's calls and their batch sizes."""

    def __init__(self, *a, **k) -> None:
        super().__init__(*a, **k)
        self.unet_batches: list[int] = []

    def hints(self) -> Hints:
        return Hints(guidance_batch=2)

    def open(self, component: str):
        runner = super().open(component)
        outer = self

        class Counting:
            io = runner.io

            def run(self, inputs):
                if component == "unet":
                    outer.unet_batches.append(inputs["latents"].shape[0])
                return runner.run(inputs)

        Counting.component = component  # type: ignore[attr-defined]
        return Counting()


def test_pipeline_tells_the_hint_from_an_explicit_two(tiny_bundle: Path) -> None:
    m = load_manifest(tiny_bundle)
    backend = _Hinted(m, "cpu")
    pipe = Pipeline(m, backend, Tokenizer.from_file(tiny_bundle / "tokenizer.json"))
    video = pipe(PROMPT, **FEW)
    assert backend.unet_batches == [1, 1]  # one unguided batch-1 pass per step despite the hint of 2
    assert video.options.guidance_batch == 1 and video.frames.shape[0] == 2
    backend.unet_batches.clear()
    with pytest.raises(UsageError, match="leave --guidance-batch unset"):
        pipe(PROMPT, guidance_batch=2, **FEW)
    assert backend.unet_batches == []  # refused before any UNet call


def test_cli_guidance_batch_2_with_a_few_step_sampler(tiny_bundle: Path, tmp_path: Path) -> None:
    from t2vrt.cli import cli

    out = tmp_path / "v.gif"
    args = [
        "generate",
        PROMPT,
        "--bundle",
        str(tiny_bundle),
        "-o",
        str(out),
        "--frames",
        "2",
        "--steps",
        "2",
        "--scheduler",
        "lcm",
        "--guidance",
        "1",
        "--negative",
        "",
        "-q",
    ]
    bad = CliRunner().invoke(cli, [*args, "--guidance-batch", "2"])
    assert bad.exit_code == 2, bad.output
    said = [ln for ln in bad.output.splitlines() if "guidance batch" in ln]  # (stderr's first line names the backend)
    assert len(said) == 1 and "does not apply to the lcm sampler" in said[0] and "Traceback" not in bad.output
    assert not out.exists() and list(tmp_path.iterdir()) == []
    ok = CliRunner().invoke(cli, [*args, "--guidance-batch", "1"])
    assert ok.exit_code == 0, ok.output
    assert out.stat().st_size > 0
