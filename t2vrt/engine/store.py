"""Engines on disk: where `t2vrt build` puts them, how they are keyed, and which are stale. No GPU, no TensorRT.

    BUNDLE/engines/<gpu>-<mem>g-sm<cc>-trt<version>/  one folder per target: plans never cross GPUs, card sizes
                                                      (an RTX 3060 comes with 8 or 12 GB) or TensorRT versions
        plan.json                                    the plan built for, with measured memory, and its engines
        <component>-<shapes>-<hash>.plan             the serialised engine
        <component>-<shapes>-<hash>.json             its key: target, profile, ONNX sha256, build settings, sizes

The hash covers everything that changes the engine's bytes except the GPU and TensorRT (the folder): component,
profile, the fp16 ONNX's sha256 AND its weights key (a re-export may change only model.onnx.data), weight streaming
and the builder optimisation level. An engine whose ONNX sha256 or weights key no longer matches the bundle, or that
its folder's plan.json does not list, is stale; so are leftover temp files.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from t2vrt.engine.sizes import Measured, dims_key
from t2vrt.errors import UsageError
from t2vrt.manifest import ComponentFile, Manifest, load_manifest, write_json_atomic
from t2vrt.safety.diskfull import reraise_disk_full

ENGINES = "engines"
PLAN_JSON = "plan.json"
_ABBREV = {"text_batch": "t", "batch": "b", "frames": "f", "latent_height": "h", "latent_width": "w", "vae_batch": "v"}

Profile = Mapping[str, tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]]


@dataclass(frozen=True)
class Target:
    gpu: str  # e.g. "NVIDIA GeForce RTX 3060"
    compute_capability: str  # e.g. "8.6"
    tensorrt: str  # e.g. "10.13.0"
    memory_gib: int = 0  # the card's size (GpuInfo.memory_gib): plans differ between a 3060 8 GB and 12 GB

    @property
    def dirname(self) -> str:
        slug = re.sub(r"[^a-z0-9]+", "-", self.gpu.lower()).strip("-") or "gpu"
        mem = f"-{self.memory_gib}g" if self.memory_gib else ""
        return f"{slug}{mem}-sm{self.compute_capability.replace('.', '')}-trt{self.tensorrt}"

    def describe(self) -> str:
        mem = f", {self.memory_gib} GiB" if self.memory_gib else ""
        return f"{self.gpu} (sm {self.compute_capability}{mem}) with TensorRT {self.tensorrt}"

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "gpu": self.gpu,
            "compute_capability": self.compute_capability,
            "tensorrt": self.tensorrt,
        }
        if self.memory_gib:
            out["memory_gib"] = self.memory_gib
        return out

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> Target:
        return cls(str(d["gpu"]), str(d["compute_capability"]), str(d["tensorrt"]), int(d.get("memory_gib", 0)))


def target_dir(bundle: Path, target: Target) -> Path:
    return bundle / ENGINES / target.dirname


def shape_tag(dims_min: Mapping[str, int], dims_max: Mapping[str, int]) -> str:
    """'b2f16h32w32' for a static profile; 'b2f1-16h8-32w8-32' for a range (min-max)."""
    parts = []
    for k, hi in dims_max.items():
        lo = dims_min.get(k, hi)
        parts.append(f"{_ABBREV.get(k, k)}{hi}" if lo == hi else f"{_ABBREV.get(k, k)}{lo}-{hi}")
    return "".join(parts)


def engine_stem(
    component: str,
    dims_min: Mapping[str, int],
    dims_max: Mapping[str, int],
    profile: Profile,
    onnx_sha256: str,
    weight_streaming: bool,
    opt_level: int,
    weights_key: str = "",
) -> str:
    key = {
        "component": component,
        "profile": {k: [list(s) for s in v] for k, v in profile.items()},
        "onnx_sha256": onnx_sha256,
        "weights_key": weights_key,
        "weight_streaming": weight_streaming,
        "opt_level": opt_level,
        "strongly_typed": True,
    }
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:10]
    return f"{component}-{shape_tag(dims_min, dims_max)}-{digest}"


def weights_key(file: ComponentFile) -> str:
    """What identifies a graph's weights: the export's key (hash of the source weights and everything else the graph
    depends on), else the external data file's sha256 (hashed once, streamed), else the graph's own sha256."""
    if file.key:
        return file.key
    if file.data is None:
        return file.sha256
    h = hashlib.sha256()
    with open(file.data, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 24), b""):
            h.update(chunk)
    return h.hexdigest()


def write_engine(path: Path, data: Any, meta: Mapping[str, Any]) -> None:
    """Engine bytes (anything with the buffer protocol: TensorRT's IHostMemory is written as it is, no host copy) to a
    temp name, then rename; the sidecar last, so an engine with a sidecar is complete."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        with reraise_disk_full(path.parent), open(tmp, "wb") as f:
            f.write(data)
    except BaseException:
        tmp.unlink(missing_ok=True)  # a partial engine never stays behind (a stale temp is listed by `build --clean`)
        raise
    tmp.replace(path)
    write_json_atomic(path.with_suffix(".json"), dict(meta))


def read_json(path: Path) -> dict[str, Any] | None:
    try:
        value = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    return value if isinstance(value, dict) else None


def read_plan(bundle: Path, target: Target) -> dict[str, Any] | None:
    return read_json(target_dir(bundle, target) / PLAN_JSON)


def write_plan(bundle: Path, target: Target, plan: Mapping[str, Any]) -> None:
    d = target_dir(bundle, target)
    d.mkdir(parents=True, exist_ok=True)
    write_json_atomic(d / PLAN_JSON, dict(plan))


def measured_of(meta: Mapping[str, Any]) -> Measured:
    """TensorRT's figures from an engine's sidecar. The weights were measured at the streaming budget set then: all of
    them on the card is that minus the budget plus the streamable bytes."""
    on_card = meta.get("weights_on_card")
    streamable = int(meta.get("streamable_weights", 0)) if meta.get("weight_streaming") else 0
    budget = int(meta.get("weight_streaming_budget", streamable)) if streamable else 0
    weights = None if on_card is None else int(on_card) + (streamable - budget if streamable else 0)
    return Measured(int(meta["device_memory"]), weights, streamable, budget)


def measured_memory(bundle: Path, target: Target) -> dict[str, dict[str, Measured]]:
    """component -> dims_key(dims_max, streaming) -> TensorRT's figures, from the engines built for `target`."""
    out: dict[str, dict[str, Measured]] = {}
    d = target_dir(bundle, target)
    for side in sorted(d.glob("*.json")) if d.is_dir() else []:
        meta = read_json(side)
        if meta and side.name != PLAN_JSON and "device_memory" in meta and side.with_suffix(".plan").is_file():
            key = dims_key(meta["dims_max"], bool(meta.get("weight_streaming")))
            out.setdefault(str(meta["component"]), {})[key] = measured_of(meta)
    return out


def _stale_reason(path: Path, meta: dict[str, Any] | None, listed: set[str], manifest: Manifest | None) -> str | None:
    if path.name.endswith(".tmp"):
        return "unfinished temp file"
    if meta is None:
        return "no readable sidecar .json (an interrupted build)"
    if manifest is not None:
        comp = manifest.components.get(str(meta.get("component")))
        fp16 = comp.files.get("fp16") if comp else None
        if fp16 is None or fp16.sha256 != meta.get("onnx_sha256"):
            return "built from an older export (the ONNX changed)"
        if "weights_key" in meta and meta["weights_key"] != (fp16.key or meta["weights_key"]):
            return "built from an older export (the weights changed)"
    if path.name not in listed:
        return "not used by the current plan.json"
    return None


def bundle_engine_summary(bundle: str | Path) -> list[dict[str, Any]]:
    """Every engine file under BUNDLE/engines: target, component, shapes, size, and why it is stale (None if not)."""
    bundle = Path(bundle)
    try:
        manifest: Manifest | None = load_manifest(bundle)
    except UsageError:
        manifest = None
    rows: list[dict[str, Any]] = []
    root = bundle / ENGINES
    for d in sorted(p for p in root.iterdir() if p.is_dir()) if root.is_dir() else []:
        plan = read_json(d / PLAN_JSON) or {}
        listed = {str(e) for e in plan.get("engine_files", {}).values()}
        for f in sorted(d.iterdir()):
            if not (f.suffix == ".plan" or f.name.endswith(".tmp")):
                continue
            meta = read_json(f.with_suffix(".json")) if f.suffix == ".plan" else None
            rows.append(
                {
                    "target": d.name,
                    "gpu": (meta or {}).get("target", {}).get("gpu"),
                    "compute_capability": (meta or {}).get("target", {}).get("compute_capability"),
                    "tensorrt": (meta or {}).get("target", {}).get("tensorrt"),
                    "memory_gib": (meta or {}).get("target", {}).get("memory_gib"),
                    "component": (meta or {}).get("component"),
                    "shapes": shape_tag((meta or {}).get("dims_min", {}), (meta or {}).get("dims_max", {}))
                    if meta
                    else None,
                    "weight_streaming": (meta or {}).get("weight_streaming"),
                    "device_memory": (meta or {}).get("device_memory"),
                    "path": str(f),
                    "bytes": f.stat().st_size,
                    "stale": _stale_reason(f, meta, listed, manifest),
                }
            )
    return rows


def clean(bundle: str | Path) -> list[dict[str, Any]]:
    """Delete stale engines (and their sidecars); return the rows removed."""
    removed = []
    for row in bundle_engine_summary(bundle):
        if row["stale"] is None:
            continue
        p = Path(row["path"])
        p.unlink(missing_ok=True)
        if p.suffix == ".plan":
            p.with_suffix(".json").unlink(missing_ok=True)
        removed.append(row)
    return removed
