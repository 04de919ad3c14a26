"""Integrity: a changed byte is caught; a verdict cache outside the bundle spares re-hashing unchanged files."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from t2vrt.errors import UsageError
from t2vrt.safety import integrity
from t2vrt.safety.integrity import Expected, VerdictCache, verify


def _files(tmp_path: Path) -> list[Expected]:
    out = []
    for name, size in (("model.onnx", 5000), ("model.onnx.data", 300_000)):
        p = tmp_path / "bundle" / name
        p.parent.mkdir(exist_ok=True)
        data = os.urandom(size)
        p.write_bytes(data)
        out.append(Expected(p, hashlib.sha256(data).hexdigest(), size))
    return out


@pytest.fixture(autouse=True)
def _cache_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("T2VRT_CACHE_DIR", str(tmp_path / "cache"))


def test_a_flipped_byte_is_detected(tmp_path: Path) -> None:
    files = _files(tmp_path)
    verify(files)
    data = bytearray(files[1].path.read_bytes())
    data[123_456] ^= 0x01
    files[1].path.write_bytes(data)  # same size
    with pytest.raises(UsageError, match="model.onnx.data fails its sha256 check") as e:
        verify(files)
    assert "\n" not in str(e.value)
    files[0].path.write_bytes(b"short")
    with pytest.raises(UsageError, match="has 5 bytes, the manifest says 5000"):
        verify(files)
    files[0].path.unlink()
    with pytest.raises(UsageError, match="missing"):
        verify(files)


def test_cache_hit_does_not_rehash_and_a_change_does(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(integrity, "RACY_NS", 0)  # files written this instant count as settled
    files = _files(tmp_path)
    assert verify(files, VerdictCache()) == [f.path for f in files]  # first time: both hashed
    cache = VerdictCache()  # a new process: reads the cache file
    assert verify(files, cache) == []  # nothing re-hashed
    calls: list[Path] = []
    monkeypatch.setattr(integrity, "sha256_file", lambda p, *a: calls.append(p) or "0" * 64)
    assert verify(files, VerdictCache()) == [] and calls == []
    monkeypatch.undo()
    monkeypatch.setattr(integrity, "RACY_NS", 0)
    # Rewrite one file with a flipped byte and restore its mtime: ctime still changes, so it is re-hashed and caught.
    p = files[0].path
    st = p.stat()
    data = bytearray(p.read_bytes())
    data[0] ^= 0xFF
    p.write_bytes(data)
    os.utime(p, ns=(st.st_atime_ns, st.st_mtime_ns))
    cache = VerdictCache()
    with pytest.raises(UsageError, match="fails its sha256 check"):
        verify(files, cache)
    assert cache.hashed == [p]
    # The cache lives outside the bundle: nothing was written into it.
    assert sorted(x.name for x in p.parent.iterdir()) == ["model.onnx", "model.onnx.data"]
    assert (tmp_path / "cache" / integrity.CACHE_NAME).is_file()


def test_fresh_files_and_a_damaged_cache_are_only_rehashed(tmp_path: Path) -> None:
    files = _files(tmp_path)
    verify(files)  # just written: inside the racy window, so not remembered
    assert len(verify(files, VerdictCache())) == 2
    (tmp_path / "cache" / integrity.CACHE_NAME).parent.mkdir(parents=True, exist_ok=True)
    (tmp_path / "cache" / integrity.CACHE_NAME).write_text("{not json")
    assert len(verify(files, VerdictCache())) == 2  # a corrupt cache costs a re-hash, nothing else
