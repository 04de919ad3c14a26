"""The VRAM planner for few-step bundles: their sampler runs one unguided batch-1 UNet call per step, so the planner
never sizes a batch-2 UNet for them, and more frames fit the same card."""

from __future__ import annotations

import dataclasses

import pytest

from t2vrt.engine.facts import make_plan, preset_facts, request_from
from t2vrt.engine.plans import GiB, Plan, Request
from t2vrt.errors import UsageError


@pytest.fixture(scope="module")
def ms():
    return preset_facts("ms-1.7b")


@pytest.mark.parametrize("gib", [6, 12, 24])
def test_unguided_requests_plan_batch_1_unets(ms, gib: int) -> None:
    p = make_plan(ms, Request(16, 256, 256, unguided=True), gib * GiB)
    assert p.guidance_batch == 1 and p.engine("unet").dims_max["batch"] == 1
    assert any("unguided batch-1" in r for r in p.reasons)
    assert Plan.from_json(p.to_json()).request.unguided


def test_more_frames_fit_the_same_card_unguided(ms) -> None:
    """On 24 GiB the guided plan takes the batch-2 UNet; the few-step plan's UNet activations are about half."""
    guided = make_plan(ms, Request(24, 320, 576), 24 * GiB)
    few = make_plan(ms, Request(24, 320, 576, unguided=True), 24 * GiB)
    assert guided.guidance_batch == 2 and few.guidance_batch == 1
    assert few.engine("unet").activation_bytes < 0.6 * guided.engine("unet").activation_bytes

    def most_frames(unguided: bool) -> int:
        n = 16
        while True:
            try:
                make_plan(ms, Request(n + 16, 256, 256, unguided=unguided), 4 * GiB)
            except UsageError:
                return n
            n += 16
            if n > 1024:
                return n

    assert most_frames(True) >= most_frames(False)


def test_request_from_a_few_step_bundle_is_unguided(ms) -> None:
    turbo = dataclasses.replace(
        ms,
        model=dataclasses.replace(
            ms.model, defaults=dataclasses.replace(ms.model.defaults, sampler="t2v-turbo", num_inference_steps=4)
        ),
    )
    assert request_from(turbo, None, None, None, False).unguided
    assert not request_from(ms, None, None, None, False).unguided
