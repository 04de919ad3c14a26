"""How a checkpoint's weights load into our modules: each file read once, renamed by the registry's key maps,
every key and shape checked, modules built on the meta device and given the tensors as they are."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn

from t2vrt.components import COMPONENTS, resolve_ref
from t2vrt.config import ModelConfig, preset
from t2vrt.errors import T2VError
from t2vrt.models.random_init import randomize_
from t2vrt.models.safe_load import load_lightning_state_dict, load_state_file
from t2vrt.models.source import Source, read_json_object

StateDict = dict[str, torch.Tensor]


class PartReader:
    """role ("unet", "text_encoder", "vae") -> the state dict its file holds, in its layout's names, read once."""

    def __init__(self, source: Source) -> None:
        self.source = source
        self._cache: dict[str, StateDict] = {}

    def __call__(self, part: str) -> StateDict:
        if part not in self._cache:
            self._cache[part] = _read(self.source, part)
        return self._cache[part]

    def drop(self, part: str) -> None:
        self._cache.pop(part, None)

    def done(self, component: str) -> None:
        """`component` is loaded: drop its file unless a later component (registry order) reads it too."""
        names = list(COMPONENTS)
        part = COMPONENTS[component].keys.part
        if not any(COMPONENTS[n].keys.part == part for n in names[names.index(component) + 1 :]):
            self.drop(part)


def _read(source: Source, part: str) -> StateDict:
    path = source.parts[part]
    if source.layout == "diffusers":
        return _diffusers_weights(path)
    if part == "text_encoder":  # open_clip's own loader unwraps these two the same way
        sd = load_state_file(path, unwrap=("state_dict",))
        if sd and all(k.startswith("module.") for k in sd):
            sd = {k[len("module.") :]: v for k, v in sd.items()}
        return sd
    if part == "vae":
        return load_lightning_state_dict(path)
    return load_state_file(path)


def _diffusers_weights(path: Path) -> StateDict:
    """One weights file, or every shard a *.index.json names, merged."""
    if not path.name.endswith(".index.json"):
        return load_state_file(path)
    out: StateDict = {}
    for shard in sorted(set(read_json_object(path).get("weight_map", {}).values())):
        out.update(load_state_file(path.parent / Path(str(shard)).name))
    return out


def our_state_dict(name: str, source: Source, cfg: ModelConfig, read: PartReader) -> StateDict:
    """One component's state dict in our module names, through the registry's key map for the source's layout."""
    c = COMPONENTS[name]
    if source.layout not in ("original", "diffusers"):
        raise T2VError(f"layout {source.layout!r} has no files to load")
    key_map = resolve_ref(c.keys.original if source.layout == "original" else c.keys.diffusers)
    file = source.parts[c.keys.part]
    try:
        return key_map(read(c.keys.part), c.config(cfg))
    except (KeyError, ValueError, TypeError) as e:
        msg = e.args[0] if e.args else type(e).__name__
        raise T2VError(f"{name} ({file.name}): {msg}") from None


def build_modules(cfg: ModelConfig, device: str | torch.device = "cpu") -> dict[str, nn.Module]:
    """Our modules for `cfg`, one per registry entry, uninitialised (on "meta": no memory, for counting and loading)."""
    with torch.device(device):
        return {name: c.build(cfg) for name, c in COMPONENTS.items()}


def tiny_model(seed: int = 0) -> dict[str, nn.Module]:
    """The embedded `tiny` model: preset "tiny", every weight drawn with a fixed per-component seed (eval mode)."""
    models = build_modules(preset("tiny"))
    for name, module in models.items():
        randomize_(module, seed=1000 * seed + COMPONENTS[name].tiny_seed)
        module.eval().requires_grad_(False)
    return models


def load_component(
    name: str, source: Source, cfg: ModelConfig, read: PartReader, dtype: torch.dtype = torch.float32
) -> nn.Module:
    """One component with the checkpoint's weights, in eval mode, cast once to `dtype`.

    The module is built on the meta device and takes the checkpoint's tensors as they are (assign=True; memory-mapped
    files stay mapped), after every key and shape has been checked; the first problem is a T2VError naming it."""
    c = COMPONENTS[name]
    if source.layout == "embedded":
        module = randomize_(c.build(preset(str(source.root))), seed=c.tiny_seed)
    else:
        with torch.device("meta"):
            module = c.build(cfg)
        state = our_state_dict(name, source, cfg, read)
        check_state(name, module, state, source.parts.get(c.keys.part))
        module.load_state_dict({k: _cast_aligned(v, dtype) for k, v in state.items()}, strict=True, assign=True)
        init_buffers = getattr(module, "init_buffers", None)
        if callable(init_buffers):
            init_buffers("cpu")  # non-persistent buffers (the causal mask) are not in any checkpoint
        _check_materialised(name, module)
    module.to(dtype).eval().requires_grad_(False)
    read.done(name)
    return module


def load_weights(
    source: Source, cfg: ModelConfig, read: PartReader, dtype: torch.dtype = torch.float32
) -> dict[str, nn.Module]:
    """Every component (see load_component); each file is dropped from `read` once no later component needs it."""
    return {name: load_component(name, source, cfg, read, dtype) for name in COMPONENTS}


def _cast_aligned(t: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Cast once; a tensor already in `dtype` is kept (memory-mapped) unless misaligned.

    safetensors places tensors at any byte offset; CPU kernels pick other vector paths for unaligned data and round
    differently (about 1e-8 here), so the same weights would give layout-dependent outputs. Copies are aligned.
    """
    if t.is_floating_point() and t.dtype != dtype:
        return t.to(dtype)
    return t.clone() if t.data_ptr() % 64 else t


def check_state(name: str, module: nn.Module, state: Mapping[str, torch.Tensor], file: Path | None = None) -> None:
    """Every key and shape of `module` against `state`; T2VError naming the first missing/mismatched/unexpected key."""
    where = f" ({file.name})" if file is not None else ""
    expected = module.state_dict()
    for key, ref in expected.items():
        if key not in state:
            raise T2VError(f"{name}{where}: checkpoint lacks key {key} (shape {list(ref.shape)}) that the model needs")
        got = state[key]
        if tuple(got.shape) != tuple(ref.shape):
            raise T2VError(
                f"{name}{where}: checkpoint key {key} has shape {list(got.shape)} but the model expects {list(ref.shape)}"
            )
        if not (got.is_floating_point() or got.dtype == ref.dtype):
            raise T2VError(f"{name}{where}: checkpoint key {key} has dtype {got.dtype}, expected a float tensor")
    for key in state:
        if key not in expected:
            raise T2VError(f"{name}{where}: unexpected checkpoint key {key} (the model has no such weight)")


def _check_materialised(name: str, module: nn.Module) -> None:
    for key, t in [*module.named_parameters(), *module.named_buffers()]:
        if t.is_meta:
            raise T2VError(f"{name}: {key} was not loaded (still on the meta device)")
