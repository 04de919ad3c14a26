"""Fixtures of the TensorRT-on-CPU tests: the tiny bundle's ORT sessions (the fake engines run them) and a fresh fake
TensorRT + CUDA runtime per test."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path
from typing import Any

import pytest
from fakes.cuda_runtime import FakeCudaRuntime, GiB, install
from fakes.tensorrt import FakeHostMemory, FakeTensorRT
from trt_helpers import GPU_NAME, TRT_VERSION, Env

from t2vrt.manifest import load_manifest
from t2vrt.runtime.onnxruntime_backend import make_session


@pytest.fixture(scope="module")
def sessions(tiny_bundle: Path) -> dict[str, Any]:
    m = load_manifest(tiny_bundle)
    return {c: make_session(m.components[c].file("fp32").path) for c in m.components}


@pytest.fixture
def env(tmp_path: Path, tiny_bundle: Path, sessions: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> Any:
    bundle = tmp_path / "tiny"
    shutil.copytree(tiny_bundle, bundle, ignore=shutil.ignore_patterns("engines"))
    cuda = FakeCudaRuntime(name=GPU_NAME, total=24 * GiB)
    fake = FakeTensorRT(cuda, sessions, TRT_VERSION)
    install(monkeypatch, cuda)
    monkeypatch.setitem(sys.modules, "tensorrt", fake.module)
    FakeHostMemory.copies = 0
    return Env(bundle, cuda, fake)
