"""The CI smoke benchmark: `t2vrt bench` on the embedded tiny model, then a check that the JSON has every figure.

Speed is not asserted (CI machines vary); the record is what a full run writes, at toy sizes, in seconds.
Usage: .venv/bin/python benchmarks/cpu_quick.py [--out benchmarks/results] [--work DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from t2vrt.benchmark import report
from t2vrt.benchmark.run import BenchOptions, missing_figures, run_bench, stage_means, write_outputs


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=report.RESULTS_DIR)
    ap.add_argument("--work", type=Path, default=Path(os.environ.get("TMPDIR", "/tmp")) / "t2vrt-bench-quick")
    ap.add_argument("--baseline", choices=("torch", "none"), default="torch")
    args = ap.parse_args()

    from t2vrt.export.bundle import ExportOptions, export_bundle

    bundle = args.work / "tiny"
    t0 = time.perf_counter()
    export_bundle(ExportOptions(model="tiny", out=bundle, precision="fp32"))  # reuses unchanged components
    print(f"tiny bundle ready in {time.perf_counter() - t0:.1f} s: {bundle}", file=sys.stderr)
    record = run_bench(
        BenchOptions(
            bundle=bundle, backend="onnxruntime-cpu", baseline=args.baseline, frames=4, steps=3, warmup=1, repeat=2
        ),
        progress=lambda s: print(f"  {s}", file=sys.stderr),
    )
    paths = write_outputs(record, args.out)
    print(
        report.stage_table(
            stage_means(record), ratio_of=(record["ours"], record["baseline"]) if "baseline" in record else None
        )
    )
    missing = missing_figures(json.loads(paths["json"].read_text()))
    if missing:
        print(f"FAILED: the record lacks {len(missing)} figures: {', '.join(missing[:10])}", file=sys.stderr)
        return 1
    print(f"ok: every figure present; wrote {', '.join(map(str, paths.values()))}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
