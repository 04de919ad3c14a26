"""The bundle's manifest.json: the one file every stage after export reads, as typed objects (torch-free).

A bundle directory:
    manifest.json                      this file
    tokenizer.json                     HF `tokenizers` file giving open_clip's ids
    <component>/{fp32,fp16}/model.onnx (+ model.onnx.data when external), one per entry of t2vrt.components
    engines/                           TensorRT plans, written by `t2vrt build`

Schema 2: the model config (components, schedule, generation defaults) is stored once, as `ModelConfig.to_dict()`;
the latent shape, the size multiple and the defaults are all read from it.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from t2vrt.components import COMPONENTS, REQUIRED
from t2vrt.config import ConfigError, Defaults, ModelConfig, ScheduleConfig
from t2vrt.errors import UsageError
from t2vrt.iospec import IOSpec
from t2vrt.safety import integrity
from t2vrt.safety.diskfull import reraise_disk_full
from t2vrt.safety.jsonfile import read_json
from t2vrt.safety.paths import confine

SCHEMA_VERSION = 2
MANIFEST_NAME = "manifest.json"
PRECISIONS = ("fp32", "fp16")


def bundle_path(bundle: Path, rel: str, what: str) -> Path:
    """The path a manifest field names, inside the bundle (the one place manifest paths are turned into files)."""
    return confine(bundle, rel, what, str(bundle / MANIFEST_NAME))  # no absolute path, no "..", no symlink out


@dataclass(frozen=True)
class ComponentFile:
    path: Path  # the .onnx graph
    data: Path | None  # its external-data file, if any
    sha256: str  # of the graph file
    bytes: int  # graph + data
    key: str = ""  # hash of everything the graph depends on (export reuses a file whose key is unchanged)
    parity: dict[str, float] = field(default_factory=dict)  # what the export's gate measured
    data_sha256: str = ""  # of the external-data file (bundles exported before it was recorded: size only)

    def to_json(self, bundle: Path) -> dict[str, Any]:
        return {
            "path": self.path.relative_to(bundle).as_posix(),
            "data": self.data.relative_to(bundle).as_posix() if self.data else None,
            "sha256": self.sha256,
            "bytes": self.bytes,
            "key": self.key,
            "parity": self.parity,
            **({"data_sha256": self.data_sha256} if self.data_sha256 else {}),
        }

    @classmethod
    def from_json(cls, bundle: Path, d: dict[str, Any], what: str) -> ComponentFile:
        return cls(
            path=bundle_path(bundle, d["path"], f"{what} path"),
            data=bundle_path(bundle, d["data"], f"{what} data") if d.get("data") else None,
            sha256=str(d["sha256"]),
            bytes=int(d["bytes"]),
            key=str(d.get("key", "")),
            parity={k: float(v) for k, v in d.get("parity", {}).items()},
            data_sha256=str(d.get("data_sha256") or ""),
        )


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
class TokenizerInfo:
    file: str  # relative to the bundle
    context_length: int
    sot: int = 49406
    eot: int = 49407
    pad: int = 0
    sha256: str = ""  # of the file; "" in bundles written before it was recorded (then not verified)


@dataclass(frozen=True)
class SourceInfo:
    """Where the bundle's weights came from: checkpoint layout, location, and the fingerprint of its files."""

    layout: str
    location: str
    key: str
    files: tuple[dict[str, Any], ...] = ()  # {path, bytes, mtime, sha256} per checkpoint file


@dataclass(frozen=True)
class Manifest:
    bundle: Path
    model: ModelConfig
    betas: tuple[float, ...]  # the noise schedule the runtime samples with (float64 values)
    tokenizer: TokenizerInfo
    components: dict[str, Component]
    source: SourceInfo
    opset: int = 17
    fp16_gate: dict[str, float] | None = None
    versions: dict[str, str] = field(default_factory=dict)
    created: str = ""
    lora: dict[str, Any] | None = None  # merged LoRAs (name, sha256, format, scale), guidance embedding, few-step mode

    @property
    def defaults(self) -> Defaults:
        return self.model.defaults

    @property
    def schedule(self) -> ScheduleConfig:
        return self.model.schedule

    @property
    def model_name(self) -> str:
        return self.model.name

    @property
    def tokenizer_path(self) -> Path:
        return bundle_path(self.bundle, self.tokenizer.file, "tokenizer file")

    @property
    def precisions(self) -> list[str]:
        return [p for p in PRECISIONS if all(p in c.files for c in self.components.values())]

    def to_json(self) -> dict[str, Any]:
        b = self.bundle
        return {
            "schema_version": SCHEMA_VERSION,
            "created": self.created,
            "model": {"name": self.model.name, "config": self.model.to_dict()},
            "source": {
                "layout": self.source.layout,
                "location": self.source.location,
                "key": self.source.key,
                "files": list(self.source.files),
            },
            "schedule": {"betas": list(self.betas)},
            "tokenizer": vars(self.tokenizer),
            "components": {
                n: {"io": c.io.to_json(), "files": {p: f.to_json(b) for p, f in c.files.items()}}
                for n, c in self.components.items()
            },
            "fp16_gate": self.fp16_gate,
            "opset": self.opset,
            "versions": self.versions,
            **({"lora": self.lora} if self.lora is not None else {}),
        }


def read_raw(bundle: Path) -> dict[str, Any]:
    """manifest.json as JSON, checked to be an object of this schema version; one UsageError line otherwise."""
    path = bundle / MANIFEST_NAME
    if not bundle.is_dir():
        raise UsageError(
            f"bundle {str(bundle)!r} is not a directory; make one with `t2vrt export MODEL --out {bundle}`"
        )
    if not path.is_file():
        raise UsageError(f"{path} is missing: {str(bundle)!r} is not a t2vrt bundle (make one with `t2vrt export`)")
    raw = read_json(path, max_bytes=64 << 20, hint="re-export the bundle")  # bounded size and nesting depth
    version = raw.get("schema_version") if isinstance(raw, dict) else None
    if not isinstance(raw, dict) or version != SCHEMA_VERSION:
        raise UsageError(
            f"{path} has schema version {version!r}; this t2vrt reads version {SCHEMA_VERSION}: re-export the bundle"
        )
    return {str(k): v for k, v in raw.items()}


def load_manifest(bundle: str | Path) -> Manifest:
    """Read and check a bundle's manifest; every error is one UsageError line naming the file and what is wrong."""
    bundle = Path(bundle)
    path = bundle / MANIFEST_NAME
    raw = read_raw(bundle)
    try:
        model = ModelConfig.from_dict(raw["model"]["config"])
        components = {}
        for name, cdef in COMPONENTS.items():
            c = raw["components"].get(name)
            if c is None:
                if cdef.required:
                    raise KeyError(f"components.{name}")
                continue
            files = {p: ComponentFile.from_json(bundle, f, f"{name} {p}") for p, f in c["files"].items()}
            components[name] = Component(name, IOSpec.from_json(c["io"]), files)
        unknown = sorted(set(raw["components"]) - set(COMPONENTS))
        if unknown:
            raise ValueError(f"unknown component(s) {unknown}: written by a newer t2vrt?")
        betas = tuple(float(b) for b in raw["schedule"]["betas"])
        tokenizer = TokenizerInfo(**{**raw["tokenizer"], "sha256": str(raw["tokenizer"].get("sha256") or "")})
        src = raw["source"]
        source = SourceInfo(str(src["layout"]), str(src["location"]), str(src["key"]), tuple(src.get("files", ())))
        manifest = Manifest(
            bundle,
            model,
            betas,
            tokenizer,
            components,
            source,
            opset=int(raw.get("opset", 17)),
            fp16_gate=raw.get("fp16_gate"),
            versions=dict(raw.get("versions", {})),
            created=str(raw.get("created", "")),
            lora=dict(raw["lora"]) if raw.get("lora") is not None else None,
        )
    except ConfigError as e:
        raise UsageError(f"{path}: {e}; re-export the bundle") from None
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        raise UsageError(f"{path} is missing or has a malformed field ({e}); re-export the bundle") from None
    _check(manifest, path)
    return manifest


def _check(m: Manifest, path: Path) -> None:
    """The values every later stage relies on, checked once here."""
    bundle_path(m.bundle, m.tokenizer.file, "tokenizer file")  # confined now, not when first opened
    n = m.schedule.num_train_timesteps
    if len(m.betas) != n:
        raise UsageError(f"{path}: schedule has {len(m.betas)} betas for {n} training timesteps; re-export the bundle")
    if not all(math.isfinite(b) and 0.0 < b < 1.0 for b in m.betas):
        raise UsageError(f"{path}: schedule betas must all be in (0, 1); re-export the bundle")
    if m.tokenizer.context_length != m.model.text_encoder.context_length:
        raise UsageError(
            f"{path}: tokenizer context length {m.tokenizer.context_length} != the text encoder's "
            f"{m.model.text_encoder.context_length}"
        )
    missing = [c for c in REQUIRED if c not in m.components]
    if missing:
        raise UsageError(f"{path}: the bundle lacks component(s) {', '.join(missing)}; re-export it")


def verify_files(m: Manifest, components: list[str] | None = None, precisions: list[str] | None = None) -> list[Path]:
    """sha256 of the bundle's graphs and data files (and, for the whole bundle, its tokenizer file) against the
    manifest (t2vrt.safety.integrity: a verdict cache outside the bundle spares re-hashing unchanged files).
    UsageError naming the first file that differs; returns the files that had to be hashed."""
    expected = []
    for name, c in m.components.items():
        for p, f in c.files.items():
            if (components is None or name in components) and (precisions is None or p in precisions):
                graph_size = None if f.data is not None else f.bytes
                expected.append(integrity.Expected(f.path, f.sha256, graph_size))
                if f.data is not None and f.data_sha256:
                    expected.append(integrity.Expected(f.data, f.data_sha256))
    if components is None:
        expected += _tokenizer_expected(m)
    return integrity.verify(expected, what="bundle")


def verify_tokenizer(m: Manifest) -> None:
    """The tokenizer file against the manifest's sha256 (a tampered vocabulary would change every prompt's ids)."""
    integrity.verify(_tokenizer_expected(m), what="bundle")


def _tokenizer_expected(m: Manifest) -> list[integrity.Expected]:
    return [integrity.Expected(m.tokenizer_path, m.tokenizer.sha256)] if m.tokenizer.sha256 else []


def write_json_atomic(path: Path, obj: Any) -> None:
    """Write JSON to a temp name beside `path`, then rename: a reader never sees half a file."""
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        with reraise_disk_full(path.parent):
            tmp.write_text(json.dumps(obj, indent=2, sort_keys=False) + "\n")
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    tmp.replace(path)
