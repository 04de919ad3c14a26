"""`t2vrt serve --ray` without a cluster: Ray stays out of the plain server, the options, the worker pool that runs
several jobs at once over one store, and the executor's retry-once rule against a fake deployment handle."""

from __future__ import annotations

import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from t2vrt.errors import T2VError, UsageError
from t2vrt.serve.files import StateDir
from t2vrt.serve.ids import new_id
from t2vrt.serve.pool import LiveJobs, WorkerPool
from t2vrt.serve.process import wait_for
from t2vrt.serve.ray_config import RayOptions, check_ray_options, models_per_replica, parse_replicas
from t2vrt.serve.store import JobStore


def test_plain_server_never_imports_ray() -> None:
    code = (
        "import sys, t2vrt.serve, t2vrt.serve.server, t2vrt.serve.api, t2vrt.serve.pool, "
        "t2vrt.serve.ray_config, t2vrt.serve.ray_cluster, t2vrt.commands.serve, t2vrt.cli; "
        "print(sorted(m for m in sys.modules if m == 'ray' or m.startswith('ray.')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_replicas_option() -> None:
    assert parse_replicas("2") == (2, None)
    assert parse_replicas("1:4") == (1, 4)
    assert parse_replicas("0-3") == (0, 3)
    for bad in ("0", "4:2", "0:0", "two", "1:"):
        with pytest.raises(UsageError, match="--replicas"):
            parse_replicas(bad)
    fixed = RayOptions(replicas=3)
    assert fixed.replica_count() == {"num_replicas": 3} and fixed.slots == 3
    auto = RayOptions(replicas=0, max_replicas=4).replica_count()["autoscaling_config"]
    assert (auto["min_replicas"], auto["max_replicas"], auto["initial_replicas"]) == (0, 4, 1)
    assert auto["target_ongoing_requests"] == 1.0
    assert RayOptions(replicas=0, max_replicas=4).slots == 4
    assert RayOptions(gpus_per_replica=0.5).actor_options() == {"num_gpus": 0.5, "num_cpus": 1.0}
    assert models_per_replica(RayOptions(), 3) == 3 and models_per_replica(RayOptions(models_per_replica=1), 3) == 1
    with pytest.raises(UsageError, match="--models-per-replica"):
        check_ray_options(RayOptions(models_per_replica=0))
    with pytest.raises(UsageError, match="--replica-gpus"):
        check_ray_options(RayOptions(gpus_per_replica=-1))


def test_ray_options_need_ray(tmp_path: Path) -> None:
    from t2vrt.cli import cli

    tiny_bundle = tmp_path  # refused before any bundle is read

    r = CliRunner().invoke(cli, ["serve", "--bundle", str(tiny_bundle), "--replicas", "2"])
    assert r.exit_code != 0 and "need --ray" in r.output
    r = CliRunner().invoke(cli, ["serve", "--bundle", str(tiny_bundle), "--ray", "auto", "--replicas", "3:1"])
    assert r.exit_code != 0 and "--replicas 3:1" in r.output and "Traceback" not in r.output


def test_no_cluster_at_the_address_is_one_line(tiny_bundle: Path, tmp_path: Path) -> None:
    _ray()
    from t2vrt.cli import cli
    from t2vrt.serve.ray_cluster import free_port

    port = free_port()  # nothing listens there
    r = CliRunner().invoke(
        cli,
        [
            "serve",
            "--bundle",
            str(tiny_bundle),
            "--state",
            str(tmp_path / "s"),
            "--port",
            "0",
            "--ray",
            f"127.0.0.1:{port}",
        ],
    )
    assert r.exit_code == 2, r.output
    assert f"--ray 127.0.0.1:{port}: no Ray cluster" in r.output and "(Connection refused)" in r.output
    assert "Traceback" not in r.output


class _GatedExecutor:
    """Each job blocks until the test releases it; records how many ran at once."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self.lock = threading.Lock()
        self.running: set[str] = set()
        self.most = 0
        self.ran: list[str] = []

    def run(self, job: dict[str, Any], out_dir: Path, on_step: Any) -> dict[str, Any]:
        with self.lock:
            self.running.add(job["id"])
            self.most = max(self.most, len(self.running))
            self.ran.append(job["id"])
        on_step(1, 2)
        self.release.wait(30)
        on_step(2, 2)
        (out_dir / "video.mp4").write_bytes(b"x")
        with self.lock:
            self.running.discard(job["id"])
        return {"frames": 1}

    def models(self) -> dict[str, Any]:
        return {}

    def validate(self, model: str, prompt: str, **given: Any) -> Any:
        raise NotImplementedError

    def close(self) -> None:
        pass


def test_pool_runs_one_job_per_worker_and_each_job_once(tmp_path: Path) -> None:
    state = StateDir(tmp_path / "state")
    store = JobStore(state.db_path)
    params = {"prompt": "p", "given": {}, "resolved": {"steps": 2}, "input": None}
    ids = [store.create(new_id(), "tiny", params, max_active=10).id for _ in range(5)]
    ex = _GatedExecutor()
    live = LiveJobs()
    pool = WorkerPool(2, store, state, ex, live, ttl=None)  # type: ignore[arg-type]
    pool.start()
    try:
        pool.notify()
        wait_for(lambda: len(ex.running) == 2, 10, what="two jobs running at once")
        running = live.running()
        assert sorted(running) == sorted(ex.running)  # each worker thread shows its own job
        assert all(live.get(j) is not None and live.get(j)["step"] == 1 for j in running)  # type: ignore[index]
        assert [store.get(j).status for j in ids].count("queued") == 3  # type: ignore[union-attr]
        ex.release.set()
        wait_for(
            lambda: all(store.get(j).status == "completed" for j in ids),
            20,  # type: ignore[union-attr]
            what="every job completed",
        )
    finally:
        ex.release.set()
        assert pool.drain(10)
        store.close()
    assert ex.most == 2
    assert sorted(ex.ran) == sorted(ids)  # every job ran exactly once
    assert live.running() == []


# --- the executor against a fake deployment handle ------------------------------------------------------------------


def _ray() -> Any:
    return pytest.importorskip("ray", reason="the ray extra is not installed")


class _Stream:
    def __init__(self, events: list[Any]) -> None:
        self.events, self.cancelled = events, False

    def __iter__(self) -> Any:
        for e in self.events:
            if isinstance(e, BaseException):
                raise e
            yield e

    def cancel(self) -> None:
        self.cancelled = True


class _Handle:
    """handle.options(stream=True, multiplexed_model_id=...).generate.remote(spec, data) -> the next scripted stream."""

    def __init__(self, scripts: list[list[Any]]) -> None:
        self.scripts, self.calls, self.streams = scripts, [], []  # type: ignore[var-annotated]
        self.generate = self

    def options(self, **kw: Any) -> _Handle:
        assert kw == {"stream": True, "multiplexed_model_id": "tiny"}
        return self

    def remote(self, spec: dict[str, Any], data: bytes | None) -> _Stream:
        self.calls.append((spec, data))
        s = _Stream(self.scripts[len(self.calls) - 1])
        self.streams.append(s)
        return s


def _ok(replica: str) -> list[Any]:
    return [
        {"event": "started", "replica": {"id": replica, "pid": 1}},
        {"event": "step", "step": 1, "steps": 1},
        {"event": "file", "name": "video.mp4", "data": b"mp4"},
        {"event": "done", "result": {"frames": 8}},
    ]


def _dies(replica: str) -> list[Any]:
    return [
        {"event": "started", "replica": {"id": replica, "pid": 1}},
        {"event": "step", "step": 1, "steps": 3},
        _ray().exceptions.ActorDiedError(),
    ]


def _executor(tiny_bundle: Path, scripts: list[list[Any]]) -> Any:
    _ray()
    from t2vrt.manifest import load_manifest
    from t2vrt.serve.ray_executor import RayExecutor

    started: list[tuple[str, str]] = []
    ex = RayExecutor(
        {"tiny": load_manifest(tiny_bundle)},
        _Handle(scripts),
        RayOptions(),
        on_start=lambda job, where: started.append((job, where["id"])),
    )
    return ex, started


JOB = {"id": "video_1", "model": "tiny", "prompt": "p", "given": {"steps": 3}, "input": None}


def test_executor_retries_a_lost_replica_once(tiny_bundle: Path, tmp_path: Path) -> None:
    ex, started = _executor(tiny_bundle, [_dies("r1"), _ok("r2")])
    (tmp_path / "video.mp4").write_bytes(b"half")
    steps: list[tuple[int, int]] = []
    result = ex.run(JOB, tmp_path, lambda d, t: steps.append((d, t)))
    assert result["replica"]["id"] == "r2"
    assert [x["id"] for x in result["replicas_lost"]] == ["r1"]
    assert "ActorDiedError" in result["replicas_lost"][0]["error"]
    assert started == [("video_1", "r1"), ("video_1", "r2")]
    assert (tmp_path / "video.mp4").read_bytes() == b"mp4"
    assert steps == [(1, 3), (1, 1)]


def test_executor_fails_after_two_lost_replicas(tiny_bundle: Path, tmp_path: Path) -> None:
    ex, _ = _executor(tiny_bundle, [_dies("r1"), _dies("r2"), _ok("r3")])
    with pytest.raises(T2VError, match=r"died 2 times.*replica r1 \(ActorDiedError.*replica r2 \(ActorDiedError"):
        ex.run(JOB, tmp_path, lambda d, t: None)
    assert len(ex._handle.calls) == 2


def test_executor_job_errors_are_not_retried(tiny_bundle: Path, tmp_path: Path) -> None:
    bad = [
        {"event": "started", "replica": {"id": "r1"}},
        {"event": "error", "code": "invalid_request", "message": "height must be a positive multiple of 8"},
    ]
    ex, _ = _executor(tiny_bundle, [bad, _ok("r2")])
    with pytest.raises(UsageError, match="height must be"):
        ex.run(JOB, tmp_path, lambda d, t: None)
    assert len(ex._handle.calls) == 1 and ex._handle.streams[0].cancelled


def test_executor_stop_cancels_the_request(tiny_bundle: Path, tmp_path: Path) -> None:
    ex, _ = _executor(tiny_bundle, [_ok("r1")])

    class Stop(Exception):
        pass

    def on_step(d: int, t: int) -> None:
        raise Stop()

    with pytest.raises(Stop):
        ex.run(JOB, tmp_path, on_step)
    assert ex._handle.streams[0].cancelled


def test_executor_refuses_odd_file_names(tiny_bundle: Path, tmp_path: Path) -> None:
    evil = [{"event": "started", "replica": {"id": "r1"}}, {"event": "file", "name": "../x.mp4", "data": b"x"}]
    ex, _ = _executor(tiny_bundle, [evil])
    with pytest.raises(T2VError, match="unexpected file"):
        ex.run(JOB, tmp_path, lambda d, t: None)
    assert not (tmp_path.parent / "x.mp4").exists()


def test_models_match_the_local_executor(tiny_bundle: Path) -> None:
    from t2vrt.serve.executor import LocalExecutor

    ex, _ = _executor(tiny_bundle, [])
    local = LocalExecutor.load({"tiny": tiny_bundle}, backend="onnxruntime-cpu")
    try:
        assert ex.models()["tiny"] == local.models()["tiny"]
        assert ex.validate("tiny", "a cat", steps=3) == local.validate("tiny", "a cat", steps=3)
    finally:
        local.close()


def test_replica_builds_engines_only_when_tensorrt_can_and_none_fit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _ray()
    import t2vrt.engine.build as build
    import t2vrt.runtime.tensorrt_backend as trt_backend
    from t2vrt.serve.ray_replica import build_engines_if_missing

    ran: list[list[str]] = []

    def run(cmd: list[str]) -> int:
        ran.append(cmd)
        return 0

    monkeypatch.setattr(build, "tensorrt_missing", lambda: "TensorRT is not installed")
    assert "no engine build (TensorRT is not installed)" == build_engines_if_missing(tmp_path, run)
    assert ran == []

    monkeypatch.setattr(build, "tensorrt_missing", lambda: None)
    monkeypatch.setattr(trt_backend, "why_tensorrt_unavailable", lambda b: None)
    assert build_engines_if_missing(tmp_path, run) == "engines for this GPU found" and ran == []

    monkeypatch.setattr(trt_backend, "why_tensorrt_unavailable", lambda b: "no TensorRT engines for RTX 4090")
    assert build_engines_if_missing(tmp_path, run) == "built engines (no TensorRT engines for RTX 4090)"
    assert ran[0][-3:] == ["t2vrt.cli", "build", str(tmp_path)]
    with pytest.raises(T2VError, match="building TensorRT engines for this GPU failed"):
        build_engines_if_missing(tmp_path, lambda cmd: 1)
