"""The TensorRT-facing code type-checks against (patched) tensorrt-stubs, and the check can fail.

TensorRT cannot be installed here, so this is what stands between a misspelled TensorRT call and a GPU user.
.ci/typecheck.sh prepares the stub copy and runs mypy; passing it an extra file checks that file too."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / ".ci" / "typecheck.sh"

pytestmark = pytest.mark.skipif(
    shutil.which("bash") is None or subprocess.run([sys.executable, "-c", "import mypy, tensorrt_stubs"]).returncode,
    reason="needs bash, mypy and tensorrt-stubs (pip install mypy; pip install --no-deps tensorrt-stubs)",
)


def _typecheck(*extra: str) -> subprocess.CompletedProcess[str]:
    env = {"PYTHON": sys.executable, "PATH": "/usr/bin:/bin"}
    return subprocess.run(["bash", str(SCRIPT), *extra], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)


def test_tensorrt_code_type_checks() -> None:
    r = _typecheck()
    print("\n" + r.stdout + r.stderr)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "Success: no issues found" in r.stdout


def test_the_check_catches_tensorrt_api_mistakes(tmp_path: Path) -> None:
    bad = tmp_path / "bad_trt.py"
    bad.write_text(
        "import tensorrt as trt\n\n\n"
        "def f(engine: trt.ICudaEngine, config: trt.IBuilderConfig) -> int:\n"
        "    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, '1GiB')\n"  # wrong argument type
        "    ctx = engine.create_execution_context(trt.ExecutionContextAllocationStrategy.USER_MANAGED)\n"
        "    ctx.execute_async_v4(0)\n"  # no such method
        "    return engine.device_memory_size_v3\n"  # misspelled attribute
    )
    r = _typecheck(str(bad))
    print("\n" + r.stdout)
    assert r.returncode != 0
    assert 'has no attribute "device_memory_size_v3"' in r.stdout
    assert 'has no attribute "execute_async_v4"' in r.stdout
    assert "set_memory_pool_limit" in r.stdout and "arg-type" in r.stdout
