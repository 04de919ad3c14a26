"""`t2vrt serve --ray --replicas 1:2` on its own fresh local Ray cluster (two logical GPUs): one replica at start,
a second one added by Serve's autoscaler while jobs wait, and both GPUs given back when the server stops.

The load is a steady queue (12 jobs at a time: two in flight, one running and one waiting in Serve's router). An
earlier version sent jobs in pairs and waited for both (about 1.3 requests per replica on average, short idle gaps,
still over the target of 1): in 3 of 8 runs here Serve's autoscaler never added the second replica within 240 s
(one replica RUNNING and HEALTHY, a GPU and a CPU free). Cause not found; with the steady queue it scaled within
~30 s in each of the runs since. Its own cluster keeps it apart from the replica-kill tests.
"""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from t2vrt.serve.process import ServerProcess, wait_for

pytest.importorskip("ray.serve", reason="the ray extra is not installed")

from ray_helpers import autoscaler_lines, free_gpus, running_replicas, serve_state, submit, wait_all

from t2vrt.serve.ray_cluster import LocalCluster


def test_autoscaling_between_bounds(cluster: LocalCluster, tiny_bundle: Path, tmp_path: Path) -> None:
    state = tmp_path / "state"
    auto = ServerProcess(
        [f"tiny={tiny_bundle}"], state, "--ray", cluster.address, "--replicas", "1:2", "--replica-cpus", "1"
    )
    auto.start(timeout=240)
    try:
        assert "1..2 replicas (autoscaling)" in auto.log
        assert running_replicas(cluster) == 1  # initial_replicas: one, before any job
        seen: list[str] = []
        with httpx.Client(base_url=auto.url, timeout=30) as http:

            def two_replicas() -> bool:
                vs = wait_all(http, submit(http, 12, steps=20))  # a steady queue: 2 in flight, the rest in the store
                assert all(v["status"] == "completed" for v in vs), [v["error"] for v in vs]
                seen.extend(v["t2vrt"]["replica"]["id"] for v in vs)
                return len(set(seen)) == 2

            try:
                wait_for(two_replicas, 240, interval=0, what="Serve to add a second replica")
            except TimeoutError as e:
                why = "\n".join(autoscaler_lines(cluster))
                raise AssertionError(
                    f"{e}; replicas seen {sorted(set(seen))} over {len(seen)} jobs; Serve: {serve_state(cluster)}\n"
                    f"controller log:\n{why}"
                ) from None
        assert running_replicas(cluster) == 2
        assert auto.stop(timeout=60) == 0  # SIGTERM: drained, its application deleted
        wait_for(lambda: free_gpus(cluster) == 2, 90, interval=1, what="both GPUs free once the application is gone")
    finally:
        auto.kill()
