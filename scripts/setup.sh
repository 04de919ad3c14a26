#!/usr/bin/env bash
# Create .venv with t2vrt and everything the tests and the export need (idempotent; ~6 GB, ~2 min the first time).
#
# Torch: pip resolves torch 2.14.1 + torchvision 0.29.1 (CUDA builds that also run on CPU). We do NOT pin the smaller
# CPU-only torch 2.13.0: open_clip_torch pulls torchvision, and PyPI's torchvision fails to import beside that build
# ("operator torchvision::nms does not exist"), which breaks open_clip and diffusers.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
stamp=.venv/.t2vrt-installed
want=$(sha256sum pyproject.toml | cut -c1-16)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  .venv/bin/python -m pip install -q --upgrade pip
  .venv/bin/python -m pip install -q "torch==2.14.1" "torchvision==0.29.1"
  .venv/bin/python -m pip install -q -e ".[dev]"
  # Type stubs for the TensorRT API (the real tensorrt cannot be installed here); --no-deps because the stubs
  # package depends on tensorrt itself.
  .venv/bin/python -m pip install -q --no-deps "tensorrt-stubs==10.13.0.35.1"
  echo "$want" > "$stamp"
fi
