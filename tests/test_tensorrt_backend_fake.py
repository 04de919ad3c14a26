"""The TensorRT build and backend on a CPU, against the faithful fakes in tests/fakes/ (a fake `tensorrt` and a fake
`cuda.bindings.runtime` that fail the way the real ones do: see their docstrings for the sources).

Nothing of t2vrt is monkeypatched: `build_all` runs the real `build_engine` and `measure` against the fake TensorRT,
the backend runs its engines (each the component's fp32 graph in ONNX Runtime, on bytes kept in fake device memory),
and frames are compared with ONNX Runtime's. Each test names the TensorRT / CUDA semantics it holds the code to.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fakes.cuda_runtime import FakeCudaRuntime, GiB, MiB, cudaError_t, install
from fakes.tensorrt import FakeHostMemory, FakeTensorRT

from t2vrt.engine import build, store
from t2vrt.engine.facts import bundle_facts, make_plan
from t2vrt.engine.plans import CONTEXT_RESERVE, RUNTIME_RESERVE, Plan, Request
from t2vrt.errors import T2VError, UsageError
from t2vrt.manifest import load_manifest
from t2vrt.runtime.onnxruntime_backend import OnnxRuntimeBackend, make_session
from t2vrt.runtime.pipeline import Pipeline
from t2vrt.runtime.tokenizer import Tokenizer

TRT_VERSION = "10.13.0"
GPU_NAME = "NVIDIA Fake RTX 9000"
PROMPT = "a tiny green monster and a big flying UFO"
REQ = Request(frames=3, height=64, width=64)
STEPS = 3


@pytest.fixture(scope="module")
def sessions(tiny_bundle: Path) -> dict[str, Any]:
    m = load_manifest(tiny_bundle)
    return {c: make_session(m.components[c].file("fp32").path) for c in m.components}


@pytest.fixture
def env(tmp_path: Path, tiny_bundle: Path, sessions: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> Any:
    bundle = tmp_path / "tiny"
    shutil.copytree(tiny_bundle, bundle, ignore=shutil.ignore_patterns("engines"))
    cuda = FakeCudaRuntime(name=GPU_NAME, total=24 * GiB)
    fake = FakeTensorRT(cuda, sessions, TRT_VERSION)
    install(monkeypatch, cuda)
    monkeypatch.setitem(sys.modules, "tensorrt", fake.module)
    FakeHostMemory.copies = 0
    return _Env(bundle, cuda, fake)


@dataclasses.dataclass
class _Env:
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


def build_engines(env: _Env, plan: Plan, target: store.Target | None = None) -> dict[str, Path]:
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


def backend(env: _Env, **kw: Any) -> Any:
    from t2vrt.runtime.tensorrt_backend import TensorRTBackend

    return TensorRTBackend(env.bundle, **kw)


def unet_inputs(b: Any, rng: np.random.Generator, batch: int, frames: int = REQ.frames) -> dict[str, np.ndarray]:
    spec = {t.name: t for t in b.manifest.components["unet"].io.inputs}
    dims = {"batch": batch, "frames": frames, "latent_height": REQ.height // 8, "latent_width": REQ.width // 8}
    out = {n: rng.standard_normal(t.resolve(dims)).astype(np.float32) for n, t in spec.items()}
    out["timestep"] = np.full((batch,), 500.0, np.float32)
    return out


def closed_clean(env: _Env) -> None:
    """After close: nothing of ours on the device (engine weights included), no graphs, no streams, no bad frees."""
    import gc

    gc.collect()
    assert env.cuda.mem == {}, {p: env.cuda.owner.get(p) for p in env.cuda.mem}
    assert env.cuda.execs == {} and env.cuda.graphs == {} and env.cuda.streams == {}
    assert env.cuda.calls["bad_free"] == 0


# -- availability, targets, probing ------------------------------------------------------------------------------


def test_available_names_the_problem(env: _Env) -> None:
    from t2vrt.runtime.tensorrt_backend import why_tensorrt_unavailable

    bundle = env.bundle
    none = why_tensorrt_unavailable(bundle)
    assert (
        none
        and f"no TensorRT engines in {bundle} for {GPU_NAME} (sm 8.9, 24 GiB)" in none
        and f"`t2vrt build {bundle}`" in none
    )
    with pytest.raises(T2VError, match="no TensorRT engines"):
        backend(env)
    other = store.Target("NVIDIA A100-SXM4-80GB", "8.0", TRT_VERSION, 80)
    build_engines(env, make(bundle), other)
    msg = why_tensorrt_unavailable(bundle)
    assert msg and "built for NVIDIA A100-SXM4-80GB (sm 8.0, 80 GiB) with TensorRT 10.13.0" in msg and "\n" not in msg
    files = build_engines(env, make(bundle))
    assert why_tensorrt_unavailable(bundle) is None
    files["vae_decoder"].unlink()
    assert "incomplete" in (why_tensorrt_unavailable(bundle) or "")


def test_plan_is_keyed_by_card_memory_not_only_its_name(env: _Env) -> None:
    """RTX 3060 8 GB and 12 GB share a name: a plan made for one must not be read on the other."""
    from t2vrt.runtime.tensorrt_backend import why_tensorrt_unavailable

    env.cuda.total = 12 * GiB
    build_engines(env, make(env.bundle))
    assert why_tensorrt_unavailable(env.bundle) is None
    env.cuda.total = 8 * GiB
    msg = why_tensorrt_unavailable(env.bundle)
    assert msg and "(sm 8.9, 8 GiB)" in msg and "12 GiB" in msg, msg


@pytest.mark.parametrize(
    "driver,devices,want",
    [
        (
            "old",
            1,
            "cudaErrorInsufficientDriver: cuda-python uses the CUDA 13.0 runtime, which needs an NVIDIA driver R580 "
            "or newer, and the installed driver supports CUDA 12.4",
        ),
        ("none", 1, "no NVIDIA driver is loaded"),
        ("ok", 0, "no CUDA device is visible"),
    ],
)
def test_gpu_probe_names_the_real_cuda_error(env: _Env, driver: str, devices: int, want: str) -> None:
    from t2vrt.engine.device import detect_gpu, gpu_problem
    from t2vrt.runtime.tensorrt_backend import why_tensorrt_unavailable

    env.cuda.driver, env.cuda.devices = driver, devices
    assert detect_gpu() is None
    assert want in (gpu_problem() or ""), gpu_problem()
    assert want in (why_tensorrt_unavailable(env.bundle) or "")
    with pytest.raises(T2VError, match=want.split(":")[0]):
        build.current_target()


def test_real_cuda_bindings_without_a_driver_say_so() -> None:
    """The installed cuda-python itself (no fake), on a machine without an NVIDIA driver."""
    rt = pytest.importorskip("cuda.bindings.runtime")
    err, _ = rt.cudaGetDeviceCount()
    if int(err) != 35:
        pytest.skip(f"this machine's cudaGetDeviceCount gives {err!r}, not cudaErrorInsufficientDriver")
    from t2vrt.engine.device import gpu_problem

    msg = gpu_problem() or ""
    print("\n" + msg)
    assert (
        msg.startswith("cudaErrorInsufficientDriver: cuda-python uses the CUDA ")
        and "no NVIDIA driver is loaded" in msg
    )


def test_null_tensorrt_factory_is_one_line(env: _Env) -> None:
    """trt.Runtime(logger) with a CUDA driver TensorRT cannot use: pybind raises TypeError on the null factory."""
    build_engines(env, make(env.bundle))
    env.fake.factory_fails = True
    with pytest.raises(T2VError, match=r"TensorRT 10\.13\.0 could not create its runtime .*driver") as e:
        backend(env)
    assert "\n" not in str(e.value)
    with pytest.raises(T2VError, match="could not create its builder"):
        build_engines(env, make(env.bundle, g=1))  # a new UNet engine to build
    closed_clean(env)


# -- running ------------------------------------------------------------------------------------------------------


def test_static_resident_matches_onnxruntime_with_cuda_graph(env: _Env) -> None:
    bundle, cuda, fake = env.bundle, env.cuda, env.fake
    build_engines(env, make(bundle))
    b = backend(env)
    h = b.hints()
    assert (h.guidance_batch, h.vae_chunk) == (2, REQ.frames)
    frames = generate(bundle, b)
    ref = ort_frames(bundle, 2, REQ.frames)
    diff = np.abs(frames.astype(int) - ref.astype(int))
    print(f"\nTensorRT(fake) vs ONNX Runtime CPU: max |diff| {diff.max()} uint8 levels, mean {diff.mean():.4f}")
    assert frames.shape == ref.shape and diff.max() <= 1
    unet = [r for r in fake.runs if r["component"] == "unet"]
    assert [r["graph"] for r in unet] == [False] + [True] * (STEPS - 1)  # captured on call 2, replayed after
    assert cuda.calls["capture"] == 1 and cuda.calls["launch"] == STEPS - 1
    assert all(r["shapes"]["latents"][0] == 2 for r in unet)
    # 4 measured at build (the video-to-video encoder too) + the 3 text-to-video needs, loaded once
    assert set(b.runners) == {"text_encoder", "unet", "vae_decoder"} and len(fake.engines) == 3 and fake.loads == 7
    # one activation block for all three, at least every engine's device_memory_size_v2
    assert b._block_size == max(e.device_memory_size_v2 for e in fake.engines)
    n = len(fake.runs)
    again = generate(bundle, b)
    assert np.array_equal(again, frames) and fake.loads == 7  # nothing loaded again
    assert all(r["graph"] for r in fake.runs[n:] if r["component"] == "unet") and cuda.calls["capture"] == 1
    assert cuda.calls["int(handle)"] == 0  # get_cuda_native_handle, never int(stream)
    b.close()
    del b
    closed_clean(env)


def test_load_run_free_streaming_never_captures(env: _Env) -> None:
    """enqueueV3 on a streaming engine is synchronous and not capturable (NvInferRuntime.h): never capture it."""
    bundle, cuda, fake = env.bundle, env.cuda, env.fake
    plan = make(bundle, residency="sequential", g=1, chunk=2, stream=True)
    build_engines(env, plan)
    b = backend(env)
    assert (b.hints().guidance_batch, b.hints().vae_chunk) == (1, 2)
    frames = generate(bundle, b)
    diff = np.abs(frames.astype(int) - ort_frames(bundle, 1, 2).astype(int))
    print(f"\nload-run-free, streaming, guidance batch 1, VAE chunk 2: max |diff| vs ONNX Runtime {diff.max()} levels")
    assert diff.max() <= 1
    unet = [r for r in fake.runs if r["component"] == "unet"]
    assert len(unet) == 2 * STEPS and not any(r["graph"] for r in unet) and cuda.calls["capture"] == 0
    assert [r["shapes"]["latents"][0] for r in fake.runs if r["component"] == "vae_decoder"] == [2, 1]
    assert b.runners == {}
    b.close()
    del b
    closed_clean(env)


def test_streaming_budget_counts_streamable_bytes_only(env: _Env) -> None:
    """weight_streaming_budget_v2 counts streamable_weights_size only: the budget is the planned resident bytes minus
    the weights that cannot stream, and it is what the engine reads back at build and at load."""
    plan = make(env.bundle, residency="sequential", g=1, stream=True)
    files = build_engines(env, plan)
    meta = store.read_json(files["unet"].with_suffix(".json"))
    assert meta is not None
    unet = plan.engine("unet")
    streamable = int(unet.weight_bytes * env.fake.streamable_fraction)
    want = unet.resident_weight_bytes - (unet.weight_bytes - streamable)
    assert 0 < want < streamable
    assert meta["weight_streaming_budget"] == want and meta["streamable_weights"] == streamable
    assert meta["device_memory"] >= env.fake.activation["unet"] + env.fake.scratch  # scratch included
    b = backend(env)
    runner = b.open("unet")
    assert runner.engine.weight_streaming_budget_v2 == want and runner.engine.streaming
    b.close()


def test_refused_streaming_budget_is_an_error(env: _Env) -> None:
    """The budget property's setter drops TensorRT's bool: a refused budget must be read back and reported."""
    plan = make(env.bundle, residency="sequential", g=1, stream=True)
    build_engines(env, plan)
    env.fake.refuse_budget = True
    b = backend(env)
    with pytest.raises(T2VError, match=r"TensorRT refused the unet engine's weight streaming budget of \d+ bytes"):
        b.open("unet")
    b.close()
    with pytest.raises(T2VError, match="refused the unet engine's weight streaming budget"):
        build_engines(env, make(env.bundle, residency="sequential", g=2, stream=True))  # a new UNet engine


def test_block_is_at_least_device_memory_size_v2(env: _Env, sessions: dict[str, Any]) -> None:
    """set_device_memory needs size >= device_memory_size_v2, whatever update_device_memory_size_for_shapes says for
    smaller shapes (a dynamic engine run at 1 frame first)."""
    build_engines(env, make(env.bundle, req=dataclasses.replace(REQ, dynamic=True)))
    b = backend(env)
    unet = b.open("unet")
    small = unet_inputs(b, np.random.default_rng(0), batch=2, frames=1)
    assert np.allclose(unet.run(small)["eps"], sessions["unet"].run(None, small)[0], atol=1e-5)
    assert b._block_size >= unet.engine.device_memory_size_v2
    b.close()


def test_device_memory_calls_follow_trtexec_order_once_per_shape(env: _Env) -> None:
    """Shapes, then update_device_memory_size_for_shapes (only when they changed), then memory, then enqueue."""
    build_engines(env, make(env.bundle, req=dataclasses.replace(REQ, dynamic=True)))
    b = backend(env, cuda_graphs=False)
    unet = b.open("unet")
    for frames in (1, 1, 2, 2, 2):
        unet.run(unet_inputs(b, np.random.default_rng(frames), batch=2, frames=frames))
    calls = unet.context.calls
    assert calls.count("update") == 2 and calls.count("enqueue") == 5, calls
    first = calls.index("update")
    assert calls[:first] == ["shape"] * 3 and calls[first + 1] == "memory" and calls[first + 2] == "enqueue", calls
    b.close()


def test_capture_failure_falls_back_to_eager_for_good(env: _Env, caplog: pytest.LogCaptureFixture) -> None:
    """cudaGraphInstantiate fails: destroy what was made, say why once, run eagerly from then on."""
    build_engines(env, make(env.bundle))
    env.cuda.fail_instantiate = cudaError_t.cudaErrorMemoryAllocation
    b = backend(env)
    frames = generate(env.bundle, b)
    assert np.abs(frames.astype(int) - ort_frames(env.bundle, 2, REQ.frames).astype(int)).max() <= 1
    unet = [r for r in env.fake.runs if r["component"] == "unet"]
    assert len(unet) == STEPS and not any(r["graph"] for r in unet)
    assert env.cuda.calls["capture"] == 1 and env.cuda.graphs == {} and env.cuda.execs == {}
    warned = [r.getMessage() for r in caplog.records if "CUDA graph" in r.getMessage()]
    assert len(warned) == 1 and "cudaErrorMemoryAllocation" in warned[0], warned
    generate(env.bundle, b)
    assert env.cuda.calls["capture"] == 1  # never tried again
    b.close()
    del b
    closed_clean(env)


def test_block_growth_drops_graphs(env: _Env) -> None:
    """An engine needing more than the shared block: the block moves and captured graphs must not replay."""
    build_engines(env, make(env.bundle))
    b = backend(env)
    env.fake.activation["vae_decoder"] = 16 * MiB  # only the sidecars were measured smaller: reality is bigger now
    rng = np.random.default_rng(0)
    unet_in = unet_inputs(b, rng, batch=2)
    unet = b.open("unet")
    first = unet.run(unet_in)["eps"]
    unet.run(unet_in)
    assert env.cuda.calls["capture"] == 1 and len(env.cuda.execs) == 1
    old = b._block
    b.runners.pop("vae_decoder", None)
    vae = b.open("vae_decoder")
    vae.engine.desc["activation"] = 16 * MiB
    vae.run({"latents": rng.standard_normal((1, 4, 8, 8), np.float32)})
    assert b._block != old and b._block_size >= 16 * MiB and old not in env.cuda.mem and env.cuda.execs == {}
    out = unet.run(unet_in)["eps"]  # a stale graph would run on the freed block
    assert np.array_equal(out, first) and env.fake.runs[-1]["graph"] is False
    unet.run(unet_in)
    assert env.cuda.calls["capture"] == 2 and env.fake.runs[-1]["graph"] is True
    b.close()


def test_batch1_on_batch2_engine_and_shapes_outside_the_engine(env: _Env, sessions: dict[str, Any]) -> None:
    build_engines(env, make(env.bundle))
    b = backend(env, cuda_graphs=False)
    unet = b.open("unet")
    inputs = unet_inputs(b, np.random.default_rng(1), batch=1)
    out = unet.run(inputs)["eps"]
    ref = sessions["unet"].run(None, inputs)[0]
    assert out.shape == ref.shape and out.shape[0] == 1 and np.allclose(out, ref, atol=1e-5)
    assert env.fake.runs[-1]["shapes"]["latents"][0] == 2
    for batch, frames in ((3, REQ.frames), (2, REQ.frames + 1), (1, 1)):
        with pytest.raises(UsageError) as err:
            unet.run(unet_inputs(b, np.random.default_rng(2), batch=batch, frames=frames))
        assert "the unet engine was built for" in str(err.value) and f"`t2vrt build {env.bundle} --frames F" in str(
            err.value
        )
    assert len(env.fake.runs) == 1 and env.cuda.calls["capture"] == 0
    b.close()


def test_engine_tensor_names_are_checked_at_load(env: _Env) -> None:
    env.fake.rename["unet"] = ("eps", "noise_pred")
    build_engines(env, make(env.bundle))
    b = backend(env)
    with pytest.raises(
        T2VError, match=r"the unet engine's tensors .*noise_pred.* do not match the bundle's io spec .*eps"
    ):
        b.open("unet")
    b.close()


def test_unloadable_engine_names_the_file(env: _Env) -> None:
    files = build_engines(env, make(env.bundle))
    files["unet"].write_bytes(b"\x00not an engine")
    b = backend(env)
    with pytest.raises(T2VError, match=r"TensorRT could not load .*unet.*\.plan.*t2vrt build"):
        b.open("unet")
    b.close()


# -- building -----------------------------------------------------------------------------------------------------


def test_build_runs_the_real_builder_and_writes_without_a_host_copy(env: _Env) -> None:
    """IHostMemory has the buffer protocol (and no len()): the engine is written from it, not from bytes(...)."""
    plan = make(env.bundle)
    files = build_engines(env, plan)
    assert [d["component"] for d in env.fake.builds] == ["text_encoder", "unet", "vae_decoder", "vae_encoder"]
    unet = env.fake.builds[1]
    assert unet["profile"]["latents"][2] == [2, 4, REQ.frames, REQ.height // 8, REQ.width // 8]
    assert unet["workspace"] == plan.workspace and not unet["weight_streaming"]
    assert FakeHostMemory.copies == 0
    assert json.loads(files["unet"].read_bytes())["component"] == "unet"


def test_engine_key_changes_when_only_the_weights_change(env: _Env) -> None:
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


def test_build_fails_when_reality_exceeds_the_card(env: _Env) -> None:
    """TensorRT's measured device memory + engine weights over the budget: fail at build, never at generate."""
    plan = make(env.bundle, vram=1 * GiB)
    env.fake.activation["unet"] = 900 * MiB  # the estimate said a few MiB
    with pytest.raises(T2VError, match=r"measured.*unet.*does not fit .*1\.00 GiB") as e:
        build_engines(env, plan)
    print("\n" + str(e.value))
    assert "\n" not in str(e.value)
    assert store.read_plan(env.bundle, env.target) is None  # nothing for generate to trust


def test_build_replans_when_reality_exceeds_the_budget(env: _Env) -> None:
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


def test_build_command_names_the_card_and_its_budget_and_replans(env: _Env) -> None:
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


def test_build_fails_naming_what_fits_when_no_replan_fits(env: _Env) -> None:
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


def test_memory_used_is_within_the_built_plan(env: _Env) -> None:
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


def test_reused_streaming_engine_gets_this_plans_budget(env: _Env) -> None:
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


def test_builder_kernel_library_is_counted(env: _Env) -> None:
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


def test_builder_memory_is_checked_before_building_on_a_small_card(env: _Env) -> None:
    """The builder holds an engine's weights on the card while it times tactics: say so instead of TensorRT's OOM."""
    env.cuda.total = 1 * GiB
    env.cuda.others_used = 1 * GiB - env.cuda.context_bytes - 8 * MiB  # 8 MiB free: the tiny UNet needs more
    with pytest.raises(T2VError, match=r"building the unet engine needs about .* free on the card .*only 8 MiB"):
        build_engines(env, make(env.bundle, vram=4 * GiB))
    assert "unet" not in [d["component"] for d in env.fake.builds]


def test_load_rechecks_free_memory(env: _Env) -> None:
    build_engines(env, make(env.bundle))
    env.cuda.others_used = env.cuda.total - env.cuda.context_bytes - 1 * MiB  # another program took the card
    with pytest.raises(T2VError, match=r"the TensorRT plan needs .* on the card but only .* is free"):
        backend(env)
    closed_clean(env)
