"""Helpers of the `t2vrt serve --ray` cluster tests: submit jobs as concurrent clients, wait for them with deadlines,
and ask Serve about the deployment from a separate driver process (so a test process never joins the cluster)."""

from __future__ import annotations

import collections
import json
import re
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx

from t2vrt.serve.process import wait_for
from t2vrt.serve.ray_cluster import LocalCluster

DONE = ("completed", "failed")


def submit(http: httpx.Client, n: int, steps: int, models: tuple[str, ...] = ("tiny",)) -> list[str]:
    def one(seed: int) -> str:
        body = {"prompt": f"a cat {seed}", "steps": steps, "seed": seed, "model": models[seed % len(models)]}
        r = http.post("/v1/videos", json=body)
        assert r.status_code == 200, r.text
        return str(r.json()["id"])

    with ThreadPoolExecutor(n) as pool:  # n clients at once
        return list(pool.map(one, range(n)))


def video(http: httpx.Client, vid: str) -> dict[str, Any]:
    r = http.get(f"/v1/videos/{vid}")
    assert r.status_code == 200, r.text
    return dict(r.json())


def wait_all(http: httpx.Client, ids: list[str], timeout: float = 300) -> list[dict[str, Any]]:
    """Deadlines are generous upper bounds (a shared 2-core CI machine can be 10x slower than a quiet one)."""

    def check() -> list[dict[str, Any]] | None:
        vs = [video(http, v) for v in ids]
        return vs if all(v["status"] in DONE for v in vs) else None

    return wait_for(check, timeout, interval=0.2, what=f"{len(ids)} jobs to finish")


def running_on(http: httpx.Client, vid: str, not_replica: str | None = None, step: int = 1) -> dict[str, Any] | None:
    """The live replica info of `vid` once it has made `step` steps there (on another replica than `not_replica`)."""
    v = video(http, vid)
    live = v["t2vrt"].get("live") or {}
    where = live.get("replica")
    if v["status"] == "in_progress" and where and where["id"] != not_replica and live.get("step", 0) >= step:
        return dict(where)
    return None


def serve_state(cluster: LocalCluster) -> dict[str, Any]:
    """The VideoGenerator deployment as Serve sees it (replica states, status, message) and the cluster's free
    resources, asked from a separate driver process (so this test process never joins the cluster)."""
    code = (
        f"import json, ray; from ray import serve; ray.init(address={cluster.address!r}, logging_level='error', "
        "log_to_driver=False); d = serve.status().applications['t2vrt'].deployments['VideoGenerator']; "
        "print(json.dumps({'replicas': {str(getattr(s, 'value', s)): n for s, n in d.replica_states.items()}, "
        "'status': str(getattr(d.status, 'value', d.status)), 'message': d.message, "
        "'available': ray.available_resources()}))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    return dict(json.loads(out.stdout.strip().splitlines()[-1]))


def free_gpus(cluster: LocalCluster) -> float:
    code = (
        f"import ray; ray.init(address={cluster.address!r}, logging_level='error', log_to_driver=False); "
        "print(ray.available_resources().get('GPU', 0))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    return float(out.stdout.strip().splitlines()[-1])


def running_replicas(cluster: LocalCluster) -> int:
    return int(serve_state(cluster)["replicas"].get("RUNNING", 0))


def completions(log: str) -> collections.Counter[str]:
    return collections.Counter(re.findall(r"completed (video_[0-9a-f]+) in", log))


def autoscaler_lines(cluster: LocalCluster, keep: int = 12) -> list[str]:
    """The Serve controller's log lines about scaling decisions and dropped handle metrics (the autoscaler counts
    queued requests only from handle reports, and drops a handle's report after 20 s without one): what a failed
    autoscaling test needs to say why."""
    if cluster.tmp is None:
        return []
    pattern = re.compile(r"scal|stale|Dropping", re.IGNORECASE)
    lines = [
        line.strip()
        for log in sorted(cluster.tmp.glob("r/session_latest/logs/serve/controller_*.log"))
        for line in log.read_text(errors="replace").splitlines()
        if pattern.search(line)
    ]
    return lines[-keep:]
