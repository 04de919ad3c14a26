"""The TensorRT backend (and its availability checks) on a CPU, against the faithful fakes in tests/fakes/ (a fake
`tensorrt` and a fake `cuda.bindings.runtime` that fail the way the real ones do: see their docstrings for the sources).

Nothing of t2vrt is monkeypatched: `build_all` runs the real `build_engine` and `measure` against the fake TensorRT,
the backend runs its engines (each the component's fp32 graph in ONNX Runtime, on bytes kept in fake device memory),
and frames are compared with ONNX Runtime's. Each test names the TensorRT / CUDA semantics it holds the code to.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import pytest
from fakes.cuda_runtime import GiB, MiB, cudaError_t
from trt_helpers import (
    GPU_NAME,
    REQ,
    STEPS,
    TRT_VERSION,
    Env,
    backend,
    build_engines,
    closed_clean,
    generate,
    make,
    ort_frames,
    unet_inputs,
)

from t2vrt.engine import build, store
from t2vrt.errors import T2VError, UsageError

# -- availability, targets, probing ------------------------------------------------------------------------------


def test_available_names_the_problem(env: Env) -> None:
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


def test_plan_is_keyed_by_card_memory_not_only_its_name(env: Env) -> None:
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
def test_gpu_probe_names_the_real_cuda_error(env: Env, driver: str, devices: int, want: str) -> None:
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


def test_null_tensorrt_factory_is_one_line(env: Env) -> None:
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


def test_static_resident_matches_onnxruntime_with_cuda_graph(env: Env) -> None:
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


def test_load_run_free_streaming_never_captures(env: Env) -> None:
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


def test_streaming_budget_counts_streamable_bytes_only(env: Env) -> None:
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


def test_refused_streaming_budget_is_an_error(env: Env) -> None:
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


def test_block_is_at_least_device_memory_size_v2(env: Env, sessions: dict[str, Any]) -> None:
    """set_device_memory needs size >= device_memory_size_v2, whatever update_device_memory_size_for_shapes says for
    smaller shapes (a dynamic engine run at 1 frame first)."""
    build_engines(env, make(env.bundle, req=dataclasses.replace(REQ, dynamic=True)))
    b = backend(env)
    unet = b.open("unet")
    small = unet_inputs(b, np.random.default_rng(0), batch=2, frames=1)
    assert np.allclose(unet.run(small)["eps"], sessions["unet"].run(None, small)[0], atol=1e-5)
    assert b._block_size >= unet.engine.device_memory_size_v2
    b.close()


def test_device_memory_calls_follow_trtexec_order_once_per_shape(env: Env) -> None:
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


def test_capture_failure_falls_back_to_eager_for_good(env: Env, caplog: pytest.LogCaptureFixture) -> None:
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


def test_block_growth_drops_graphs(env: Env) -> None:
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


def test_batch1_on_batch2_engine_and_shapes_outside_the_engine(env: Env, sessions: dict[str, Any]) -> None:
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


def test_engine_tensor_names_are_checked_at_load(env: Env) -> None:
    env.fake.rename["unet"] = ("eps", "noise_pred")
    build_engines(env, make(env.bundle))
    b = backend(env)
    with pytest.raises(
        T2VError, match=r"the unet engine's tensors .*noise_pred.* do not match the bundle's io spec .*eps"
    ):
        b.open("unet")
    b.close()


def test_unloadable_engine_names_the_file(env: Env) -> None:
    files = build_engines(env, make(env.bundle))
    files["unet"].write_bytes(b"\x00not an engine")
    b = backend(env)
    with pytest.raises(T2VError, match=r"TensorRT could not load .*unet.*\.plan.*t2vrt build"):
        b.open("unet")
    b.close()
