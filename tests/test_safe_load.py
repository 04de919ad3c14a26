"""Untrusted weight files: nothing pickled ever runs, Lightning checkpoints load without pytorch_lightning."""

from __future__ import annotations

import builtins
import importlib
import os
import pickle
import sys
from pathlib import Path

import pytest
import torch

from t2vrt.errors import T2VError
from t2vrt.models.safe_load import (
    Inert,
    RefusedPickle,
    load_lightning_state_dict,
    load_state_file,
    read_torch_zip_restricted,
)


class _System:
    """Unpickling this would run a shell command that creates the marker file."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


class _Open:
    """Unpickling this would create the marker file through builtins.open (no shell)."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (builtins.open, (str(self.marker), "w"))


def _tensors(seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    base = torch.randn(6, 5, generator=g)
    return {
        "a.weight": base,
        "a.view": base[2],  # shares a.weight's storage, at an offset
        "b.half": torch.randn(7, generator=g).half(),
        "b.bf16": torch.randn(3, 2, generator=g).bfloat16(),
        "c.long": torch.arange(5),
        "d.scalar": torch.tensor(3.5),
    }


@pytest.mark.parametrize("evil", [_System, _Open])
def test_load_state_file_refuses_code(tmp_path, evil):
    marker = tmp_path / "MARKER"
    path = tmp_path / "evil.pth"
    torch.save({"w": torch.ones(2), "x": evil(marker)}, path)
    with pytest.raises(RefusedPickle) as e:
        load_state_file(path)
    msg = str(e.value)
    print("error:", msg)
    assert "evil.pth" in msg and "refuses to unpickle" in msg
    assert ("system" in msg) if evil is _System else ("open" in msg)
    assert "\n" not in msg
    assert not marker.exists()


def test_lightning_checkpoint_with_code_loads_tensors_only(tmp_path):
    marker = tmp_path / "MARKER"
    sd = _tensors()
    ckpt = {
        "epoch": 3,
        "global_step": 1234,
        "state_dict": {f"first_stage_model.{k}": v for k, v in sd.items()} | {"loss.logvar": torch.zeros(())},
        "hooks": [_System(marker), _Open(marker)],
        "callbacks": {_Open: {"best_model_score": torch.tensor(0.5)}},  # a class as a key, like Lightning 1.x
    }
    path = tmp_path / "light.ckpt"
    torch.save(ckpt, path)
    with pytest.raises(RefusedPickle):
        load_state_file(path)
    got = load_lightning_state_dict(path)
    assert not marker.exists()
    assert set(got) == {f"first_stage_model.{k}" for k in sd}
    for k, v in sd.items():
        t = got[f"first_stage_model.{k}"]
        assert t.dtype == v.dtype and t.shape == v.shape and torch.equal(t, v), k
    # The placeholders hold what the pickle gave them and nothing ran.
    raw = read_torch_zip_restricted(path)
    assert all(isinstance(h, Inert) for h in raw["hooks"])
    assert raw["hooks"][0].args == (f"touch {marker}",)
    (cls,) = raw["callbacks"]
    assert issubclass(cls, Inert) and "_Open" in cls._pickled_name
    assert not marker.exists()


def test_lightning_checkpoint_whose_classes_are_gone(tmp_path):
    """A checkpoint naming a module that no longer exists (as pytorch_lightning is absent) still loads."""
    name = "t2vrt_gone_module_for_test"
    (tmp_path / f"{name}.py").write_text(
        "class ModelCheckpoint:\n    def __init__(self):\n        self.dirpath = 'logs'\n"
        "class AttributeDict(dict):\n    pass\n"
    )
    sys.path.insert(0, str(tmp_path))
    try:
        mod = importlib.import_module(name)
        hp = mod.AttributeDict(lr=1e-4, ddconfig={"ch": 128})
        sd = _tensors(1)
        ckpt = {
            "state_dict": {f"first_stage_model.{k}": v for k, v in sd.items()},
            "callbacks": {mod.ModelCheckpoint: {"dirpath": "x"}},
            "callback_object": mod.ModelCheckpoint(),
            "hyper_parameters": hp,
        }
        path = tmp_path / "gone.pth"
        torch.save(ckpt, path)
    finally:
        sys.path.remove(str(tmp_path))
        sys.modules.pop(name, None)
        (tmp_path / f"{name}.py").unlink()
    with pytest.raises(ModuleNotFoundError):
        importlib.import_module(name)
    got = load_lightning_state_dict(path)
    assert all(torch.equal(got[f"first_stage_model.{k}"], v) for k, v in sd.items())
    raw = read_torch_zip_restricted(path)
    assert isinstance(raw["hyper_parameters"], Inert) and raw["hyper_parameters"]["lr"] == 1e-4
    assert raw["callback_object"].state == {"dirpath": "logs"}
    assert name not in sys.modules


def test_lightning_without_state_dict_or_prefix(tmp_path):
    path = tmp_path / "x.pth"
    torch.save({"model": {"w": torch.ones(1)}}, path)
    with pytest.raises(T2VError, match="no top-level 'state_dict'"):
        load_lightning_state_dict(path)
    torch.save({"state_dict": {"model.w": torch.ones(1)}}, path)
    with pytest.raises(T2VError, match=r"no tensors under state_dict\['first_stage_model\."):
        load_lightning_state_dict(path)


def test_unwrap_only_when_asked(tmp_path):
    path = tmp_path / "wrapped.bin"
    torch.save({"state_dict": {"w": torch.ones(3)}}, path)
    assert torch.equal(load_state_file(path, unwrap=("state_dict",))["w"], torch.ones(3))
    with pytest.raises(T2VError, match="entry 'state_dict' is a dict, not a tensor"):
        load_state_file(path)


def _truncate(path: Path, keep: float = 0.5) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


def test_truncated_and_corrupt_files(tmp_path):
    from safetensors.torch import save_file

    sd = {"w": torch.randn(64, 64), "b": torch.randn(64)}
    pth, st = tmp_path / "m.pth", tmp_path / "m.safetensors"
    torch.save(sd, pth)
    save_file(sd, str(st))
    light = tmp_path / "light.pth"
    torch.save({"state_dict": {"first_stage_model.w": sd["w"]}, "cb": _System(tmp_path / "M")}, light)
    for path in (pth, st, light):
        _truncate(path)
        loader = load_lightning_state_dict if path is light else load_state_file
        with pytest.raises(T2VError) as e:
            loader(path)
        print(f"{path.name}: {e.value}")
        assert path.name in str(e.value) and "\n" not in str(e.value)
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"\x00not a torch file at all" * 10)
    with pytest.raises(T2VError, match="garbage.pth"):
        load_state_file(garbage)
    with pytest.raises(T2VError, match="does not exist"):
        load_state_file(tmp_path / "missing.bin")
    with pytest.raises(T2VError, match="unknown format"):
        load_state_file(garbage.rename(tmp_path / "weights.npz"))


def test_restricted_unpickler_rejects_foreign_persistent_ids(tmp_path):
    """A pickle whose persistent id is not a torch storage record is an error, not a call."""
    import io
    import zipfile

    class P(pickle.Pickler):
        def persistent_id(self, obj):
            return ("storage", "not a storage type", "0", "cpu", 1) if isinstance(obj, bytes) else None

    buf = io.BytesIO()
    P(buf, protocol=2).dump({"state_dict": {"first_stage_model.w": b"x"}})
    path = tmp_path / "odd.pth"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("odd/data.pkl", buf.getvalue())
    with pytest.raises(T2VError, match="unsupported persistent id"):
        read_torch_zip_restricted(path)
