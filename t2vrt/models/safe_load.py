"""Reading untrusted weight files: safetensors, or torch pickles that are never allowed to run code.

`load_state_file` takes .safetensors, or .pth/.bin/.pt through torch's weights-only unpickler. The ModelScope
VQGAN_autoencoder.pth is a PyTorch-Lightning checkpoint whose pickle names pytorch_lightning classes (its callback
states are keyed by the callback class), which the weights-only unpickler refuses. `load_lightning_state_dict`
reads such a file with our own restricted unpickler: tensors are rebuilt by torch's own rebuild functions, every
other global becomes an inert placeholder class that is never imported, so nothing in the file can run.
"""

from __future__ import annotations

import collections
import io
import mmap
import pickle
import re
import struct
import zipfile
from pathlib import Path
from typing import Any

import torch

from t2vrt.errors import T2VError

STATE_SUFFIXES = (".safetensors", ".pth", ".bin", ".pt", ".ckpt")


def load_state_file(path: str | Path, unwrap: tuple[str, ...] = ()) -> dict[str, torch.Tensor]:
    """A flat {name: tensor} from a .safetensors or torch file, memory-mapped where the format allows.

    `unwrap` names the top-level keys ("state_dict", "model") that a format is documented to nest its weights under;
    the first one present is taken. Anything but a flat dict of tensors is an error.
    """
    path = Path(path)
    if not path.is_file():
        raise T2VError(f"weight file {str(path)!r} does not exist")
    if path.suffix == ".safetensors":
        return _load_safetensors(path)
    if path.suffix not in STATE_SUFFIXES:
        raise T2VError(f"weight file {str(path)!r}: unknown format {path.suffix!r}; expected one of {STATE_SUFFIXES}")
    obj = _torch_load_weights_only(path)
    if isinstance(obj, dict):
        for key in unwrap:
            if isinstance(obj.get(key), dict):
                obj = obj[key]
                break
    return _flat_tensors(obj, path)


def _load_safetensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(str(path), device="cpu")  # memory-mapped: pages are read when touched
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise T2VError(f"cannot read safetensors file {str(path)!r}: {_one_line(e)}") from None


def _torch_load_weights_only(path: Path) -> Any:
    """torch.load with weights_only=True; a refused global becomes one line naming the file and the global."""
    mmap_ok = zipfile.is_zipfile(path)  # mmap needs the zip format; legacy pickles are read whole
    if not mmap_ok:
        with open(path, "rb") as f:
            if f.read(4) == b"PK\x03\x04":
                raise T2VError(f"torch file {str(path)!r} is truncated or corrupt: its zip archive has no directory")
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap_ok)
    except pickle.UnpicklingError as e:
        found = re.search(r"GLOBAL (\S+)", str(e))
        what = found.group(1) if found else _one_line(e).removeprefix("Weights only load failed. ")
        raise RefusedPickle(
            f"{str(path)!r}: the weights-only loader refuses to unpickle {what} (a checkpoint may only hold tensors)"
        ) from None
    except (RuntimeError, OSError, EOFError, ValueError, zipfile.BadZipFile) as e:
        raise T2VError(f"cannot read torch file {str(path)!r} (corrupt or truncated?): {_one_line(e)}") from None


class RefusedPickle(T2VError):
    """The weights-only unpickler met a global it does not allow (a class or function, not a tensor)."""


def _flat_tensors(obj: Any, path: Path) -> dict[str, torch.Tensor]:
    if not isinstance(obj, dict):
        raise T2VError(f"{str(path)!r} holds a {type(obj).__name__}, not a state dict of tensors")
    for key, value in obj.items():
        if not isinstance(value, torch.Tensor):
            raise T2VError(f"{str(path)!r}: entry {key!r} is a {type(value).__name__}, not a tensor")
    return dict(obj)


def _one_line(e: BaseException) -> str:
    lines = [s.strip() for s in str(e).splitlines() if s.strip()]
    return lines[-1] if lines else type(e).__name__


# ---------------------------------------------------------------------------------------------------------------
# PyTorch-Lightning checkpoints


def load_lightning_state_dict(path: str | Path, prefix: str = "first_stage_model.") -> dict[str, torch.Tensor]:
    """The tensors of checkpoint['state_dict'] whose names start with `prefix` (names kept whole).

    Tries torch's weights-only loader first; a file naming other classes (pytorch_lightning's) is read with the
    restricted unpickler below. pytorch_lightning is never imported and no pickled callable is ever run.
    """
    path = Path(path)
    if not path.is_file():
        raise T2VError(f"weight file {str(path)!r} does not exist")
    try:
        ckpt = _torch_load_weights_only(path)
    except RefusedPickle:
        ckpt = read_torch_zip_restricted(path)
    state = ckpt.get("state_dict") if isinstance(ckpt, dict) else None
    if not isinstance(state, dict):
        raise T2VError(f"{str(path)!r} is not a Lightning checkpoint: no top-level 'state_dict' dict")
    out = {k: v for k, v in state.items() if isinstance(k, str) and k.startswith(prefix)}
    if not out:
        raise T2VError(f"{str(path)!r}: no tensors under state_dict[{prefix!r}...]")
    return _flat_tensors(out, path)


class Inert(dict):
    """Stands in for any class or function the restricted unpickler will not import.

    It accepts whatever the pickle does to it (construct, reduce, setstate, setitems, append) and only stores it.
    Subclassing dict keeps SETITEMS working for pickled dict subclasses (Lightning's AttributeDict).
    """

    _pickled_name = "?"

    def __new__(cls, *args: Any, **kwargs: Any) -> Inert:
        return super().__new__(cls)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__()
        self.args = args
        self.items_appended: list = []
        self.state: Any = None

    def __setstate__(self, state: Any) -> None:
        self.state = state

    def append(self, item: Any) -> None:
        self.items_appended.append(item)

    def extend(self, items: Any) -> None:
        self.items_appended.extend(items)

    def __hash__(self) -> int:  # type: ignore[override]
        return id(self)

    def __repr__(self) -> str:
        return f"<inert {self._pickled_name}>"


class _StorageType:
    """What `torch.FloatStorage` & co. unpickle to: only the dtype, used by persistent_load."""

    def __init__(self, dtype: torch.dtype) -> None:
        self.dtype = dtype


_STORAGE_TYPES = {
    f"{name}Storage": dtype
    for name, dtype in {
        "Float": torch.float32,
        "Double": torch.float64,
        "Half": torch.float16,
        "BFloat16": torch.bfloat16,
        "Long": torch.int64,
        "Int": torch.int32,
        "Short": torch.int16,
        "Char": torch.int8,
        "Byte": torch.uint8,
        "Bool": torch.bool,
    }.items()
}
_TORCH_FUNCTIONS = {
    ("torch._utils", "_rebuild_tensor"): torch._utils._rebuild_tensor,
    ("torch._utils", "_rebuild_tensor_v2"): torch._utils._rebuild_tensor_v2,
    ("torch._utils", "_rebuild_parameter"): torch._utils._rebuild_parameter,
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("torch", "Size"): torch.Size,
    ("torch", "device"): torch.device,
    ("builtins", "set"): set,
    ("builtins", "frozenset"): frozenset,
    ("builtins", "complex"): complex,
    ("builtins", "slice"): slice,
}
_DTYPES = {str(d).removeprefix("torch."): d for d in _STORAGE_TYPES.values()}


class _RestrictedUnpickler(pickle.Unpickler):
    def __init__(self, file: Any, storages: _ZipStorages) -> None:
        super().__init__(file)
        self._storages = storages
        self._placeholders: dict[tuple[str, str], type] = {}

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _TORCH_FUNCTIONS:
            return _TORCH_FUNCTIONS[(module, name)]
        if module == "torch" and name in _STORAGE_TYPES:
            return _StorageType(_STORAGE_TYPES[name])
        if module == "torch" and name in _DTYPES:
            return _DTYPES[name]
        # Anything else (pytorch_lightning callbacks, hparams, os.system...) becomes a fresh placeholder class.
        key = (module, name)
        if key not in self._placeholders:
            self._placeholders[key] = type(name, (Inert,), {"_pickled_name": f"{module}.{name}"})
        return self._placeholders[key]

    def persistent_load(self, pid: Any) -> Any:
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage" and isinstance(pid[1], _StorageType)):
            raise pickle.UnpicklingError(f"unsupported persistent id {pid!r:.80}")
        _, storage_type, key, _location, numel = pid
        return self._storages.get(str(key), storage_type.dtype, int(numel))


class _ZipStorages:
    """Storages of a torch zip archive, served as views of one copy-on-write mmap of the file."""

    def __init__(self, path: Path, zf: zipfile.ZipFile, prefix: str) -> None:
        self.path, self.zf, self.prefix = path, zf, prefix
        with open(path, "rb") as f:
            self.map = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_COPY)  # private: writes never reach the file
        self.cache: dict[str, torch.storage.TypedStorage] = {}

    def get(self, key: str, dtype: torch.dtype, numel: int) -> torch.storage.TypedStorage:
        if key in self.cache:
            return self.cache[key]
        info = self.zf.getinfo(f"{self.prefix}data/{key}")
        if info.compress_type != zipfile.ZIP_STORED:
            raise T2VError(f"{str(self.path)!r}: storage {key} is compressed; torch archives store tensors raw")
        nbytes = numel * torch.empty((), dtype=dtype).element_size()
        if info.file_size != nbytes:
            raise T2VError(f"{str(self.path)!r}: storage {key} holds {info.file_size} bytes, expected {nbytes}")
        # Local file header: 30 fixed bytes, then the name and the extra field (torch pads it to align the data).
        header = self.map[info.header_offset : info.header_offset + 30]
        name_len, extra_len = struct.unpack("<HH", header[26:30])
        start = info.header_offset + 30 + name_len + extra_len
        if start + nbytes > len(self.map):
            raise T2VError(f"{str(self.path)!r} is truncated: storage {key} runs past the end of the file")
        data = torch.frombuffer(self.map, dtype=torch.uint8, count=nbytes, offset=start) if nbytes else None
        untyped = data.untyped_storage() if data is not None else torch.UntypedStorage(0)
        typed = torch.storage.TypedStorage(wrap_storage=untyped, dtype=dtype, _internal=True)
        self.cache[key] = typed
        return typed


def read_torch_zip_restricted(path: str | Path) -> Any:
    """Unpickle a torch zip archive allowing only tensors and inert containers; every other global is a placeholder."""
    path = Path(path)
    try:
        with zipfile.ZipFile(path) as zf:
            return _unpickle_archive(path, zf)
    except T2VError:
        raise
    except (
        zipfile.BadZipFile,
        pickle.UnpicklingError,
        EOFError,
        KeyError,
        ValueError,
        TypeError,
        OSError,
        RuntimeError,
        AttributeError,
        IndexError,
    ) as e:
        raise T2VError(f"cannot read torch file {str(path)!r} (corrupt or truncated?): {_one_line(e)}") from None


def _unpickle_archive(path: Path, zf: zipfile.ZipFile) -> Any:
    pkl_names = [n for n in zf.namelist() if n.endswith("/data.pkl") and n.count("/") == 1]
    if len(pkl_names) != 1:
        raise T2VError(f"{str(path)!r} is not a torch zip archive (no single <name>/data.pkl)")
    prefix = pkl_names[0][: -len("data.pkl")]
    if f"{prefix}byteorder" in zf.namelist() and zf.read(f"{prefix}byteorder") != b"little":
        raise T2VError(f"{str(path)!r} was saved big-endian; only little-endian archives are supported")
    storages = _ZipStorages(path, zf, prefix)
    return _RestrictedUnpickler(io.BytesIO(zf.read(pkl_names[0])), storages).load()
