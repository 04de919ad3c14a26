#!/usr/bin/env bash
# The GPU acceptance run in one command: tests/gpu (tiny engines, then the full-size ms-1.7b bundle with random
# weights in every planner mode) and the benchmark matrix, summarised in ONE JSON report under benchmarks/results/
# (attach it to a bug report). Needs an NVIDIA GPU, `pip install '.[gpu,export]'` (or '.[gpu-cu12,export]') and
# onnxruntime-gpu in place of onnxruntime. Exit code: non-zero when any test failed or the matrix could not run.
#
# Usage: bash scripts/gpu-check.sh BUNDLE   (BUNDLE: a full-size ms-1.7b bundle exported with --precision both, e.g.
#        from random weights as in benchmarks/results/fullsize-export-20261124.md; about 20 GB of disk)
set -uo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-.venv/bin/python}"
[ -x "$PY" ] || PY=python3
STAMP="$(date -u +%Y%m%dT%H%M%SZ)"
WORK=".gpu-check"
OUT="benchmarks/results"
mkdir -p "$WORK" "$OUT"
BUNDLE="${1:-}"
if [ -z "$BUNDLE" ] || [ ! -f "$BUNDLE/manifest.json" ]; then
  echo "usage: bash scripts/gpu-check.sh BUNDLE (a full-size ms-1.7b bundle with fp16 and fp32 graphs; '${BUNDLE}' is not one)" >&2
  exit 2
fi
export T2VRT_FULLSIZE_BUNDLE="$BUNDLE"
"$PY" -m pytest -m gpu tests/gpu -v -rA --junitxml="$WORK/gpu-tests.xml" 2>&1 | tee "$WORK/gpu-tests.log"
TESTS_RC=${PIPESTATUS[0]}
"$PY" benchmarks/gpu_matrix.py "$BUNDLE" --out "$WORK/matrix" 2>&1 | tee "$WORK/matrix.log"
MATRIX_RC=${PIPESTATUS[0]}
"$PY" - "$OUT/gpu-check-$STAMP.json" "$WORK" "$TESTS_RC" "$MATRIX_RC" <<'PY'
import json, sys, pathlib, xml.etree.ElementTree as ET
from t2vrt.benchmark import report
from t2vrt.runtime import cuda
out, work, tests_rc, matrix_rc = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
cases = []
xml = work / "gpu-tests.xml"
if xml.is_file():
    for c in ET.parse(xml).iter("testcase"):
        state, msg = "passed", ""
        for tag in ("failure", "error", "skipped"):
            e = c.find(tag)
            if e is not None:
                state, msg = tag, (e.get("message") or "")[:2000]
        cases.append({"test": f"{c.get('classname')}::{c.get('name')}", "state": state, "message": msg,
                      "seconds": float(c.get("time") or 0)})
matrices = sorted((work / "matrix").glob("gpu_matrix-*.json"))
gpu = cuda.probe()
record = {"benchmark": "gpu-check", "date": report.stamp(), "machine": report.machine_info(), "versions": report.versions(),
          "gpu": gpu.__dict__ if not isinstance(gpu, str) else {"problem": gpu},
          "tests_exit_code": tests_rc, "matrix_exit_code": matrix_rc, "tests": cases,
          "matrix": json.loads(matrices[-1].read_text()) if matrices else None}
report.write_json(out, record)
print(f"report: {out}")
PY
[ "$TESTS_RC" = 0 ] && [ "$MATRIX_RC" = 0 ]
