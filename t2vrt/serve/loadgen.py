"""A bounded load test of a running `t2vrt serve`: many concurrent clients over loopback, every one with a deadline.

Phase 1, latency while a job runs: one long job occupies the worker while `clients` threads poll the API (retrieve
and list) for `seconds`; per-endpoint p50/p95.
Phase 2, submit and poll: `clients` threads each submit `jobs_per_client` small jobs (honouring 429 Retry-After) and
poll each to the end; then the whole list is read back page by page: every submitted id must be there exactly once
and completed (no job lost, none duplicated). Throughput is completed jobs per wall second.
Used by tests/serve/test_serve_load.py (assertions) and benchmarks/serve_load.py (the recorded figures).
"""

from __future__ import annotations

import threading
import time
from collections import Counter, defaultdict
from dataclasses import asdict, dataclass, field
from typing import Any

import httpx


def _pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    s = sorted(values)
    return s[min(len(s) - 1, int(round(q * (len(s) - 1))))]


def _summary(lat: dict[str, list[float]]) -> dict[str, dict[str, float]]:
    return {k: {"n": len(v), "p50_ms": round(_pct(v, 0.5) * 1000, 2), "p95_ms": round(_pct(v, 0.95) * 1000, 2),
                "max_ms": round(max(v) * 1000, 2)} for k, v in sorted(lat.items()) if v}


@dataclass
class LoadReport:
    clients: int
    jobs_per_client: int
    job_fields: dict[str, Any]
    busy_seconds: float = 0.0
    busy_requests: int = 0
    busy_latency: dict[str, dict[str, float]] = field(default_factory=dict)
    expected: int = 0
    submitted: int = 0
    completed: int = 0
    failed: int = 0
    lost: list[str] = field(default_factory=list)  # submitted, but missing from the list or never finished
    duplicated: list[str] = field(default_factory=list)  # listed more than once, or one id given to two submits
    rejected_429: int = 0
    errors: list[str] = field(default_factory=list)  # unexpected HTTP statuses / exceptions (first few)
    wall_seconds: float = 0.0
    jobs_per_second: float = 0.0
    requests: int = 0
    requests_per_second: float = 0.0
    latency: dict[str, dict[str, float]] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


class _Recorder:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.lat: dict[str, list[float]] = defaultdict(list)
        self.errors: list[str] = []

    def call(self, c: httpx.Client, name: str, method: str, url: str, **kw: Any) -> httpx.Response | None:
        t0 = time.perf_counter()
        try:
            r = c.request(method, url, **kw)
        except httpx.HTTPError as e:
            with self.lock:
                self.errors.append(f"{name}: {type(e).__name__}: {e}")
            return None
        dt = time.perf_counter() - t0
        with self.lock:
            self.lat[name].append(dt)
        return r


def busy_phase(url: str, clients: int, seconds: float, long_job: dict[str, Any], headers: dict[str, str],
               deadline: float) -> tuple[float, int, dict[str, dict[str, float]], list[str]]:
    rec = _Recorder()
    with httpx.Client(base_url=url, headers=headers, timeout=30) as c:
        job = c.post("/v1/videos", json=long_job).json()
        while c.get(f"/v1/videos/{job['id']}").json()["status"] == "queued" and time.monotonic() < deadline:
            time.sleep(0.05)
        stop = time.monotonic() + seconds

        def client() -> None:
            with httpx.Client(base_url=url, headers=headers, timeout=30) as cc:
                while time.monotonic() < min(stop, deadline):
                    r = rec.call(cc, "GET /v1/videos/{id}", "GET", f"/v1/videos/{job['id']}")
                    if r is not None and r.status_code != 200:
                        rec.errors.append(f"retrieve: HTTP {r.status_code}")
                    r = rec.call(cc, "GET /v1/videos", "GET", "/v1/videos", params={"limit": 20})
                    if r is not None and r.status_code != 200:
                        rec.errors.append(f"list: HTTP {r.status_code}")

        t0 = time.monotonic()
        threads = [threading.Thread(target=client) for _ in range(clients)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(max(1.0, deadline - time.monotonic()))
        elapsed = time.monotonic() - t0
        still_running = c.get(f"/v1/videos/{job['id']}").json()["status"] == "in_progress"
        c.delete(f"/v1/videos/{job['id']}")
    if not still_running:
        rec.errors.append("the long job ended before the busy phase did: latencies were not all measured under load")
    n = sum(len(v) for v in rec.lat.values())
    return elapsed, n, _summary(rec.lat), rec.errors


def run_load(url: str, clients: int = 50, jobs_per_client: int = 1, job: dict[str, Any] | None = None,
             busy_seconds: float = 5.0, long_job: dict[str, Any] | None = None, deadline_s: float = 180.0,
             poll_s: float = 0.2, headers: dict[str, str] | None = None) -> LoadReport:
    job = job or {"prompt": "load test", "steps": 1}
    headers = headers or {}
    deadline = time.monotonic() + deadline_s
    report = LoadReport(clients, jobs_per_client, job, expected=clients * jobs_per_client)
    if busy_seconds > 0:
        long_job = long_job or {"prompt": "busy", "steps": 400}
        report.busy_seconds, report.busy_requests, report.busy_latency, errs = busy_phase(
            url, clients, busy_seconds, long_job, headers, deadline)
        report.errors += errs

    rec = _Recorder()
    ids: list[str] = []
    final: dict[str, str] = {}
    rejected = Counter[str]()

    def client(n: int) -> None:
        with httpx.Client(base_url=url, headers=headers, timeout=30) as c:
            for k in range(jobs_per_client):
                vid = None
                while vid is None and time.monotonic() < deadline:
                    r = rec.call(c, "POST /v1/videos", "POST", "/v1/videos", json={**job, "prompt": f"{job['prompt']} {n}.{k}"})
                    if r is None:
                        continue
                    if r.status_code == 429:
                        with rec.lock:
                            rejected["429"] += 1
                        time.sleep(min(float(r.headers.get("retry-after", "1")), 2.0))
                    elif r.status_code == 200:
                        vid = r.json()["id"]
                    else:
                        with rec.lock:
                            rec.errors.append(f"submit: HTTP {r.status_code} {r.text[:200]}")
                        return
                if vid is None:
                    return
                with rec.lock:
                    ids.append(vid)
                while time.monotonic() < deadline:
                    r = rec.call(c, "GET /v1/videos/{id}", "GET", f"/v1/videos/{vid}")
                    if r is not None and r.status_code == 200 and r.json()["status"] in ("completed", "failed"):
                        with rec.lock:
                            final[vid] = r.json()["status"]
                        break
                    time.sleep(poll_s)

    t0 = time.monotonic()
    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(max(1.0, deadline - time.monotonic()))
    report.wall_seconds = round(time.monotonic() - t0, 3)

    listed: list[str] = []
    with httpx.Client(base_url=url, headers=headers, timeout=30) as c:
        after = None
        while True:
            params: dict[str, Any] = {"limit": 100, "order": "asc", **({"after": after} if after else {})}
            page = c.get("/v1/videos", params=params).json()
            listed += [v["id"] for v in page["data"] if v["status"] == "completed"]
            if not page["has_more"]:
                break
            after = page["last_id"]
    counts = Counter(listed)
    submitted = Counter(ids)
    report.submitted = len(ids)
    report.completed = sum(1 for s in final.values() if s == "completed")
    report.failed = sum(1 for s in final.values() if s == "failed")
    report.lost = sorted(i for i in submitted if counts[i] == 0 or final.get(i) != "completed")
    report.duplicated = sorted({i for i, n in counts.items() if n > 1} | {i for i, n in submitted.items() if n > 1})
    report.rejected_429 = rejected["429"]
    report.errors += rec.errors[:20]
    report.jobs_per_second = round(report.completed / report.wall_seconds, 3) if report.wall_seconds else 0.0
    report.requests = sum(len(v) for v in rec.lat.values())
    report.requests_per_second = round(report.requests / report.wall_seconds, 1) if report.wall_seconds else 0.0
    report.latency = _summary(rec.lat)
    return report
