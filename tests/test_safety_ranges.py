"""CLI ranges: every out-of-range value is one line before work starts (plan sizes and VRAM, sampler steps)."""

from __future__ import annotations

import re

import pytest
from click.testing import CliRunner

from t2vrt.cli import cli
from t2vrt.runtime import samplers


@pytest.mark.parametrize(
    "args, message",
    [
        (["--vram", "1GiB", "--frames", "0"], "--frames 0: must be positive"),
        (["--vram", "1GiB", "--height", "0"], "--height 0: must be positive"),
        # The planner's reserves (issue 10): the CUDA context off a --vram card size, TensorRT's runtime, a workspace.
        (["--vram", "100MiB"], "--vram 100 MiB is below the 320 MiB CUDA context"),
        (["--vram", "0.5GiB"], "give at least 704 MiB"),
        # Nothing fits: answered by bisection (this used to walk 256 MiB at a time to 16 TiB for a small UNet).
        (["--vram", "800MiB", "--frames", "100000"], "what fits in 800 MiB: [0-9]+ frames at 64x64"),
    ],
)
def test_plan_ranges(args: list[str], message: str) -> None:
    r = CliRunner().invoke(cli, ["plan", "tiny", "--no-calibrate", *args])
    assert r.exit_code == 2, r.output
    lines = r.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and re.search(message, lines[0]), lines


@pytest.mark.parametrize("name", list(samplers.SAMPLERS))
@pytest.mark.parametrize("T", [2, 7, 1000])
def test_every_advertised_step_count_runs_and_no_other(name: str, T: int) -> None:
    s = samplers.SAMPLERS[name]
    if s.max_steps is not None and T < 1000:
        pytest.skip(f"{name} is defined on a full training schedule only")
    lo, hi = s.steps_range(T)
    for n in range(lo, hi + 1):
        ts = s.timesteps(T, n)
        assert len(ts) == n and len(set(ts.tolist())) == n and 0 <= ts.min() and ts.max() < T
    assert hi == (T - 1 if s.max_steps is None else min(s.max_steps, T - 1))
