"""The VRAM planner on CPU: the full ms-1.7b sizes on a table of cards and shapes, and its `t2vrt plan` command."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from t2vrt.cli import cli
from t2vrt.engine.facts import make_plan, preset_facts
from t2vrt.engine.plans import GiB, MiB, Plan, Request, fmt, parse_bytes
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
    print(
        f"\n{gib} GiB {req.width}x{req.height}x{req.frames}: {p.residency}, guidance batch {p.guidance_batch}, "
        f"VAE chunk {p.vae_chunk}, workspace {p.workspace / MiB:.0f} MiB, UNet on card "
        f"{unet.resident_weight_bytes / GiB:.2f}/{unet.weight_bytes / GiB:.2f} GiB, peak {p.peak / GiB:.2f} of {p.budget / GiB:.2f} GiB"
    )
    assert p.peak <= p.budget < gib * GiB
    assert 256 * MiB <= p.workspace <= 2 * GiB
    # static shapes: min = opt = max for the UNet, and the profile comes from the io spec
    prof = unet.profile(ms.io["unet"])
    assert (
        prof["latents"][0] == prof["latents"][2] == (p.guidance_batch, 4, req.frames, req.height // 8, req.width // 8)
    )


def test_choices_follow_the_card(ms) -> None:
    big = make_plan(ms, SHAPES[1], 24 * GiB)
    assert (big.residency, big.guidance_batch, big.engine("unet").weight_streaming) == ("resident", 2, False)
    small = make_plan(ms, SHAPES[1], 4 * GiB)
    assert small.residency == "sequential" and small.engine("unet").weight_streaming  # 2.6 GiB of UNet weights
    assert make_plan(ms, SHAPES[0], 4 * GiB).residency == "sequential"
    # never a slower choice on a bigger card
    rank = {("resident", 2): 0, ("sequential", 2): 1, ("resident", 1): 2, ("sequential", 1): 3}
    for req in SHAPES:
        ranks = [
            rank[(p.residency, p.guidance_batch)] + 10 * p.engine("unet").weight_streaming
            for p in (make_plan(ms, req, g * GiB) for g in CARDS)
        ]
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

    from t2vrt.engine.sizes import Measured, dims_key

    req = Request(16, 256, 256)
    est = make_plan(ms, req, 8 * GiB)
    dims = est.engine("unet").dims_max
    measured = replace(ms, sizes=replace(ms.sizes, measured={"unet": {dims_key(dims): Measured(123 * MiB)}}))
    p = make_plan(measured, req, 8 * GiB)
    assert p.engine("unet").activation_bytes == 123 * MiB and p.engine("unet").activation_source == "measured"


def test_plan_round_trips_json(ms) -> None:
    from t2vrt.engine.plans import Plan

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
    r = CliRunner().invoke(
        cli, ["plan", "ms-1.7b", "--vram", "4GiB", "--frames", "16", "--height", "256", "--width", "256"]
    )
    print("\n" + r.output)
    assert r.exit_code == 0, r.output
    assert "16 frames at 256x256 on 4.00 GiB" in r.output and "stage peak" in r.output and "unet" in r.output
    r = CliRunner().invoke(cli, ["plan", "ms-1.7b", "--vram", "4GiB", "--json"])
    assert r.exit_code == 0 and json.loads(r.output)["vram"] == 4 * GiB


def test_plan_command_errors_are_one_line() -> None:
    r = CliRunner().invoke(
        cli, ["plan", "ms-1.7b", "--vram", "2GiB", "--frames", "64", "--height", "1024", "--width", "1024"]
    )
    assert r.exit_code == 2 and r.output.startswith("error: ") and r.output.count("\n") == 1
    r = CliRunner().invoke(cli, ["plan", "no-such-thing", "--vram", "4GiB"])
    assert r.exit_code == 2 and "neither a bundle directory nor a model preset" in r.output


def test_plan_on_an_exported_bundle_is_calibrated_by_onnx_liveness(tiny_bundle) -> None:
    from t2vrt.engine.facts import bundle_facts, request_from

    facts = bundle_facts(tiny_bundle)
    req = request_from(facts, None, None, None, False)
    facts = bundle_facts(tiny_bundle, calibrate=req)
    print(f"\ntiny bundle: liveness / analytic per engine {facts.sizes.calibration}")
    assert facts.sizes.source == "onnx" and set(facts.sizes.calibration) == {
        "text_encoder",
        "unet",
        "vae_decoder",
        "vae_encoder",
    }
    from t2vrt.engine.sizes import FP16_GRAPH_FACTOR

    for name, factor in FP16_GRAPH_FACTOR.items():  # the constants the preset (no export) plans use still hold
        assert abs(facts.sizes.calibration[name] / factor - 1) < 0.1, (name, facts.sizes.calibration[name])
    r = CliRunner().invoke(cli, ["plan", str(tiny_bundle), "--vram", "1GiB"])
    assert r.exit_code == 0 and "activations from onnx x 1.25 margin" in r.output, r.output


# -- memory semantics: the CUDA context, the workspace, the runtime, the builder, weight streaming -----------------


def _with_measured(ms, **per_engine):
    """`ms` with TensorRT figures for engines at given shapes: name=(dims, Measured) or name=(dims, Measured, streaming)."""
    from dataclasses import replace

    from t2vrt.engine.sizes import dims_key

    measured = {c: {dims_key(v[0], v[2] if len(v) > 2 else False): v[1]} for c, v in per_engine.items()}
    return replace(ms, sizes=replace(ms.sizes, measured=measured))


def test_free_memory_is_not_reduced_by_the_cuda_context_again(ms) -> None:
    """cudaMemGetInfo creates this process's context before it measures: its free memory already excludes it. A
    --vram figure is the card's size: the context comes out of that one only."""
    from t2vrt.engine.plans import CONTEXT_RESERVE

    req = SHAPES[0]
    card, free = make_plan(ms, req, 6 * GiB), make_plan(ms, req, 6 * GiB, free=True)
    assert card.budget == 6 * GiB - CONTEXT_RESERVE and free.budget == 6 * GiB
    assert not card.free and free.free and Plan.from_json(json.loads(json.dumps(free.to_json()))).free
    assert "CUDA context 320 MiB" in card.table() and "already out of it" in free.table()
    # 4.1 GiB free fits what a 4.1 GiB card does not: the context would have been counted twice
    v = int(4.1 * GiB)
    assert make_plan(ms, SHAPES[1], v).engine("unet").weight_streaming
    assert (
        make_plan(ms, SHAPES[1], v, free=True).engine("unet").resident_weight_bytes
        > make_plan(ms, SHAPES[1], v).engine("unet").resident_weight_bytes
    )


def test_card_memory_says_which_figure_it_is() -> None:
    from t2vrt.engine.facts import card_memory
    from t2vrt.runtime.cuda import GpuInfo

    gpu = GpuInfo("NVIDIA GeForce RTX 3060", "8.6", 12 * GiB, 11 * GiB)
    m = card_memory(None, gpu)
    assert (m.bytes, m.free) == (11 * GiB, True) and "12 GiB" in m.source
    m = card_memory("8GiB", gpu)
    assert (m.bytes, m.free) == (8 * GiB, False) and "CUDA context" in m.source
    m = card_memory("12GiB", GpuInfo("NVIDIA GeForce RTX 3060", "8.6", 12 * GiB, 9 * GiB))  # a desktop holds 3 GiB
    assert (m.bytes, m.free) == (9 * GiB, True) and "more than the 9.00 GiB free" in m.source


def test_workspace_is_counted_once(ms) -> None:
    """TensorRT's measured device_memory_size_v2 already holds the tactics' scratch (bounded by the workspace): the
    planner adds the workspace to an estimate, never on top of a measured figure."""
    from t2vrt.engine.plans import RUNTIME_RESERVE
    from t2vrt.engine.sizes import Measured

    req = SHAPES[0]
    est = make_plan(ms, req, 4 * GiB)
    assert est.residency == "sequential"
    unet = est.engine("unet")
    stage = est.stage_bytes()["unet"]
    assert stage == unet.resident_weight_bytes + unet.io_bytes + unet.activation_bytes + est.workspace + RUNTIME_RESERVE
    m = _with_measured(ms, unet=(unet.dims_max, Measured(unet.activation_bytes)))
    p = make_plan(m, req, 4 * GiB)
    u = p.engine("unet")
    assert (
        u.measured
        and p.stage_bytes()["unet"] == u.resident_weight_bytes + u.io_bytes + u.activation_bytes + RUNTIME_RESERVE
    )
    assert "measured" in p.table().splitlines()[2]  # the workspace column says it is inside the measured figure
    # a measured UNet that takes all the card except the runtime reserve still fits: no workspace on top of it
    room = p.budget - (u.resident_weight_bytes + u.io_bytes + RUNTIME_RESERVE)
    tight = make_plan(_with_measured(ms, unet=(unet.dims_max, Measured(room))), req, 4 * GiB)
    assert tight.residency == "sequential" and tight.engine("unet").activation_bytes == room
    assert tight.peak == tight.budget


def test_resident_block_takes_the_larger_of_measured_and_estimate_plus_workspace(ms) -> None:
    from t2vrt.engine.plans import RUNTIME_RESERVE
    from t2vrt.engine.sizes import Measured

    req = SHAPES[0]
    est = make_plan(ms, req, 24 * GiB)
    vae = est.engine("vae_decoder")
    p = make_plan(_with_measured(ms, vae_decoder=(vae.dims_max, Measured(3 * GiB))), req, 24 * GiB)
    fixed = sum(e.resident_weight_bytes + e.io_bytes for e in p.engines) + RUNTIME_RESERVE
    biggest_estimate = max(e.activation_bytes for e in p.engines if not e.measured)
    assert p.residency == "resident" and p.peak == fixed + max(3 * GiB, biggest_estimate + p.workspace)


def test_streaming_budget_is_derived_by_the_planner(ms) -> None:
    """weight_streaming_budget_v2 counts streamable bytes only: the plan's budget is the resident bytes minus the
    weights that cannot stream, and a plan never keeps fewer bytes on the card than those."""
    from t2vrt.engine.plans import streaming_budget
    from t2vrt.engine.sizes import Measured

    req = SHAPES[1]
    p = make_plan(ms, req, 4 * GiB)
    unet = p.engine("unet")
    assert unet.weight_streaming and unet.stream_budget is None  # not built yet: TensorRT has not said what streams
    w = unet.weight_bytes
    streamable = w * 3 // 4
    m = _with_measured(ms, unet=(unet.dims_max, Measured(unet.activation_bytes, w, streamable), True))
    q = make_plan(m, req, 4 * GiB).engine("unet")
    assert q.weight_streaming and q.stream_budget == q.resident_weight_bytes - (w - streamable)
    assert 0 < q.stream_budget < streamable and q.to_json()["stream_budget"] == q.stream_budget
    assert streaming_budget(w, w, streamable) == streamable - 1 and streaming_budget(100, w, streamable) == 0
    # when the weights TensorRT cannot stream alone overfill the card, streaming is no way out
    fixed_too_big = _with_measured(ms, unet=(unet.dims_max, Measured(unet.activation_bytes, w, w // 10), True))
    with pytest.raises(UsageError, match=r"does not fit in 4\.00 GiB"):
        make_plan(fixed_too_big, req, 4 * GiB)


def test_plan_says_when_the_build_will_not_fit(ms) -> None:
    """TensorRT's builder holds all of an engine's weights, the tensors it times and its kernel library: on a 4 GiB
    card the streaming UNet runs but cannot be built, and the plan says so (and what would build) before building."""
    from t2vrt.engine.plans import BUILDER_RESERVE

    p = make_plan(ms, SHAPES[1], 4 * GiB)
    unet = p.engine("unet")
    assert p.build_peak == unet.weight_bytes + unet.activation_bytes + BUILDER_RESERVE > p.budget
    print("\n" + p.build_note)
    assert (
        p.build_note.startswith("build will not fit: ")
        and "unet" in p.build_note
        and "what builds in 4.00 GiB: " in p.build_note
    )
    frames = int(p.build_note.split("what builds in 4.00 GiB: ")[1].split()[0])
    assert 0 < frames < SHAPES[1].frames
    assert make_plan(ms, Request(frames, SHAPES[1].height, SHAPES[1].width), 4 * GiB).build_note == ""
    for gib in CARDS[1:]:  # a plan that runs without streaming builds
        q = make_plan(ms, SHAPES[1], gib * GiB)
        assert q.build_note == "" and q.build_peak <= q.budget
    r = CliRunner().invoke(
        cli, ["plan", "ms-1.7b", "--vram", "4GiB", "--frames", "24", "--height", "320", "--width", "576"]
    )
    assert r.exit_code == 0 and "build will not fit" in r.output


def test_with_measured_restates_the_plan_in_tensorrt_figures(ms) -> None:
    from t2vrt.engine.sizes import Measured

    p = make_plan(ms, SHAPES[1], 4 * GiB)
    unet = p.engine("unet")
    w, streamable, budget = unet.weight_bytes + 10 * MiB, unet.weight_bytes // 2, 300 * MiB
    real = p.with_measured(
        {
            "unet": Measured(unet.activation_bytes // 2, w, streamable, budget),
            "text_encoder": Measured(1 * MiB, 700 * MiB),
        }
    )
    u = real.engine("unet")
    assert u.measured and u.weight_bytes == w and u.resident_weight_bytes == w - streamable + budget
    assert u.stream_budget == budget  # what the backend sets is what the plan counts
    assert real.engine("text_encoder").resident_weight_bytes == 700 * MiB
    assert real.engine("vae_decoder") == p.engine("vae_decoder")
    assert real.overrun() is None
    worse = p.with_measured({"unet": Measured(3 * GiB, w, streamable, budget)})
    msg = worse.overrun()
    assert msg and "the unet stage needs" in msg and "does not fit the 3.69 GiB budget (card 4.00 GiB" in msg


def test_readme_table_is_the_planners(ms) -> None:
    """README's "What it chose for the full ms-1.7b" table, cell by cell, from the planner."""
    from pathlib import Path

    text = (Path(__file__).parents[1] / "README.md").read_text()
    table = text.split("What it chose for the full ms-1.7b")[1].split("\n\n")[1]
    rows = [line.strip("|").split("|") for line in table.splitlines()[2:]]
    assert [int(r[0].split()[0]) for r in rows] == list(CARDS)
    for row in rows:
        gib = int(row[0].split()[0])
        for req, cell in zip(SHAPES, row[1:], strict=True):
            assert cell.strip() == readme_cell(make_plan(ms, req, gib * GiB)), (gib, req)


def readme_cell(p) -> str:
    unet = p.engine("unet")
    where = "all resident" if p.residency == "resident" else "one at a time"
    out = f"{where}, batch {p.guidance_batch}, VAE chunk {p.vae_chunk}, workspace {fmt(p.workspace)}"
    if unet.weight_streaming:
        out += f", weight streaming ({fmt(unet.resident_weight_bytes)} of {fmt(unet.weight_bytes)} on the card)"
    if p.build_note:
        out += "; build does not fit"
    return out
