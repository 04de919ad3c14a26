"""A bounded load test of a running `t2vrt serve`: many concurrent clients over loopback, every one with a deadline.

The clients are asyncio tasks sharing one connection pool (one connection per client), so the load generator's own
Python threads do not compete with the server for the GIL-bound client work on a small machine.

Phase 1, latency while a job runs: one long job occupies the worker while `clients` threads poll the API (retrieve
and list) for `seconds`; per-endpoint p50/p95.
Phase 2, submit and poll: `clients` threads each submit `jobs_per_client` small jobs (honouring 429 Retry-After) and
poll each to the end; then the whole list is read back page by page: every submitted id must be there exactly once
and completed (no job lost, none duplicated). Throughput is completed jobs per wall second.
Used by tests/serve/test_serve_load.py (assertions) and benchmarks/serve_load.py (the recorded figures).
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter, defaultdict
from dataclasses import asdict, dataclass, field
from typing import Any

import httpx


def _pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    s = sorted(values)
    return s[min(len(s) - 1, round(q * (len(s) - 1)))]


def _summary(lat: dict[str, list[float]]) -> dict[str, dict[str, float]]:
    return {
        k: {
            "n": len(v),
            "p50_ms": round(_pct(v, 0.5) * 1000, 2),
            "p95_ms": round(_pct(v, 0.95) * 1000, 2),
            "max_ms": round(max(v) * 1000, 2),
        }
        for k, v in sorted(lat.items())
        if v
    }


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
        self.lat: dict[str, list[float]] = defaultdict(list)
        self.errors: list[str] = []

    async def call(self, c: httpx.AsyncClient, name: str, method: str, url: str, **kw: Any) -> httpx.Response | None:
        t0 = time.perf_counter()
        try:
            r = await c.request(method, url, **kw)
        except httpx.HTTPError as e:
            self.errors.append(f"{name}: {type(e).__name__}: {e}")
            return None
        self.lat[name].append(time.perf_counter() - t0)
        return r


def _pool(url: str, clients: int, headers: dict[str, str]) -> httpx.AsyncClient:
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    return httpx.AsyncClient(base_url=url, headers=headers, timeout=30, limits=limits)


async def _busy(
    url: str, clients: int, seconds: float, long_job: dict[str, Any], headers: dict[str, str], deadline: float
) -> tuple[float, int, dict[str, dict[str, float]], list[str]]:
    rec = _Recorder()
    async with _pool(url, clients, headers) as c:
        job = (await c.post("/v1/videos", json=long_job)).json()
        while (await c.get(f"/v1/videos/{job['id']}")).json()["status"] == "queued" and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        stop = min(time.monotonic() + seconds, deadline)

        async def client() -> None:
            while time.monotonic() < stop:
                for name, path, params in (
                    ("GET /v1/videos/{id}", f"/v1/videos/{job['id']}", None),
                    ("GET /v1/videos", "/v1/videos", {"limit": 20}),
                ):
                    r = await rec.call(c, name, "GET", path, params=params)
                    if r is not None and r.status_code != 200:
                        rec.errors.append(f"{name}: HTTP {r.status_code}")

        t0 = time.monotonic()
        await asyncio.gather(*(client() for _ in range(clients)))
        elapsed = time.monotonic() - t0
        still_running = (await c.get(f"/v1/videos/{job['id']}")).json()["status"] == "in_progress"
        await c.delete(f"/v1/videos/{job['id']}")
    if not still_running:
        rec.errors.append("the long job ended before the busy phase did: latencies were not all measured under load")
    n = sum(len(v) for v in rec.lat.values())
    return elapsed, n, _summary(rec.lat), rec.errors


async def _submit_and_poll(
    url: str, report: LoadReport, job: dict[str, Any], poll_s: float, headers: dict[str, str], deadline: float
) -> tuple[list[str], dict[str, str], _Recorder]:
    rec = _Recorder()
    ids: list[str] = []
    final: dict[str, str] = {}

    async def client(c: httpx.AsyncClient, n: int) -> None:
        for k in range(report.jobs_per_client):
            vid = None
            while vid is None and time.monotonic() < deadline:
                body = {**job, "prompt": f"{job['prompt']} {n}.{k}"}
                r = await rec.call(c, "POST /v1/videos", "POST", "/v1/videos", json=body)
                if r is None:
                    await asyncio.sleep(0.5)
                elif r.status_code == 429:
                    report.rejected_429 += 1
                    await asyncio.sleep(min(float(r.headers.get("retry-after", "1")), 2.0))
                elif r.status_code == 200:
                    vid = r.json()["id"]
                else:
                    rec.errors.append(f"submit: HTTP {r.status_code} {r.text[:200]}")
                    return
            if vid is None:
                return
            ids.append(vid)
            while time.monotonic() < deadline:
                r = await rec.call(c, "GET /v1/videos/{id}", "GET", f"/v1/videos/{vid}")
                if r is not None and r.status_code == 200 and r.json()["status"] in ("completed", "failed"):
                    final[vid] = r.json()["status"]
                    break
                await asyncio.sleep(poll_s)

    async with _pool(url, report.clients, headers) as c:
        await asyncio.gather(*(client(c, i) for i in range(report.clients)))
    return ids, final, rec


def _listed(url: str, headers: dict[str, str]) -> list[str]:
    """Every completed job's id, walking the list in submission order page by page."""
    listed: list[str] = []
    with httpx.Client(base_url=url, headers=headers, timeout=30) as c:
        after = None
        while True:
            params: dict[str, Any] = {"limit": 100, "order": "asc", **({"after": after} if after else {})}
            page = c.get("/v1/videos", params=params).json()
            listed += [v["id"] for v in page["data"] if v["status"] == "completed"]
            if not page["has_more"]:
                return listed
            after = page["last_id"]


def run_load(
    url: str,
    clients: int = 50,
    jobs_per_client: int = 1,
    job: dict[str, Any] | None = None,
    busy_seconds: float = 5.0,
    long_job: dict[str, Any] | None = None,
    deadline_s: float = 180.0,
    poll_s: float = 0.2,
    headers: dict[str, str] | None = None,
) -> LoadReport:
    job = job or {"prompt": "load test", "steps": 1}
    headers = headers or {}
    deadline = time.monotonic() + deadline_s
    report = LoadReport(clients, jobs_per_client, job, expected=clients * jobs_per_client)
    if busy_seconds > 0:
        long_job = long_job or {"prompt": "busy", "steps": 400}
        report.busy_seconds, report.busy_requests, report.busy_latency, errs = asyncio.run(
            _busy(url, clients, busy_seconds, long_job, headers, deadline)
        )
        report.busy_seconds = round(report.busy_seconds, 3)
        report.errors += errs

    t0 = time.monotonic()
    ids, final, rec = asyncio.run(_submit_and_poll(url, report, job, poll_s, headers, deadline))
    report.wall_seconds = round(time.monotonic() - t0, 3)
    counts = Counter(_listed(url, headers))
    submitted = Counter(ids)
    report.submitted = len(ids)
    report.completed = sum(1 for s in final.values() if s == "completed")
    report.failed = sum(1 for s in final.values() if s == "failed")
    report.lost = sorted(i for i in submitted if counts[i] == 0 or final.get(i) != "completed")
    report.duplicated = sorted({i for i, n in counts.items() if n > 1} | {i for i, n in submitted.items() if n > 1})
    report.errors += rec.errors[:20]
    report.jobs_per_second = round(report.completed / report.wall_seconds, 3) if report.wall_seconds else 0.0
    report.requests = sum(len(v) for v in rec.lat.values())
    report.requests_per_second = round(report.requests / report.wall_seconds, 1) if report.wall_seconds else 0.0
    report.latency = _summary(rec.lat)
    return report
