"""Confinement: every path an untrusted file names resolves inside its root, or is one UsageError line."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from t2vrt.errors import UsageError
from t2vrt.safety.paths import confine


@pytest.fixture()
def root(tmp_path: Path) -> Path:
    r = tmp_path / "bundle"
    (r / "unet" / "fp32").mkdir(parents=True)
    (r / "unet" / "fp32" / "model.onnx").write_bytes(b"graph")
    (tmp_path / "outside.onnx").write_bytes(b"elsewhere")
    os.symlink(tmp_path / "outside.onnx", r / "escape.onnx")  # a file symlink leaving the bundle
    os.symlink(tmp_path, r / "up")  # a directory symlink leaving it
    os.symlink("unet/fp32/model.onnx", r / "alias.onnx")  # a symlink that stays inside
    return r


@pytest.mark.parametrize(
    "rel, why",
    [
        ("/etc/passwd", "is absolute"),
        ("C:/Windows/system32", "is absolute"),
        ("../outside.onnx", "contains '..'"),
        ("unet/../../outside.onnx", "contains '..'"),
        ("unet\\fp32\\model.onnx", "backslash"),
        ("escape.onnx", "leaves the bundle through a symlink"),
        ("up/outside.onnx", "leaves the bundle through a symlink"),
        ("", "not a non-empty string"),
        (7, "not a non-empty string"),
        ("a\x00b", "NUL"),
    ],
)
def test_escaping_paths_are_refused(root: Path, rel: object, why: str) -> None:
    with pytest.raises(UsageError, match=why) as e:
        confine(root, rel, "unet fp32 graph", "manifest.json")
    msg = str(e.value)
    assert "\n" not in msg and "unet fp32 graph" in msg and "manifest.json" in msg


def test_paths_inside_resolve(root: Path) -> None:
    assert confine(root, "unet/fp32/model.onnx") == root / "unet/fp32/model.onnx"
    assert confine(root, "alias.onnx").resolve() == (root / "unet/fp32/model.onnx").resolve()  # stays inside: fine
    assert confine(root, "not/yet/there.onnx") == root / "not/yet/there.onnx"
    # The bundle directory itself may be reached through a symlink.
    link = root.parent / "link-to-bundle"
    os.symlink(root, link)
    assert confine(link, "unet/fp32/model.onnx") == link / "unet/fp32/model.onnx"
