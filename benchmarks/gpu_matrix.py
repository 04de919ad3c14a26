"""The GPU matrix: ms-1.7b at 256x256x16 and 576x320x24, TensorRT at several VRAM budgets vs ONNX Runtime CUDA vs
PyTorch fp16 eager (SDPA), each cell a `t2vrt bench` record; then one summary table (markdown + JSON).

Needs an NVIDIA GPU, TensorRT, onnxruntime-gpu, and a bundle exported with fp16 from the real checkpoint (the torch
baseline loads that checkpoint). For each shape: `t2vrt build --vram B` then `t2vrt bench --backend tensorrt` per
budget, one `t2vrt bench --backend onnxruntime-cuda`, and the PyTorch baseline in its own process (`t2vrt bench
--backend onnxruntime-cuda --baseline torch`), so a torch crash or its CUDA context never touches the TensorRT cells. A failing cell
is recorded with its real cause (the last line the command printed) and the run goes on.
Usage: python benchmarks/gpu_matrix.py BUNDLE [--budgets 24GiB,12GiB,8GiB,6GiB] [--steps 25] [--repeat 3]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

from t2vrt.benchmark import report

SHAPES = ((16, 256, 256), (24, 320, 576))  # (frames, height, width): ms-1.7b's default, zeroscope-576w's


class CellFailed(Exception):
    """A t2vrt command failed: the message is its own last line (its real cause), not a guess."""


def t2vrt(*args: str) -> None:
    cmd = [sys.executable, "-m", "t2vrt.cli", *args]
    print("$ t2vrt " + " ".join(args), file=sys.stderr, flush=True)
    r = subprocess.run(cmd, stderr=subprocess.PIPE, text=True)
    sys.stderr.write(r.stderr)
    if r.returncode:
        lines = [ln.strip() for ln in r.stderr.splitlines() if ln.strip()]
        raise CellFailed(f"exit {r.returncode}: {lines[-1] if lines else 'no message'}")


def newest(out: Path, pattern: str, since: float) -> Path:
    found = [p for p in out.glob(pattern) if p.stat().st_mtime >= since]
    if not found:
        raise SystemExit(f"no {pattern} written under {out}")
    return max(found, key=lambda p: p.stat().st_mtime)


def cell(record: dict, name: str) -> dict:
    c = record["contenders"][name]
    f, m = c["figures"], c["memory"]
    pred = (m.get("planner_prediction") or {}).get("peak_bytes")
    return {
        "step_ms": f["unet_step"]["mean"] * 1e3,
        "step_p95_ms": f["unet_step"]["p95"] * 1e3,
        "decode_s": f["decode"]["mean"],
        "end_to_end_s": f["end_to_end"]["mean"],
        "videos_per_min": f["throughput"]["videos_per_min"],
        "device_added_bytes": m.get("device_added_bytes"),
        "planner_predicted_bytes": pred,
    }


def run_cell(
    shape: list[int],
    contender: str,
    vram: str | None,
    steps: list[list[str]],
    out: Path,
    pattern: str,
    picks: tuple[str, ...] = ("ours",),
) -> list[dict]:
    """One cell: its commands in order, then one row per contender of its record ("ours", "baseline"); any failure
    becomes the row's `error` (its cause), never the end of the run."""
    t0 = time.time()
    try:
        for argv in steps:
            t2vrt(*argv)
        rec = json.loads(newest(out, pattern, t0).read_text())
        rows = []
        for pick in picks:
            name = rec[pick]
            rows.append(
                {
                    "shape": shape,
                    "contender": contender if pick == "ours" else name,
                    "vram": vram if pick == "ours" else None,
                    **cell(rec, name),
                    "plan": rec["contenders"][name].get("selection"),
                }
            )
        return rows
    except (CellFailed, SystemExit, OSError, KeyError, ValueError) as e:
        cause = str(e) if isinstance(e, CellFailed) else f"{type(e).__name__}: {e}"
        return [{"shape": shape, "contender": contender, "vram": vram, "error": cause}]


def run_matrix(bundle: Path, budgets: list[str], common: list[str], out: Path) -> list[dict]:
    rows: list[dict] = []
    for frames, height, width in SHAPES:
        shape = [frames, height, width]
        size = ["--frames", str(frames), "--height", str(height), "--width", str(width)]
        for vram in budgets:
            rows += run_cell(
                shape,
                "tensorrt",
                vram,
                [
                    ["build", str(bundle), "--vram", vram, *size],
                    ["bench", str(bundle), "--backend", "tensorrt", "--baseline", "none", *size, *common],
                ],
                out,
                "bench-*-tensorrt-*.json",
            )
        # ONNX Runtime CUDA and the torch baseline (alternating) in their own process, apart from the TensorRT cells
        ort_torch = [["bench", str(bundle), "--backend", "onnxruntime-cuda", "--baseline", "torch", *size, *common]]
        rows += run_cell(
            shape, "onnxruntime-cuda", None, ort_torch, out, "bench-*-onnxruntime-cuda-*.json", ("ours", "baseline")
        )
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("bundle", type=Path)
    ap.add_argument("--budgets", default="24GiB,12GiB,8GiB,6GiB", help="VRAM budgets for `t2vrt build --vram`")
    ap.add_argument("--steps", type=int, default=25)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--out", type=Path, default=report.RESULTS_DIR)
    args = ap.parse_args()
    budgets = args.budgets.split(",")
    common = [
        "--steps",
        str(args.steps),
        "--warmup",
        str(args.warmup),
        "--repeat",
        str(args.repeat),
        "--out",
        str(args.out),
    ]
    rows = run_matrix(args.bundle, budgets, common, args.out)

    stamp = report.stamp().replace(":", "").replace("-", "")
    record = {
        "benchmark": "gpu_matrix",
        "date": report.stamp(),
        "machine": report.machine_info(),
        "versions": report.versions(),
        "steps": args.steps,
        "rows": rows,
    }
    report.write_json(args.out / f"gpu_matrix-{stamp}.json", record)
    lines = [
        f"# gpu_matrix, {record['date']}",
        "",
        f"Machine: {record['machine']['gpus']}",
        "",
        "| frames x H x W | contender | VRAM budget | step (ms) | p95 (ms) | decode (s) | end to end (s) | videos/min | device (MiB) | planned (MiB) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        if "error" in r:
            lines.append(
                f"| {r['shape'][0]}x{r['shape'][1]}x{r['shape'][2]} | {r['contender']} | {r['vram']} | {r['error']} |||||||"
            )
            continue
        mib = lambda b: f"{b / 2**20:.0f}" if b else "-"  # noqa: E731
        lines.append(
            f"| {r['shape'][0]}x{r['shape'][1]}x{r['shape'][2]} | {r['contender']} | {r['vram'] or '-'} | "
            f"{r['step_ms']:.1f} | {r['step_p95_ms']:.1f} | {r['decode_s']:.2f} | {r['end_to_end_s']:.2f} | "
            f"{r['videos_per_min']:.2f} | {mib(r['device_added_bytes'])} | {mib(r['planner_predicted_bytes'])} |"
        )
    (args.out / f"gpu_matrix-{stamp}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
