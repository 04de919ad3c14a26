"""The VRAM planner on CPU: the full ms-1.7b sizes on a table of cards and shapes, and its `t2vrt plan` command."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from t2vrt.cli import cli
from t2vrt.engine.facts import make_plan, preset_facts
from t2vrt.engine.planner import GiB, MiB, Request, parse_bytes
from t2vrt.errors import UsageError

CARDS = (4, 6, 8, 12, 16, 24)
SHAPES = (Request(16, 256, 256), Request(24, 320, 576))


@pytest.fixture(scope="module")
def ms():
    return preset_facts("ms-1.7b")


@pytest.mark.parametrize("gib", CARDS)
@pytest.mark.parametrize("req", SHAPES, ids=["256x256x16", "576x320x24"])
def test_every_card_gets_a_plan_within_its_budget(ms, gib: int, req: Request) -> None:
    p = make_plan(ms, req, gib * GiB)
    unet = p.engine("unet")
    print(f"\n{gib} GiB {req.width}x{req.height}x{req.frames}: {p.residency}, guidance batch {p.guidance_batch}, "
          f"VAE chunk {p.vae_chunk}, workspace {p.workspace / MiB:.0f} MiB, UNet on card "
          f"{unet.resident_weight_bytes / GiB:.2f}/{unet.weight_bytes / GiB:.2f} GiB, peak {p.peak / GiB:.2f} of {p.budget / GiB:.2f} GiB")  # fmt: skip
    assert p.peak <= p.budget < gib * GiB
    assert 256 * MiB <= p.workspace <= 2 * GiB
    # static shapes: min = opt = max for the UNet, and the profile comes from the io spec
    prof = unet.profile(ms.io["unet"])
    assert prof["latents"][0] == prof["latents"][2] == (p.guidance_batch, 4, req.frames, req.height // 8, req.width // 8)


def test_choices_follow_the_card(ms) -> None:
    big = make_plan(ms, SHAPES[1], 24 * GiB)
    assert (big.residency, big.guidance_batch, big.engine("unet").weight_streaming) == ("resident", 2, False)
    small = make_plan(ms, SHAPES[1], 4 * GiB)
    assert small.residency == "sequential" and small.engine("unet").weight_streaming  # 2.6 GiB of UNet weights
    assert make_plan(ms, SHAPES[0], 4 * GiB).residency == "sequential"
    # never a slower choice on a bigger card
    rank = {("resident", 2): 0, ("sequential", 2): 1, ("resident", 1): 2, ("sequential", 1): 3}
    for req in SHAPES:
        ranks = [rank[(p.residency, p.guidance_batch)] + 10 * p.engine("unet").weight_streaming
                 for p in (make_plan(ms, req, g * GiB) for g in CARDS)]  # fmt: skip
        assert ranks == sorted(ranks, reverse=True), ranks


def test_nothing_fits_says_what_would(ms) -> None:
    with pytest.raises(UsageError) as e:
        make_plan(ms, Request(64, 1024, 1024), 4 * GiB)
    msg = str(e.value)
    print("\n" + msg)
    assert "does not fit in 4.00 GiB" in msg and "needs about" in msg and "what fits in 4.00 GiB:" in msg
    # the suggestion it makes does fit
    size = msg.rsplit("frames at ", 1)[1].split()[0]
    w, h = map(int, size.split("x"))
    make_plan(ms, Request(64, h, w), 4 * GiB)


def test_dynamic_profile_is_a_range_planned_at_its_max(ms) -> None:
    p = make_plan(ms, Request(16, 256, 256, dynamic=True), 8 * GiB)
    lo, opt, hi = p.engine("unet").profile(ms.io["unet"])["latents"]
    assert lo == (p.guidance_batch, 4, 1, 8, 8) and opt == hi == (p.guidance_batch, 4, 16, 32, 32)
    static = make_plan(ms, Request(16, 256, 256), 8 * GiB)
    assert p.engine("unet").activation_bytes == static.engine("unet").activation_bytes


def test_measured_device_memory_replaces_the_estimate(ms) -> None:
    from dataclasses import replace

    from t2vrt.engine.sizes import dims_key

    req = Request(16, 256, 256)
    est = make_plan(ms, req, 8 * GiB)
    dims = est.engine("unet").dims_max
    measured = replace(ms, sizes=replace(ms.sizes, measured={"unet": {dims_key(dims): 123 * MiB}}))
    p = make_plan(measured, req, 8 * GiB)
    assert p.engine("unet").activation_bytes == 123 * MiB and p.engine("unet").activation_source == "measured"


def test_plan_round_trips_json(ms) -> None:
    from t2vrt.engine.planner import Plan

    p = make_plan(ms, SHAPES[1], 4 * GiB)
    assert Plan.from_json(json.loads(json.dumps(p.to_json()))) == p


def test_bad_requests_are_usage_errors(ms) -> None:
    with pytest.raises(UsageError, match="multiple of 64"):
        make_plan(ms, Request(16, 250, 256), 8 * GiB)
    for bad in ("six", "-1GiB", "0"):
        with pytest.raises(UsageError, match="--vram"):
            parse_bytes(bad)
    assert parse_bytes("6GiB") == parse_bytes("6") == 6 * GiB and parse_bytes("8GB") == 8 * 10**9
    assert parse_bytes("6144MiB") == 6 * GiB


def test_plan_command_prints_plan_and_table() -> None:
    r = CliRunner().invoke(cli, ["plan", "ms-1.7b", "--vram", "4GiB", "--frames", "16", "--height", "256", "--width", "256"])
    print("\n" + r.output)
    assert r.exit_code == 0, r.output
    assert "16 frames at 256x256 on 4.00 GiB" in r.output and "stage peak" in r.output and "unet" in r.output
    r = CliRunner().invoke(cli, ["plan", "ms-1.7b", "--vram", "4GiB", "--json"])
    assert r.exit_code == 0 and json.loads(r.output)["vram"] == 4 * GiB


def test_plan_command_errors_are_one_line() -> None:
    r = CliRunner().invoke(cli, ["plan", "ms-1.7b", "--vram", "2GiB", "--frames", "64", "--height", "1024", "--width", "1024"])
    assert r.exit_code == 2 and r.output.startswith("error: ") and r.output.count("\n") == 1
    r = CliRunner().invoke(cli, ["plan", "no-such-thing", "--vram", "4GiB"])
    assert r.exit_code == 2 and "neither a bundle directory nor a model preset" in r.output


def test_plan_on_an_exported_bundle_is_calibrated_by_onnx_liveness(tiny_bundle) -> None:
    from t2vrt.engine.facts import bundle_facts, request_from

    facts = bundle_facts(tiny_bundle)
    req = request_from(facts, None, None, None, False)
    facts = bundle_facts(tiny_bundle, calibrate=req)
    print(f"\ntiny bundle: liveness / analytic per engine {facts.sizes.calibration}")
    assert facts.sizes.source == "onnx" and set(facts.sizes.calibration) == {"text_encoder", "unet", "vae_decoder", "vae_encoder"}
    from t2vrt.engine.sizes import FP16_GRAPH_FACTOR

    for name, factor in FP16_GRAPH_FACTOR.items():  # the constants the preset (no export) plans use still hold
        assert abs(facts.sizes.calibration[name] / factor - 1) < 0.1, (name, facts.sizes.calibration[name])
    r = CliRunner().invoke(cli, ["plan", str(tiny_bundle), "--vram", "1GiB"])
    assert r.exit_code == 0 and "activations from onnx x 1.25 margin" in r.output, r.output
