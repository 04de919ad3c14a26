"""`t2vrt serve --ray` on a real local Ray cluster: `ray start --head` with two logical GPUs and two CPU replicas of
the tiny bundle, the real server process in front. Jobs spread over both replicas (the job record names the replica
and its GPU), a replica killed mid-job costs that job one retry, a second death fails it with the reason, and a
kill -9 of the server resumes from the store. Every wait polls with a deadline; the cluster is stopped at the end.

The tests of this module share one cluster and one server, in file order (the last one kills both replicas);
autoscaling has its own cluster (test_ray_autoscale.py).
"""

from __future__ import annotations

import itertools
import os
import signal
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from t2vrt.serve.process import ServerProcess, wait_for

pytest.importorskip("ray.serve", reason="the ray extra is not installed")

from ray_helpers import completions, running_on, submit, wait_all

from t2vrt.serve.ray_cluster import LocalCluster


@pytest.fixture(scope="module")
def server(
    cluster: LocalCluster, tiny_bundle: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServerProcess]:
    # two model ids (the same files) to see requests routed by `model` to the multiplexed replicas
    srv = ServerProcess(
        [f"tiny={tiny_bundle}", f"tiny-b={tiny_bundle}"],
        tmp_path_factory.mktemp("ray-state"),
        "--ray",
        cluster.address,
        "--replicas",
        "2",
        "--replica-cpus",
        "1",
        "--drain-timeout",
        "10",
    )
    srv.start(timeout=240)
    try:
        yield srv
    finally:
        try:
            assert srv.stop(timeout=60) == 0, srv.log[-2000:]  # SIGTERM: drained, application deleted
        finally:
            srv.kill()


@pytest.fixture
def http(server: ServerProcess) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=30) as c:
        yield c


def test_jobs_spread_over_both_replicas_one_at_a_time(http: httpx.Client) -> None:
    ids = submit(http, 6, steps=6, models=("tiny", "tiny-b"))
    listed = http.get("/v1/videos", params={"limit": 100}).json()["data"]
    mine = [v["status"] for v in listed if v["id"] in ids]
    assert mine.count("in_progress") <= 2 and mine.count("queued") >= 1  # 2 replicas take 2; the rest wait
    vs = wait_all(http, ids)
    assert [v["status"] for v in vs] == ["completed"] * 6, [v["error"] for v in vs]
    replicas = {v["t2vrt"]["replica"]["id"]: v["t2vrt"]["replica"] for v in vs}
    assert len(replicas) == 2  # both replicas worked
    assert sorted(r["gpus"][0] for r in replicas.values()) == ["0", "1"]  # each holds its own (logical) GPU
    assert all(v["t2vrt"]["replicas_lost"] == [] for v in vs)
    assert [v["t2vrt"]["replica"]["model"] for v in vs] == [v["model"] for v in vs] == ["tiny", "tiny-b"] * 3
    for rid in replicas:  # max_ongoing_requests=1: a replica's jobs never overlap
        spans = sorted(v["t2vrt"]["replica"]["ran_at"] for v in vs if v["t2vrt"]["replica"]["id"] == rid)
        assert all(a[1] <= b[0] for a, b in itertools.pairwise(spans)), spans
    for v in vs:
        r = http.get(f"/v1/videos/{v['id']}/content")
        assert r.status_code == 200 and r.content[4:8] == b"ftyp"


def test_uploads_and_remixes_travel_with_the_job(http: httpx.Client) -> None:
    """The replica has no access to --state: an uploaded clip, an image and a remix's source go with the request."""
    import imageio.v3 as iio
    import numpy as np

    [src] = submit(http, 1, steps=2)
    wait_all(http, [src])
    clip = http.get(f"/v1/videos/{src}/content").content
    png = bytes(iio.imwrite("<bytes>", np.zeros((64, 64, 3), np.uint8), extension=".png", plugin="pillow"))
    ids = []
    for name, data, mime in (("clip.mp4", clip, "video/mp4"), ("still.png", png, "image/png")):
        r = http.post(
            "/v1/videos",
            data={"prompt": "restyled", "strength": "0.7", "steps": "4"},
            files={"input_reference": (name, data, mime)},
        )
        assert r.status_code == 200, r.text
        ids.append(r.json()["id"])
    r = http.post(f"/v1/videos/{src}/remix", json={"prompt": "remixed"})
    assert r.status_code == 200, r.text
    ids.append(r.json()["id"])
    vs = wait_all(http, ids)
    assert [v["status"] for v in vs] == ["completed"] * 3, [v["error"] for v in vs]
    assert [v["t2vrt"]["parameters"]["input"] for v in vs] == ["video", "image", "video"]
    assert vs[2]["remixed_from_video_id"] == src and all("replica" in v["t2vrt"] for v in vs)


def test_delete_stops_the_job_on_its_replica(http: httpx.Client, server: ServerProcess) -> None:
    long = submit(http, 2, steps=999)  # minutes each if nothing stopped them
    wait_for(lambda: all(running_on(http, v) for v in long), 90, interval=0.1, what="both replicas busy")
    for v in long:
        assert http.delete(f"/v1/videos/{v}").status_code == 200
    vs = wait_all(http, submit(http, 2, steps=4), timeout=60)  # they get the replicas the deleted jobs held
    assert [v["status"] for v in vs] == ["completed"] * 2, [v["error"] for v in vs]
    assert all(http.get(f"/v1/videos/{v}").status_code == 404 for v in long)
    wait_for(lambda: all(f"cancelled {v}" in server.log for v in long), 30, what="the server to log both cancels")


def test_replica_killed_mid_job_costs_one_retry(http: httpx.Client, server: ServerProcess) -> None:
    ids = submit(http, 4, steps=24)
    victim_job, victim = wait_for(
        lambda: next(((v, w) for v in ids if (w := running_on(http, v, step=2))), None),
        90,
        interval=0.1,
        what="a job running on a replica",
    )
    os.kill(int(victim["pid"]), signal.SIGKILL)  # what the OOM killer does
    vs = {v["id"]: v for v in wait_all(http, ids)}
    assert all(v["status"] == "completed" for v in vs.values()), [v["error"] for v in vs.values()]
    hit = vs[victim_job]["t2vrt"]
    assert [x["id"] for x in hit["replicas_lost"]] == [victim["id"]]
    assert "Error" in hit["replicas_lost"][0]["error"]
    assert hit["replica"]["id"] != victim["id"]  # the retry ran elsewhere (the other replica or the replacement)
    assert all(vs[j]["t2vrt"]["replicas_lost"] == [] for j in ids if j != victim_job)
    counts = completions(server.log)
    assert all(counts[j] == 1 for j in ids), counts  # no job completed twice


def test_server_killed_mid_job_resumes_from_the_store(http: httpx.Client, server: ServerProcess) -> None:
    ids = submit(http, 3, steps=16)
    wait_for(lambda: any(running_on(http, v) for v in ids), 90, interval=0.1, what="a job running")
    server.kill()  # kill -9 of the ingress; the replicas (detached Serve app) live on
    before = server.log
    server.start(timeout=240)  # same --state, same cluster: finds the application and the queue
    assert "queued again after a crash" in server.log
    with httpx.Client(base_url=server.url, timeout=30) as c:
        vs = wait_all(c, ids)
    assert [v["status"] for v in vs] == ["completed"] * 3, [v["error"] for v in vs]
    counts = completions(before) + completions(server.log)
    assert all(counts[j] == 1 for j in ids), counts


def test_second_replica_death_fails_the_job_with_the_reason(server: ServerProcess) -> None:
    with httpx.Client(base_url=server.url, timeout=30) as http:
        [vid] = submit(http, 1, steps=80)
        first = wait_for(lambda: running_on(http, vid, step=1), 90, interval=0.1, what="the job running")
        os.kill(int(first["pid"]), signal.SIGKILL)
        second = wait_for(
            lambda: running_on(http, vid, not_replica=first["id"], step=1),
            90,
            interval=0.1,
            what="the retry running on another replica",
        )
        os.kill(int(second["pid"]), signal.SIGKILL)
        [v] = wait_all(http, [vid], timeout=60)
    assert v["status"] == "failed"
    assert v["error"]["code"] == "generation_failed"
    msg = v["error"]["message"]
    assert "died 2 times" in msg and first["id"] in msg and second["id"] in msg, msg
    assert "\n" not in msg
