"""A bounded loopback load test of the real server: 50 concurrent clients poll while a long job runs, then 50
clients submit and poll small jobs to the end. Every job must complete exactly once (none lost, none duplicated);
the figures are printed (benchmarks/serve_load.py records them), never asserted: speed is measured, not tested."""

from __future__ import annotations

import json
from typing import Any

from t2vrt.serve.loadgen import run_load


def test_fifty_clients_lose_and_duplicate_nothing(start_server: Any) -> None:
    srv = start_server("--max-queue", "20")  # below the client count: the 429 / Retry-After path is exercised too
    report = run_load(
        srv.url,
        clients=50,
        jobs_per_client=1,
        job={"prompt": "load", "steps": 1},
        busy_seconds=3.0,
        deadline_s=240.0,
        poll_s=0.2,
    )
    print(json.dumps(report.to_json(), indent=1))
    assert report.errors == []
    assert report.submitted == report.expected == 50
    assert report.completed == 50 and report.failed == 0
    assert report.lost == [] and report.duplicated == []
    assert report.busy_requests >= 2 * 50 and set(report.busy_latency) == {"GET /v1/videos", "GET /v1/videos/{id}"}
