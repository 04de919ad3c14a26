"""Load figures for `t2vrt serve` over loopback: API latency (p50/p95) while a job occupies the worker, then
throughput of many clients submitting and polling small jobs, with the lost/duplicated check.

Starts the real server (its own process, a fresh --state) on the tiny bundle (exported here unless --bundle is
given). Writes benchmarks/results/serve_load-<UTC time>.{json,md}.
Usage: .venv/bin/python benchmarks/serve_load.py [--clients 50] [--jobs-per-client 2] [--bundle DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from t2vrt.serve.loadgen import run_load
from t2vrt.serve.process import ServerProcess

RESULTS = Path(__file__).parent / "results"


def machine() -> dict[str, object]:
    cpu = ""
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return {
        "cpu": cpu or platform.processor(),
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
        "platform": platform.platform(),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clients", type=int, default=50)
    ap.add_argument("--jobs-per-client", type=int, default=2)
    ap.add_argument("--steps", type=int, default=1, help="denoising steps of each small job")
    ap.add_argument("--busy-seconds", type=float, default=10.0)
    ap.add_argument("--max-queue", type=int, default=64)
    ap.add_argument("--bundle", type=Path, default=None)
    ap.add_argument("--deadline", type=float, default=600.0)
    args = ap.parse_args()

    with tempfile.TemporaryDirectory(prefix="t2vrt-serve-load-") as tmp:
        bundle = args.bundle
        if bundle is None:
            bundle = Path(tmp) / "tiny"
            subprocess.run(
                [sys.executable, "-m", "t2vrt.cli", "export", "tiny", "--out", str(bundle), "--precision", "fp32"],
                check=True,
                stdout=subprocess.DEVNULL,
            )
        info = machine()
        with ServerProcess([f"tiny={bundle}"], Path(tmp) / "state", "--max-queue", str(args.max_queue)) as srv:
            report = run_load(
                srv.url,
                clients=args.clients,
                jobs_per_client=args.jobs_per_client,
                job={"prompt": "load", "steps": args.steps},
                busy_seconds=args.busy_seconds,
                deadline_s=args.deadline,
            )
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    out = {
        "benchmark": "serve_load",
        "date": stamp,
        "machine": info,
        "server": {"bundle": "tiny (random weights)", "backend": "onnxruntime-cpu", "max_queue": args.max_queue},
        "report": report.to_json(),
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"serve_load-{stamp}.json").write_text(json.dumps(out, indent=1) + "\n")
    r = report
    lines = [
        f"# t2vrt serve load test, {stamp}",
        "",
        f"Machine: {info['cpu']}, {info['cores']} cores, load average at start {info['load_average_at_start']} "
        f"(shared machine: other work was running). Loopback, tiny bundle on ONNX Runtime CPU, the load "
        f"generator in the same machine.",
        "",
        f"## API latency while a job runs ({r.clients} concurrent clients, {r.busy_seconds:.1f} s, "
        f"{r.busy_requests} requests)",
        "",
        "| endpoint | n | p50 ms | p95 ms | max ms |",
        "|---|---|---|---|---|",
    ]
    lines += [f"| {k} | {v['n']} | {v['p50_ms']} | {v['p95_ms']} | {v['max_ms']} |" for k, v in r.busy_latency.items()]
    lines += [
        "",
        f"## Submit and poll ({r.clients} clients x {r.jobs_per_client} jobs of {args.steps} step(s))",
        "",
        f"- jobs: {r.expected} expected, {r.submitted} submitted, {r.completed} completed, {r.failed} failed, "
        f"{len(r.lost)} lost, {len(r.duplicated)} duplicated; {r.rejected_429} submissions answered 429 "
        f"(queue bound {args.max_queue}) and retried",
        f"- wall {r.wall_seconds} s: {r.jobs_per_second} jobs/s, {r.requests} requests ({r.requests_per_second}/s)",
        "",
        "| endpoint | n | p50 ms | p95 ms | max ms |",
        "|---|---|---|---|---|",
    ]
    lines += [f"| {k} | {v['n']} | {v['p50_ms']} | {v['p95_ms']} | {v['max_ms']} |" for k, v in r.latency.items()]
    if r.errors:
        lines += ["", "Errors:", *[f"- {e}" for e in r.errors]]
    (RESULTS / f"serve_load-{stamp}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    if r.lost or r.duplicated or r.errors or r.completed != r.expected:
        sys.exit(1)


if __name__ == "__main__":
    main()
