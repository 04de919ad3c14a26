"""`t2vrt bench` on the tiny bundle (a smoke test: every figure present and sane, no timing assertions), and the
harness pieces it rests on: statistics, the alternating schedule, the FLOP count, the memory sampler."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from t2vrt.benchmark.harness import alternate, percentile, summarize
from t2vrt.benchmark.memory import MemorySampler
from t2vrt.benchmark.run import FIGURES, missing_figures

STAT_KEYS = {"n", "mean", "p50", "p95", "min", "max", "stdev"}


def test_summarize_matches_numpy_percentiles() -> None:
    vals = [0.5, 0.1, 0.9, 0.3, 0.7, 0.2, 5.0]
    s = summarize(vals)
    assert s.n == 7 and s.min == 0.1 and s.max == 5.0
    assert s.p50 == pytest.approx(np.percentile(vals, 50))
    assert s.p95 == pytest.approx(np.percentile(vals, 95))
    assert s.mean == pytest.approx(np.mean(vals))
    assert percentile([3.0], 95) == 3.0
    with pytest.raises(ValueError):
        summarize([])


def test_alternate_flips_order_and_discards_warmup() -> None:
    calls: list[str] = []

    def make(name: str, value: float):
        def run() -> dict:
            calls.append(name)
            return {"t": value, "steps": [value, value]}

        return run

    out = alternate({"a": make("a", 1.0), "b": make("b", 2.0)}, warmup=1, repeat=3)
    assert calls == ["a", "b", "a", "b", "b", "a", "a", "b"]  # warm-ups, then A B / B A / A B
    assert out["a"]["t"] == [1.0, 1.0, 1.0] and out["b"]["steps"] == [2.0] * 6
    with pytest.raises(ValueError):
        alternate({"a": make("a", 1.0)}, repeat=0)


def test_a_record_never_replaces_a_file_or_its_siblings(tmp_path: Path) -> None:
    from t2vrt.benchmark.report import free_name

    base = tmp_path / "bench-ms-1.7b-onnxruntime-cpu-20261126T000000Z.json"  # a dotted model name
    assert free_name(base) == base
    base.with_suffix(".md").write_text("a user's notes")  # only the markdown sibling is in the way
    second = free_name(base)
    assert second.name == "bench-ms-1.7b-onnxruntime-cpu-20261126T000000Z-2.json"
    second.with_suffix(".png").write_bytes(b"")
    assert free_name(base).name.endswith("-3.json")


def test_memory_sampler_sees_an_allocation() -> None:
    with MemorySampler(interval=0.005) as m:
        block = np.ones(64 * 2**20 // 8)  # 64 MiB, touched
        block += 1
    assert m.peaks is not None
    grew = m.peaks.host_rss_peak - m.peaks.host_rss_start
    print(f"RSS grew {grew / 2**20:.1f} MiB while 64 MiB was allocated ({m.peaks.samples} samples)")
    assert grew > 48 * 2**20
    assert m.peaks.device_used_peak is None and m.peaks.device_source == "none"
    del block


def test_onnx_flops_match_torch_flop_counter(tmp_path: Path, tiny_models) -> None:
    """The graph count (MatMul/Gemm/Conv) against torch's FlopCounterMode on the same tiny UNet and shapes."""
    torch = pytest.importorskip("torch")
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.utils.flop_counter import FlopCounterMode

    from t2vrt.benchmark.flops import onnx_flops
    from t2vrt.components import COMPONENTS
    from t2vrt.export.bundle import EngineIO
    from t2vrt.export.numerics import sample_inputs

    cfg, models = tiny_models
    spec = COMPONENTS["unet"].io(cfg)
    dims = {"batch": 2, "frames": 3, "latent_height": 8, "latent_width": 8}
    inputs = sample_inputs(spec, dims)
    path = tmp_path / "unet.onnx"
    args = tuple(torch.from_numpy(v) for v in inputs.values())
    with torch.no_grad():
        torch.onnx.export(
            EngineIO(models["unet"], torch.float32),
            args,
            str(path),
            input_names=spec.input_names,
            output_names=spec.output_names,
            dynamic_axes=spec.dynamic_axes(),
            opset_version=17,
            dynamo=False,
        )
        # the math backend: attention as two bmm, which the counter knows (the fused CPU kernel it may not)
        with FlopCounterMode(display=False) as fc, sdpa_kernel(SDPBackend.MATH):
            models["unet"](*args)
    g = onnx_flops(path, {k: v.shape for k, v in inputs.items()})
    ref = fc.get_total_flops()
    print(f"tiny UNet FLOPs: graph {g.total:,} ({g.by_op}), torch {ref:,}, ratio {g.total / ref:.4f}")
    assert not g.uncounted
    assert g.total == pytest.approx(ref, rel=0.02)


def _check_record(rec: dict, contenders: int) -> None:
    assert missing_figures(rec) == []
    for key in ("date", "machine", "versions", "bundle", "shapes", "settings", "contenders"):
        assert key in rec, key
    assert len(rec["bundle"]["manifest_sha256"]) == 64
    assert rec["shapes"]["frames"] == 2 and rec["shapes"]["steps"] == 2
    assert len(rec["contenders"]) == contenders
    for name, c in rec["contenders"].items():
        figs = c["figures"]
        for fig in FIGURES:
            assert set(figs[fig]) == STAT_KEYS, (name, fig)
            assert figs[fig]["mean"] > 0, (name, fig)
        assert figs["unet_step"]["n"] == 2 * rec["settings"]["repeat"]  # every step of every timed round
        assert figs["end_to_end"]["mean"] >= figs["denoise"]["mean"] + figs["decode"]["mean"] * 0.99
        assert figs["throughput"]["frames_per_s"] > 0 and figs["throughput"]["videos_per_min"] > 0
        assert c["memory"]["host_rss_peak_bytes"] > 0


def test_bench_cli_on_the_tiny_bundle(tiny_bundle: Path, tmp_path: Path) -> None:
    from t2vrt.cli import cli

    out = tmp_path / "results"
    args = [
        "bench",
        str(tiny_bundle),
        "--backend",
        "onnxruntime-cpu",
        "--frames",
        "2",
        "--steps",
        "2",
        "--warmup",
        "1",
        "--repeat",
        "1",
        "--out",
        str(out),
        "-q",
    ]
    res = CliRunner().invoke(cli, args)
    print(res.output)
    assert res.exit_code == 0, res.output
    assert "UNet step" in res.output and "torch-eager-cpu-fp32/t2vrt-onnxruntime-cpu" in res.output
    (jpath,) = out.glob("bench-tiny-onnxruntime-cpu-*.json")
    rec = json.loads(jpath.read_text())
    _check_record(rec, contenders=2)
    assert set(rec["speedup"]) == set(FIGURES)
    assert list(out.glob("*.png")), "the plot was not written"


def test_bench_subprocess_without_baseline(tiny_bundle: Path, tmp_path: Path) -> None:
    """As users run it, JSON only, no torch contender."""
    out = tmp_path / "r"
    cmd = [
        sys.executable,
        "-m",
        "t2vrt.cli",
        "bench",
        str(tiny_bundle),
        "--backend",
        "onnxruntime-cpu",
        "--baseline",
        "none",
        "--frames",
        "2",
        "--steps",
        "2",
        "--repeat",
        "1",
        "--out",
        str(out),
        "--no-plot",
        "-q",
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    (jpath,) = out.glob("*.json")
    rec = json.loads(jpath.read_text())
    _check_record(rec, contenders=1)
    assert "speedup" not in rec and not list(out.glob("*.png"))
    del rec["contenders"]["t2vrt-onnxruntime-cpu"]["figures"]["unet_step"]["p95"]
    assert missing_figures(rec) == ["t2vrt-onnxruntime-cpu.unet_step.p95"]  # the check can fail


@pytest.mark.parametrize(
    "args, message",
    [
        (["--warmup", "0"], "--warmup must be >= 1"),
        (["--repeat", "0"], "--repeat must be >= 1"),
        (["--frames", "0"], "frames must be an integer"),
    ],
)
def test_bench_rejects_bad_values(tiny_bundle: Path, tmp_path: Path, args: list[str], message: str) -> None:
    from t2vrt.cli import cli

    res = CliRunner().invoke(cli, ["bench", str(tiny_bundle), "--baseline", "none", "--out", str(tmp_path), *args])
    assert res.exit_code == 2 and message in res.output, res.output


def test_bench_on_a_missing_bundle_is_a_usage_error(tmp_path: Path) -> None:
    from t2vrt.cli import cli

    res = CliRunner().invoke(cli, ["bench", str(tmp_path / "nope"), "--out", str(tmp_path)])
    assert res.exit_code == 2 and "not a directory" in res.output


def test_bench_samplers_side_by_side(tiny_bundle: Path, tmp_path: Path) -> None:
    """--samplers ddim:3,lcm:2: one record, a column per sampler, UNet calls/passes counted at the backend."""
    from t2vrt.benchmark.compare import STAGES
    from t2vrt.cli import cli
    from t2vrt.manifest import load_manifest

    out = tmp_path / "cmp"
    args = [
        "bench",
        str(tiny_bundle),
        "--backend",
        "onnxruntime-cpu",
        "--samplers",
        "ddim:3,lcm:2",
        "--frames",
        "2",
        "--warmup-steps",
        "1",
        "--vae-chunk",
        "1",
        "--repeat",
        "1",
        "--out",
        str(out),
        "--no-plot",
        "-q",
    ]
    res = CliRunner().invoke(cli, args)
    print(res.output)
    assert res.exit_code == 0, res.output
    (jpath,) = out.glob("bench-tiny-onnxruntime-cpu-samplers-*.json")
    (mpath,) = out.glob("bench-tiny-onnxruntime-cpu-samplers-*.md")
    rec = json.loads(jpath.read_text())
    assert missing_figures(rec) == [] and rec["samplers"] == ["ddim:3", "lcm:2"]
    assert rec["shapes"]["vae_chunk"] == 1 and rec["settings"]["vae_chunk"] == 1
    assert "baseline" not in rec and set(rec["contenders"]) == {"ddim:3", "lcm:2"}
    g = load_manifest(tiny_bundle).defaults.guidance_scale
    assert g != 1.0  # the tiny bundle's DDIM is guided: two videos per step
    ddim, lcm = rec["contenders"]["ddim:3"], rec["contenders"]["lcm:2"]
    assert ddim["sampler"] == {
        "name": "ddim",
        "steps": 3,
        "guidance_scale": g,
        "guided": True,
        "guidance_batch": 2,
        "negative_prompt": ddim["sampler"]["negative_prompt"],
    }
    assert lcm["sampler"]["guided"] is False and lcm["sampler"]["guidance_scale"] == 1.0
    assert ddim["unet"] == {"calls": 3, "passes": 6, "warmup_calls": 1}
    assert lcm["unet"] == {"calls": 2, "passes": 2, "warmup_calls": 1}
    for c, steps in ((ddim, 3), (lcm, 2)):
        figs = c["figures"]
        assert figs["unet_step"]["n"] == steps and len(c["samples"]["unet_step"]) == steps
        assert figs["denoise"]["mean"] == pytest.approx(sum(c["samples"]["unet_step"]))
        assert figs["end_to_end"]["mean"] >= sum(figs[k]["mean"] for k in STAGES) * 0.99
        assert c["memory"]["host_rss_peak_bytes"] > 0 and c["memory"]["warmup_steps"] == 1
        d = c["dominant_stage"]
        assert d["stage"] in STAGES and d["share"] == max(d["shares"].values()) and 0 < sum(d["shares"].values()) <= 1.0
    assert rec["ratios"]["ddim:3"]["end_to_end"] == pytest.approx(1.0)
    text = mpath.read_text()
    assert "| figure | ddim:3 | lcm:2 |" in text and "| UNet calls / passes | 3 / 6 | 2 / 2 |" in text
    assert "dominant stage" in res.output and "3 / 6" in res.output
    from t2vrt.benchmark.run import write_outputs

    rec["bundle"]["model"] = "ms-1.7b"  # a dot in the model name must not cut the file name short
    paths = write_outputs(rec, tmp_path / "named", plot=False)
    stamp = rec["date"].replace(":", "").replace("-", "")
    assert sorted(p.name for p in paths.values()) == [
        f"bench-ms-1.7b-onnxruntime-cpu-samplers-{stamp}.json",
        f"bench-ms-1.7b-onnxruntime-cpu-samplers-{stamp}.md",
    ]


@pytest.mark.parametrize(
    "args, message",
    [
        (["--samplers", "ddim:50,lcm:4", "--baseline", "torch"], "runs no PyTorch baseline"),
        (["--samplers", "euler:4"], "unknown sampler 'euler'"),
        (["--samplers", "lcm:four"], "STEPS is an integer"),
        (["--samplers", "lcm:4,lcm:4"], "lcm:4 given twice"),
        (["--samplers", "lcm:4", "--steps", "4"], "--steps does not go with --samplers"),
        (["--warmup-steps", "1"], "goes with --samplers"),
        (["--samplers", "lcm:9", "--frames", "2"], "--samplers lcm:9: steps must be an integer in 1..8"),
        (["--samplers", "lcm:4:7.5", "--frames", "2"], "takes no guidance 7.5"),
    ],
)
def test_bench_samplers_bad_values(tiny_bundle: Path, tmp_path: Path, args: list[str], message: str) -> None:
    from t2vrt.cli import cli

    out = tmp_path / "r"
    res = CliRunner().invoke(cli, ["bench", str(tiny_bundle), "--backend", "onnxruntime-cpu", "--out", str(out), *args])
    assert res.exit_code == 2 and message in res.output, res.output
    assert not out.exists()
