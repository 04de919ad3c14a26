"""Throughput of `t2vrt serve --ray` with 1 vs 2 replicas, in one run, on one private local Ray cluster.

A `ray start --head --num-gpus 2` cluster (logical GPUs), the tiny bundle, the real server process for each setting:
warm-up jobs until every replica has loaded the bundle, then N jobs submitted at once, timed from the first
submission to the last completion. Settings, in one run on the same cluster:

    1 replica,  1 CPU (1 ORT thread)     the unit the GPU case scales: one device per replica
    2 replicas, 1 CPU each               twice that
    1 replica,  2 CPUs (2 ORT threads)   the whole machine in one replica: the fair CPU-only comparison

Bounded: every wait has a deadline. Writes benchmarks/results/serve_ray-<UTC>.json and .md.
Usage: .venv/bin/python benchmarks/serve_ray.py [--jobs 8] [--steps 10] [--bundle DIR] [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx

from t2vrt.benchmark import report
from t2vrt.serve.process import ServerProcess, wait_for
from t2vrt.serve.ray_cluster import LocalCluster

SETTINGS = ((1, 1.0), (2, 1.0), (1, 2.0))  # (replicas, CPUs per replica)


def run_jobs(c: httpx.Client, n: int, steps: int, timeout: float) -> tuple[float, list[dict[str, Any]]]:
    def submit(seed: int) -> str:
        r = c.post("/v1/videos", json={"prompt": f"a cat {seed}", "steps": steps, "seed": seed})
        r.raise_for_status()
        return str(r.json()["id"])

    t0 = time.perf_counter()
    with ThreadPoolExecutor(n) as pool:
        ids = list(pool.map(submit, range(n)))

    def done() -> list[dict[str, Any]] | None:
        vs = [c.get(f"/v1/videos/{i}").json() for i in ids]
        return vs if all(v["status"] in ("completed", "failed") for v in vs) else None

    vs = wait_for(done, timeout, interval=0.1, what=f"{n} jobs")
    wall = time.perf_counter() - t0
    failed = [v["error"] for v in vs if v["status"] != "completed"]
    if failed:
        raise RuntimeError(f"{len(failed)} jobs failed: {failed[0]}")
    return wall, vs


def measure(
    cluster: LocalCluster, bundle: Path, replicas: int, cpus: float, jobs: int, steps: int, state: Path
) -> dict[str, Any]:
    args = ["--ray", cluster.address, "--replicas", str(replicas), "--replica-cpus", f"{cpus:g}"]
    with ServerProcess([f"tiny={bundle}"], state, *args) as srv, httpx.Client(base_url=srv.url, timeout=30) as c:
        loaded: set[str] = set()
        for _ in range(6):  # warm-up until every replica has loaded the bundle (Serve picks replicas itself)
            _, vs = run_jobs(c, 2 * replicas, steps, 300)
            loaded |= {v["t2vrt"]["replica"]["id"] for v in vs}
            if len(loaded) >= replicas:
                break
        wall, vs = run_jobs(c, jobs, steps, 600)
    per_replica: dict[str, int] = {}
    for v in vs:
        rid = v["t2vrt"]["replica"]["id"]
        per_replica[rid] = per_replica.get(rid, 0) + 1
    run_s = [v["t2vrt"]["replica"]["ran_at"][1] - v["t2vrt"]["replica"]["ran_at"][0] for v in vs]
    step_s = [v["t2vrt"]["timings"]["step"] for v in vs]
    return {
        "replicas": replicas,
        "cpus_per_replica": cpus,
        "jobs": jobs,
        "steps": steps,
        "wall_s": round(wall, 3),
        "jobs_per_min": round(60 * jobs / wall, 2),
        "job_run_s_median": round(statistics.median(run_s), 3),
        "step_s_median": round(statistics.median(step_s), 4),
        "jobs_per_replica": per_replica,
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--jobs", type=int, default=8)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--bundle", type=Path, default=None, help="A tiny bundle (default: export one to a temp dir).")
    ap.add_argument("--out", type=Path, default=report.RESULTS_DIR)
    args = ap.parse_args()

    work = Path(tempfile.mkdtemp(prefix="t2vrt-bench-ray-"))
    bundle = args.bundle
    if bundle is None:
        from t2vrt.export.bundle import ExportOptions, export_bundle

        bundle = export_bundle(ExportOptions(model="tiny", out=work / "tiny", precision="fp32"))
    machine, started = report.machine_info(), report.stamp()
    rows = []
    with LocalCluster(gpus=2, cpus=2, object_store_mb=100) as cluster:
        for i, (replicas, cpus) in enumerate(SETTINGS):
            row = measure(cluster, bundle, replicas, cpus, args.jobs, args.steps, work / f"state{i}")
            print(json.dumps(row), file=sys.stderr, flush=True)
            rows.append(row)
    one = rows[0]["jobs_per_min"]
    for r in rows:
        r["vs_1_replica_1_cpu"] = round(r["jobs_per_min"] / one, 2)
    import os

    import ray

    end_load = os.getloadavg()[0]
    record = {
        "benchmark": "serve_ray",
        "started": started,
        "finished": report.stamp(),
        "machine": machine,
        "load_average_end": end_load,
        "versions": {**report.versions(), "ray": ray.__version__},
        "bundle": "tiny (embedded test model)",
        "cluster": "ray start --head --num-cpus 2 --num-gpus 2 (logical GPUs), CPU replicas, ONNX Runtime",
        "results": rows,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    name = f"serve_ray-{started.replace('-', '').replace(':', '')}"
    (args.out / f"{name}.json").write_text(json.dumps(record, indent=2) + "\n")
    lines = [
        f"# {name}",
        "",
        f"{machine['cpu']}, {machine['logical_cores']} logical cores, "
        f"{machine['ram_bytes'] / 2**30:.0f} GiB; load average {machine['load_average'][0]:.1f} at the start, "
        f"{end_load:.1f} at the end; ray {ray.__version__}.",
        "",
        "| replicas | CPUs each | jobs | wall (s) | jobs/min | vs 1x1 | job run, median (s) | step, median (s) "
        "| jobs per replica |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['replicas']} | {r['cpus_per_replica']:g} | {r['jobs']} | {r['wall_s']:.1f} | "
            f"{r['jobs_per_min']:.1f} | {r['vs_1_replica_1_cpu']:.2f}x | {r['job_run_s_median']:.2f} | "
            f"{r['step_s_median']:.3f} | {sorted(r['jobs_per_replica'].values())} |"
        )
    (args.out / f"{name}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
