"""The server as a service: kill -9 mid-job then restart completes every job; a job that kills the server twice is
failed with its reason; SIGTERM drains (finish, or requeue past --drain-timeout); the queue bound answers 429 with
Retry-After; results expire; the API key; loopback-only by default. Each test runs its own server process(es)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx

from t2vrt.serve.process import wait_for


def _client(url: str, key: str | None = None) -> httpx.Client:
    return httpx.Client(base_url=url, timeout=30, headers={"Authorization": f"Bearer {key}"} if key else {})


def _running(c: httpx.Client, video_id: str, past: int = 0) -> bool:
    v = c.get(f"/v1/videos/{video_id}").json()
    return v["status"] == "in_progress" and v["progress"] > past


def test_kill_9_mid_job_then_restart_completes_every_job(start_server: Any, wait_status: Any, tmp_path: Path) -> None:
    srv = start_server()
    with _client(srv.url) as c:
        ids = [
            c.post("/v1/videos", json={"prompt": f"job {i}", "steps": 20 if i == 0 else 2}).json()["id"]
            for i in range(4)
        ]
        wait_for(lambda: _running(c, ids[0], past=5), 60, what="the first job to be part-way")
    srv.kill()  # SIGKILL: no drain, no cleanup; the store says job 0 is in_progress
    assert srv.proc.returncode == -signal.SIGKILL

    again = start_server()
    assert "1 queued again after a crash" in again.log
    with _client(again.url) as c:
        done = [wait_status(c, i, ("completed", "failed"), 120) for i in ids]
        assert [v["status"] for v in done] == ["completed"] * 4
        listed = [v["id"] for v in c.get("/v1/videos", params={"order": "asc", "limit": 100}).json()["data"]]
        assert listed == ids  # none lost, none duplicated, still in submission order
        for i in ids:
            assert c.get(f"/v1/videos/{i}/content").content[4:8] == b"ftyp"
    videos = tmp_path / "state" / "videos"
    assert sorted(p.name for p in videos.iterdir()) == sorted(ids)  # no partial outputs left behind


def test_a_job_interrupted_twice_fails_with_its_reason(start_server: Any, wait_status: Any) -> None:
    srv = start_server()
    with _client(srv.url) as c:
        vid = c.post("/v1/videos", json={"prompt": "crashes the server", "steps": 400}).json()["id"]
        wait_for(lambda: _running(c, vid), 60, what="the job to start")
    srv.kill()
    srv = start_server()
    with _client(srv.url) as c:
        wait_for(lambda: _running(c, vid), 60, what="the job's second run")
    srv.kill()
    srv = start_server()
    assert "1 failed (interrupted twice)" in srv.log
    with _client(srv.url) as c:
        v = wait_status(c, vid, ("failed",), 10)
        assert v["error"]["code"] == "interrupted" and "2 times" in v["error"]["message"]
        assert c.post("/v1/videos", json={"prompt": "the next one", "steps": 2}).status_code == 200


def test_sigterm_drains_the_running_job(start_server: Any, wait_status: Any) -> None:
    srv = start_server("--drain-timeout", "120")
    with _client(srv.url) as c:
        vid = c.post("/v1/videos", json={"prompt": "finish me", "steps": 12}).json()["id"]
        queued = c.post("/v1/videos", json={"prompt": "wait for the next start", "steps": 2}).json()["id"]
        wait_for(lambda: _running(c, vid), 60, what="the job to start")
    srv.signal(signal.SIGTERM)
    assert srv.wait(120) == 0
    assert "stopped (drained)" in srv.log
    srv = start_server()
    with _client(srv.url) as c:
        v = c.get(f"/v1/videos/{vid}").json()
        assert v["status"] == "completed"  # finished before the old process exited, not re-run
        assert wait_status(c, queued, ("completed",), 60)["status"] == "completed"


def test_sigterm_past_the_drain_timeout_requeues(start_server: Any, wait_status: Any) -> None:
    srv = start_server("--drain-timeout", "0")
    with _client(srv.url) as c:
        vid = c.post("/v1/videos", json={"prompt": "requeue me", "steps": 12}).json()["id"]
        wait_for(lambda: _running(c, vid), 60, what="the job to start")
    srv.signal(signal.SIGTERM)
    assert srv.wait(60) == 0
    assert "running job requeued" in srv.log
    srv = start_server()
    assert "0 queued again after a crash" in srv.log  # it was queued cleanly, not left in_progress
    with _client(srv.url) as c:
        assert wait_status(c, vid, ("completed", "failed"), 120)["status"] == "completed"


def test_a_full_queue_answers_429_with_retry_after(start_server: Any) -> None:
    srv = start_server("--max-queue", "2")
    with _client(srv.url) as c:
        a = c.post("/v1/videos", json={"prompt": "a", "steps": 400}).json()["id"]
        b = c.post("/v1/videos", json={"prompt": "b", "steps": 400}).json()["id"]
        r = c.post("/v1/videos", json={"prompt": "c", "steps": 2})
        assert r.status_code == 429 and r.json()["error"]["code"] == "queue_full"
        assert int(r.headers["retry-after"]) >= 1
        c.delete(f"/v1/videos/{b}")
        assert c.post("/v1/videos", json={"prompt": "c", "steps": 2}).status_code == 200  # a slot is free again
        c.delete(f"/v1/videos/{a}")


def test_results_expire(start_server: Any, wait_status: Any, tmp_path: Path) -> None:
    srv = start_server("--keep", "2s")
    with _client(srv.url) as c:
        vid = c.post("/v1/videos", json={"prompt": "short-lived", "steps": 2}).json()["id"]
        v = wait_status(c, vid, ("completed",), 60)
        assert v["expires_at"] == v["completed_at"] + 2
        wait_for(lambda: c.get(f"/v1/videos/{vid}").status_code == 404, 30, interval=0.2, what="expiry")
    assert not (tmp_path / "state" / "videos" / vid).exists()


def test_api_key_guards_v1_and_the_sdk_sends_it(start_server: Any) -> None:
    import warnings

    import openai

    key = "k-" + "0123456789abcdef" * 2
    srv = start_server(env={"T2VRT_API_KEY": key})
    with _client(srv.url) as anon, _client(srv.url, "wrong-key-0123456789") as wrong:
        r = anon.get("/v1/models")
        assert r.status_code == 401 and r.json()["error"]["type"] == "authentication_error"
        assert r.headers["www-authenticate"] == "Bearer"
        assert wrong.post("/v1/videos", json={"prompt": "x"}).status_code == 401
        assert anon.get("/").status_code == 200  # the page holds no data; it asks for the key
    warnings.simplefilter("ignore", DeprecationWarning)
    client = openai.OpenAI(base_url=srv.url + "/v1", api_key=key, max_retries=0)
    video = client.videos.create_and_poll(
        prompt="with a key", model="tiny", extra_body={"steps": 2}, poll_interval_ms=100
    )
    assert video.status == "completed"


def test_not_loopback_without_a_key_is_refused(tiny_bundle: Path, tmp_path: Path) -> None:
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "t2vrt.cli",
            "serve",
            "--bundle",
            str(tiny_bundle),
            "--host",
            "0.0.0.0",
            "--state",
            str(tmp_path / "s"),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        env={k: v for k, v in os.environ.items() if k != "T2VRT_API_KEY"},
    )
    assert run.returncode == 2
    assert run.stderr.strip().splitlines() == [
        "error: --host 0.0.0.0 is reachable from other machines: set an API key (--api-key or T2VRT_API_KEY); "
        "clients then send 'Authorization: Bearer <key>'"
    ]
