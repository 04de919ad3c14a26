"""Fixtures for the serve tests: the real `t2vrt serve` process on a free loopback port, over the session's tiny
bundle, each with its own --state directory; every process started here is stopped (or killed) at teardown."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from t2vrt.serve.process import ServerProcess, wait_for
from t2vrt.serve.ray_cluster import LocalCluster

Factory = Callable[..., ServerProcess]


@pytest.fixture
def start_server(tiny_bundle: Path, tmp_path: Path) -> Iterator[Factory]:
    started: list[ServerProcess] = []

    def start(
        *extra: str, state: Path | None = None, bundles: list[str] | None = None, env: dict[str, str] | None = None
    ) -> ServerProcess:
        srv = ServerProcess(bundles or [f"tiny={tiny_bundle}"], state or tmp_path / "state", *extra, env=env)
        started.append(srv)
        return srv.start()

    yield start
    for srv in started:
        try:
            srv.stop(timeout=30)
        except Exception:
            srv.kill()


@pytest.fixture(scope="module")
def shared_server(tiny_bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """One server for the read-mostly API tests of a module."""
    srv = ServerProcess([f"tiny={tiny_bundle}"], tmp_path_factory.mktemp("serve-state"), "--max-upload-mb", "1")
    srv.start()
    yield srv
    try:
        srv.stop(timeout=30)
    finally:
        srv.kill()


@pytest.fixture
def http(shared_server: ServerProcess) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=shared_server.url, timeout=30) as c:
        yield c


def _wait_status(c: httpx.Client, video_id: str, statuses: tuple[str, ...], timeout: float = 60.0) -> dict:
    def check() -> dict | None:
        r = c.get(f"/v1/videos/{video_id}")
        v = r.json() if r.status_code == 200 else None
        return v if v is not None and v["status"] in statuses else None

    return wait_for(check, timeout, interval=0.05, what=f"{video_id} to be {'/'.join(statuses)}")


@pytest.fixture
def wait_status() -> Callable[..., dict]:
    """wait_status(client, id, ("completed", "failed"), timeout) -> the video object once its status is one of them."""
    return _wait_status


@pytest.fixture(scope="module")
def cluster() -> Iterator[LocalCluster]:
    """A fresh local Ray cluster (two logical GPUs) per test module that asks for one: modules stay apart (a replica
    killed in one never meets another's autoscaler)."""
    c = LocalCluster(gpus=2, cpus=2, object_store_mb=100)
    c.start(timeout=180)
    try:
        yield c
    finally:
        c.stop()
