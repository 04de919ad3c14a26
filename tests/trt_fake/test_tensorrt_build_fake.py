"""`t2vrt build` and the engine builder on a CPU, against the faithful fakes (see test_tensorrt_backend_fake.py): the
real `build_all`, `build_engine` and `measure`, re-planning when TensorRT's figures exceed the plan, builder memory on
small cards, engine keys. Each test names the TensorRT semantics it holds the code to.
"""

from __future__ import annotations

import dataclasses
import json

import pytest
from fakes.cuda_runtime import GiB, MiB
from fakes.tensorrt import FakeHostMemory
from trt_helpers import (
    GPU_NAME,
    REQ,
    TRT_VERSION,
    Env,
    backend,
    build_engines,
    closed_clean,
    generate,
    make,
)

from t2vrt.engine import build, store
from t2vrt.engine.facts import bundle_facts, make_plan
from t2vrt.engine.plans import CONTEXT_RESERVE, RUNTIME_RESERVE, Plan
from t2vrt.errors import T2VError
from t2vrt.manifest import load_manifest

# -- building -----------------------------------------------------------------------------------------------------


def test_build_runs_the_real_builder_and_writes_without_a_host_copy(env: Env) -> None:
    """IHostMemory has the buffer protocol (and no len()): the engine is written from it, not from bytes(...)."""
    plan = make(env.bundle)
    files = build_engines(env, plan)
    assert [d["component"] for d in env.fake.builds] == ["text_encoder", "unet", "vae_decoder", "vae_encoder"]
    unet = env.fake.builds[1]
    assert unet["profile"]["latents"][2] == [2, 4, REQ.frames, REQ.height // 8, REQ.width // 8]
    assert unet["workspace"] == plan.workspace and not unet["weight_streaming"]
    assert FakeHostMemory.copies == 0
    assert json.loads(files["unet"].read_bytes())["component"] == "unet"


def test_engine_key_changes_when_only_the_weights_change(env: Env) -> None:
    """A re-export whose changes are all in model.onnx.data keeps model.onnx's sha256: the engine must still rebuild."""
    build_engines(env, make(env.bundle))
    manifest_path = env.bundle / "manifest.json"
    raw = json.loads(manifest_path.read_text())
    entry = raw["components"]["unet"]["files"]["fp16"]
    entry["key"] = "0" * len(entry.get("key") or "0" * 64)  # new weights, same graph file
    manifest_path.write_text(json.dumps(raw))
    before = len(env.fake.builds)
    files = build_engines(env, make(env.bundle))
    assert [d["component"] for d in env.fake.builds[before:]] == ["unet"]
    stale = [r for r in store.bundle_engine_summary(env.bundle) if r["stale"]]
    assert [r["component"] for r in stale] == ["unet"] and "older export" in stale[0]["stale"]
    assert files["unet"].is_file()


def test_build_fails_when_reality_exceeds_the_card(env: Env) -> None:
    """TensorRT's measured device memory + engine weights over the budget: fail at build, never at generate."""
    plan = make(env.bundle, vram=1 * GiB)
    env.fake.activation["unet"] = 900 * MiB  # the estimate said a few MiB
    with pytest.raises(T2VError, match=r"measured.*unet.*does not fit .*1\.00 GiB") as e:
        build_engines(env, plan)
    print("\n" + str(e.value))
    assert "\n" not in str(e.value)
    assert store.read_plan(env.bundle, env.target) is None  # nothing for generate to trust


def test_build_replans_when_reality_exceeds_the_budget(env: Env) -> None:
    """TensorRT's figures over the budget: re-plan with them (here: one engine at a time instead of all resident) and
    build that, within `build`; plan.json then holds the plan in TensorRT's figures, within its budget."""
    facts = bundle_facts(env.bundle)
    first = make_plan(facts, REQ, 1 * GiB)
    assert first.residency == "resident" and first.budget == 1 * GiB - CONTEXT_RESERVE
    env.fake.weights["text_encoder"] = 300 * MiB  # on the card far more than the ONNX files said
    env.fake.activation["unet"] = 300 * MiB
    said: list[str] = []
    built = build.build(load_manifest(env.bundle), first, env.target, echo=said.append, facts=facts)
    p = built.plan
    print("\n" + "\n".join(said) + "\n" + p.table())
    assert any(line.startswith("re-planning (the engines as built do not fit the card") for line in said)
    assert p.residency == "sequential" and p.peak <= p.budget and p.engine("unet").measured
    assert p.engine("text_encoder").weight_bytes >= 300 * MiB
    record = store.read_plan(env.bundle, env.target)
    assert record is not None and Plan.from_json(record["plan"]) == p
    assert [d["component"] for d in env.fake.builds].count("unet") == 1  # same engines, another arrangement
    b = backend(env)
    assert not b.resident
    b.close()


def test_build_command_names_the_card_and_its_budget_and_replans(env: Env) -> None:
    from click.testing import CliRunner

    from t2vrt.cli import cli

    env.fake.weights["text_encoder"] = 300 * MiB
    env.fake.activation["unet"] = 300 * MiB
    r = CliRunner().invoke(cli, ["build", str(env.bundle), "--vram", "1GiB"])
    print("\n" + r.output)
    assert r.exit_code == 0, r.output
    assert (
        f"building for {GPU_NAME} (sm 8.9, 24 GiB) with TensorRT {TRT_VERSION}; --vram 1.00 GiB: the card's size"
        in r.output
    )
    assert (
        "re-planning (the engines as built do not fit the card" in r.output
        and "as built, in TensorRT's own figures:" in r.output
    )
    p = Plan.from_json((store.read_plan(env.bundle, env.target) or {})["plan"])
    assert p.residency == "sequential" and not p.free and p.budget == 1 * GiB - CONTEXT_RESERVE
    # without --vram: the card's free memory, measured (this process's CUDA context already out of it)
    r = CliRunner().invoke(cli, ["build", str(env.bundle)])
    assert r.exit_code == 0 and "free memory on NVIDIA Fake RTX 9000, 24 GiB" in r.output, r.output
    p = Plan.from_json((store.read_plan(env.bundle, env.target) or {})["plan"])
    assert p.free and p.budget == p.vram <= env.cuda.total - env.cuda.context_bytes


def test_build_fails_naming_what_fits_when_no_replan_fits(env: Env) -> None:
    facts = bundle_facts(env.bundle)
    env.fake.activation["unet"] = 800 * MiB  # more than a 1 GiB card has, whatever the arrangement
    with pytest.raises(T2VError) as e:
        build.build(
            load_manifest(env.bundle), make_plan(facts, REQ, 1 * GiB), env.target, echo=lambda s: None, facts=facts
        )
    msg = str(e.value)
    print("\n" + msg)
    assert "\n" not in msg and msg.startswith("the engines as built do not fit the card")
    assert "planned again with TensorRT's measurements" in msg and "does not fit in 1.00 GiB" in msg
    assert store.read_plan(env.bundle, env.target) is None


def test_memory_used_is_within_the_built_plan(env: Env) -> None:
    """The plan in plan.json is in TensorRT's figures: what the engines hold on the card after a generation is at most
    its peak, and the peak is no larger than that plus the runtime reserve (and the unused encoder)."""
    build_engines(env, make(env.bundle))
    record = store.read_plan(env.bundle, env.target)
    assert record is not None
    p = Plan.from_json(record["plan"])
    assert all(e.measured for e in p.engines) and p.residency == "resident"
    free0 = env.cuda.total - env.cuda.used()
    b = backend(env)
    generate(env.bundle, b)
    used = free0 - (env.cuda.total - env.cuda.used())
    enc = p.engine("vae_encoder")
    print(f"\nheld after a generation {used / MiB:.1f} MiB, plan peak {p.peak / MiB:.1f} MiB")
    assert used <= p.peak <= used + RUNTIME_RESERVE + enc.resident_weight_bytes + enc.io_bytes
    b.close()


def test_reused_streaming_engine_gets_this_plans_budget(env: Env) -> None:
    """The streaming budget is a run-time setting of the plan, not of the engine file: a later plan that keeps
    another share of the UNet on the card reuses the engine and records (and loads with) its own budget."""
    one = make(env.bundle, residency="sequential", g=1, stream=True)
    build_engines(env, one)
    u = one.engine("unet")
    two = dataclasses.replace(
        one,
        engines=tuple(
            dataclasses.replace(e, resident_weight_bytes=u.weight_bytes * 15 // 16) if e is u else e
            for e in one.engines
        ),
    )
    n = len(env.fake.builds)
    files = build_engines(env, two)
    assert len(env.fake.builds) == n  # reused
    meta = store.read_json(files["unet"].with_suffix(".json"))
    assert meta is not None
    streamable = int(meta["streamable_weights"])
    want = build.stream_budget_for(two.engine("unet"), streamable)
    assert meta["weight_streaming_budget"] == want != build.stream_budget_for(u, streamable)
    record = store.read_plan(env.bundle, env.target)
    assert record is not None and Plan.from_json(record["plan"]).engine("unet").stream_budget == want
    b = backend(env)
    assert b.open("unet").engine.weight_streaming_budget_v2 == want
    b.close()


def test_builder_kernel_library_is_counted(env: Env) -> None:
    """A live Builder holds its kernel library on the card beside the weights and the tensors it times: a card with
    room for those but not the library is refused before anything is built."""
    env.cuda.total = 2 * GiB
    graph = load_manifest(env.bundle).components["unet"].file("fp16").path
    unet_weights = sum(f.stat().st_size for f in graph.parent.iterdir() if f.is_file())  # what the fake builder holds
    room = unet_weights + env.fake.activation["unet"] + 100 * MiB  # less than the library's 180 MiB on top
    env.cuda.others_used = env.cuda.total - env.cuda.context_bytes - room
    with pytest.raises(T2VError, match=r"building the unet engine needs about .* free on the card"):
        build_engines(env, make(env.bundle, vram=4 * GiB))
    assert env.fake.builds == []  # checked for every engine before the first build


def test_builder_memory_is_checked_before_building_on_a_small_card(env: Env) -> None:
    """The builder holds an engine's weights on the card while it times tactics: say so instead of TensorRT's OOM."""
    env.cuda.total = 1 * GiB
    env.cuda.others_used = 1 * GiB - env.cuda.context_bytes - 8 * MiB  # 8 MiB free: the tiny UNet needs more
    with pytest.raises(T2VError, match=r"building the unet engine needs about .* free on the card .*only 8 MiB"):
        build_engines(env, make(env.bundle, vram=4 * GiB))
    assert "unet" not in [d["component"] for d in env.fake.builds]


def test_load_rechecks_free_memory(env: Env) -> None:
    build_engines(env, make(env.bundle))
    env.cuda.others_used = env.cuda.total - env.cuda.context_bytes - 1 * MiB  # another program took the card
    with pytest.raises(T2VError, match=r"the TensorRT plan needs .* on the card but only .* is free"):
        backend(env)
    closed_clean(env)
