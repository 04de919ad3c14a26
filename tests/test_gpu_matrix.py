"""benchmarks/gpu_matrix.py: one failing cell must not lose the run, and its row says the command's real cause.

The t2vrt commands are the only thing replaced (subprocess.run): a build that does not fit fails with its own line,
a bench writes the record a real one would. Against the old script the first failing bench ended the whole run."""

from __future__ import annotations

import importlib.util
import json
import subprocess
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _load() -> Any:
    spec = importlib.util.spec_from_file_location("gpu_matrix", ROOT / "benchmarks" / "gpu_matrix.py")
    assert spec and spec.loader
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _figures() -> dict[str, Any]:
    s = {"mean": 0.5, "p95": 0.6}
    return {
        "figures": {"unet_step": s, "decode": s, "end_to_end": s, "throughput": {"videos_per_min": 2.0}},
        "memory": {"device_added_bytes": 1 << 30},
        "selection": "x",
    }


def test_a_failing_cell_is_labelled_and_the_run_goes_on(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    gm = _load()
    calls: list[list[str]] = []

    def run(cmd: list[str], **kw: Any) -> subprocess.CompletedProcess[str]:
        args = cmd[3:]
        calls.append(args)
        if args[0] == "build" and "6GiB" in args:
            return subprocess.CompletedProcess(
                cmd, 1, "", "building...\nt2vrt: error: 24 frames at 576x320 does not fit in 6.00 GiB\n"
            )
        if args[0] == "bench" and "onnxruntime-cuda" in args and "16" in args:
            return subprocess.CompletedProcess(cmd, 1, "", "t2vrt: error: ONNX Runtime's CUDA provider did not load\n")
        if args[0] == "bench":
            backend = args[args.index("--backend") + 1]
            rec = {"ours": backend, "contenders": {backend: _figures()}}
            if "torch" in args:
                rec["baseline"] = "torch-fp16"
                rec["contenders"]["torch-fp16"] = _figures()
            (tmp_path / f"bench-ms-{backend}-{len(calls)}.json").write_text(json.dumps(rec))
        return subprocess.CompletedProcess(cmd, 0, "", "")

    monkeypatch.setattr(gm.subprocess, "run", run)
    rows = gm.run_matrix(Path("b"), ["8GiB", "6GiB"], [], tmp_path)
    by = {(tuple(r["shape"]), r["contender"], r["vram"]): r for r in rows}
    assert (
        by[((16, 256, 256), "onnxruntime-cuda", None)]["error"]
        == "exit 1: t2vrt: error: ONNX Runtime's CUDA provider did not load"
    )
    assert by[((24, 320, 576), "tensorrt", "6GiB")]["error"].endswith("does not fit in 6.00 GiB")
    assert by[((24, 320, 576), "tensorrt", "8GiB")]["step_ms"] == 500.0  # cells after a failure still ran
    assert by[((24, 320, 576), "torch-fp16", None)]["step_ms"] == 500.0  # the baseline, from its own process
    assert [c[0] for c in calls].count("bench") == 4  # per shape: the 8GiB TensorRT cell + ORT (6GiB never builds)
