"""Shared fixtures: one tiny bundle per test session (exporting it costs tens of seconds on 2 cores)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests never reach a hub


@pytest.fixture(scope="session")
def tiny_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The embedded tiny model exported in both precisions (read-only for tests: copy it before changing it)."""
    from t2vrt.export.bundle import ExportOptions, export_bundle

    out = tmp_path_factory.mktemp("bundles") / "tiny"
    return export_bundle(ExportOptions(model="tiny", out=out, precision="both"))


@pytest.fixture(scope="session")
def tiny_models():
    """The embedded tiny model's PyTorch modules (fp32, eval)."""
    from t2vrt.models import checkpoint

    source = checkpoint.resolve("tiny")
    return checkpoint.load_model(source)
