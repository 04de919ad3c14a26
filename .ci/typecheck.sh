#!/usr/bin/env bash
# Type-check the TensorRT-facing code against tensorrt-stubs (the real TensorRT cannot be installed here).
#
# tensorrt-stubs (pip install --no-deps tensorrt-stubs) cannot be used by mypy as shipped: the `tensorrt/` stub
# folder has no py.typed marker and the generated .pyi files have syntax errors. We copy the stub folders into
# .stubs/ (git-ignored), patch the copy, and point MYPYPATH at it. mypy.ini makes the t2vrt modules strict and
# silences errors inside the stub modules themselves. tests/test_tensorrt_typecheck.py proves the check can fail.
#
# Usage: .ci/typecheck.sh [extra mypy args]    (PYTHON=... to pick the interpreter; default .venv/bin/python)
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-.venv/bin/python}"
STUBS="${T2VRT_STUBS_DIR:-.stubs}"
"$PYTHON" - "$STUBS" <<'PY'
import pathlib, re, shutil, sys, importlib.util

dest = pathlib.Path(sys.argv[1])
spec = importlib.util.find_spec("tensorrt_stubs")
if spec is None or spec.origin is None:
    sys.exit("tensorrt-stubs is not installed: pip install --no-deps tensorrt-stubs")
site = pathlib.Path(spec.origin).parent.parent
marker = dest / ".patched-from"
source_id = str(site) + ":" + str((site / "tensorrt_bindings" / "tensorrt.pyi").stat().st_mtime)
if marker.is_file() and marker.read_text() == source_id:
    sys.exit(0)  # already prepared from these stubs
shutil.rmtree(dest, ignore_errors=True)
for pkg in ("tensorrt", "tensorrt_bindings"):
    shutil.copytree(site / pkg, dest / pkg, ignore=shutil.ignore_patterns("*.so", "*.py", "__pycache__"))
    (dest / pkg / "py.typed").write_text("")
for pyi in dest.rglob("*.pyi"):
    text = pyi.read_text()
    # `in` is a keyword: plugin methods name a parameter `in`.
    text = re.sub(r"\bin: ", "in_: ", text)
    # add_scale_nd: a non-default parameter after defaulted ones.
    text = text.replace("power: Weights = None, channel_axis: int)", "power: Weights = None, channel_axis: int = ...)")
    pyi.write_text(text)
# Every patched file must now parse: fail here, not with a confusing mypy error.
import ast
for pyi in dest.rglob("*.pyi"):
    ast.parse(pyi.read_text(), filename=str(pyi))
marker.write_text(source_id)
PY
export MYPYPATH="$PWD/$STUBS${MYPYPATH:+:$MYPYPATH}"
exec "$PYTHON" -m mypy --config-file mypy.ini "$@" t2vrt/engine t2vrt/runtime/tensorrt_backend.py t2vrt/runtime/cuda.py t2vrt/commands/plan.py t2vrt/commands/build.py \
    t2vrt/config t2vrt/components.py t2vrt/manifest.py t2vrt/runtime/samplers.py t2vrt/runtime/denoiser.py \
    t2vrt/runtime/backends.py t2vrt/safety
