"""The bundle's manifest.json: the one file every stage after export reads (torch-free).

A bundle directory:
    manifest.json                      this file
    tokenizer.json                     HF `tokenizers` file giving open_clip's ids
    text_encoder/{fp32,fp16}/model.onnx (+ model.onnx.data when external)
    unet/{fp32,fp16}/model.onnx (+ model.onnx.data)
    vae_decoder/{fp32,fp16}/model.onnx (+ model.onnx.data)
    engines/                           TensorRT plans, written by `t2vrt build`
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from t2vrt.errors import UsageError
from t2vrt.iospec import COMPONENTS, IOSpec

SCHEMA_VERSION = 1
MANIFEST_NAME = "manifest.json"
PRECISIONS = ("fp32", "fp16")


@dataclass(frozen=True)
class ComponentFile:
    path: Path  # the .onnx graph
    data: Path | None  # its external-data file, if any
    sha256: str  # of the graph file
    bytes: int  # graph + data
    parity: dict[str, float]  # what the export's gate measured


@dataclass(frozen=True)
class Component:
    name: str
    io: IOSpec
    files: dict[str, ComponentFile]  # by precision

    def file(self, precision: str) -> ComponentFile:
        if precision not in self.files:
            have = ", ".join(self.files) or "none"
            raise UsageError(
                f"the bundle has no {precision} {self.name} (it has: {have}); re-export with --precision {precision}"
            )
        return self.files[precision]


@dataclass(frozen=True)
class Manifest:
    bundle: Path
    raw: dict[str, Any]
    components: dict[str, Component]

    @property
    def defaults(self) -> dict[str, Any]:
        return self.raw["defaults"]

    @property
    def schedule(self) -> dict[str, Any]:
        return self.raw["schedule"]

    @property
    def tokenizer(self) -> dict[str, Any]:
        return self.raw["tokenizer"]

    @property
    def latent(self) -> dict[str, Any]:
        """channels, downscale (8), vae_scaling_factor; the scaling is applied inside the exported VAE graph."""
        return self.raw["latent"]

    @property
    def model_name(self) -> str:
        return self.raw["model"]["name"]

    @property
    def precisions(self) -> list[str]:
        return [p for p in PRECISIONS if all(p in c.files for c in self.components.values())]


def load_manifest(bundle: str | Path) -> Manifest:
    """Read and check a bundle's manifest; every error is one UsageError line naming the file and what is wrong."""
    bundle = Path(bundle)
    path = bundle / MANIFEST_NAME
    if not bundle.is_dir():
        raise UsageError(f"bundle {str(bundle)!r} is not a directory; make one with `t2vrt export MODEL --out {bundle}`")
    if not path.is_file():
        raise UsageError(f"{path} is missing: {str(bundle)!r} is not a t2vrt bundle (make one with `t2vrt export`)")
    try:
        raw = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise UsageError(f"{path} is unreadable or corrupted: {e}") from None
    version = raw.get("schema_version") if isinstance(raw, dict) else None
    if version != SCHEMA_VERSION:
        raise UsageError(
            f"{path} has schema version {version!r}; this t2vrt reads version {SCHEMA_VERSION}: re-export the bundle"
        )
    try:
        components = {}
        for name in COMPONENTS:
            c = raw["components"][name]
            files = {}
            for prec, f in c["files"].items():
                files[prec] = ComponentFile(
                    path=bundle / f["path"],
                    data=bundle / f["data"] if f.get("data") else None,
                    sha256=f["sha256"],
                    bytes=int(f["bytes"]),
                    parity=dict(f.get("parity", {})),
                )
            components[name] = Component(name, IOSpec.from_json(c["io"]), files)
        for key in ("defaults", "schedule", "tokenizer", "latent", "model"):
            raw[key]  # noqa: B018 - presence check
    except (KeyError, TypeError, ValueError) as e:
        raise UsageError(f"{path} is missing or has a malformed field ({e}); re-export the bundle") from None
    return Manifest(bundle, raw, components)


def write_json_atomic(path: Path, obj: Any) -> None:
    """Write JSON to a temp name beside `path`, then rename: a reader never sees half a file."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(obj, indent=2, sort_keys=False) + "\n")
    tmp.replace(path)
