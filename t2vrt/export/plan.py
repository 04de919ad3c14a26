"""What an export will do, decided once before any tracing: a frozen plan.

The plan fixes the checkpoint, its config and fingerprint, the key of every (component, precision) graph and which of
them an earlier bundle at --out already has (reused by hard link or copy), so the rest of the export only executes it.
"""

from __future__ import annotations

import hashlib
import json
import platform
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import onnx
import onnxruntime
import torch

import t2vrt
from t2vrt.components import COMPONENTS
from t2vrt.config import ModelConfig, to_dict
from t2vrt.errors import UsageError
from t2vrt.manifest import MANIFEST_NAME, SCHEMA_VERSION
from t2vrt.safety.paths import confine

PRECISION_CHOICES = {"fp32": ("fp32",), "fp16": ("fp16",), "both": ("fp32", "fp16")}
OPSETS = range(17, 21)
Job = tuple[str, str]  # (component, precision)


@dataclass(frozen=True)
class ExportOptions:
    model: str
    out: Path
    precision: str = "both"
    opset: int = 17
    force: bool = False  # re-export every component even when its key matches
    loras: tuple[str, ...] = ()  # --lora SOURCE[:SCALE], merged into the UNet before tracing (t2vrt.export.loras)
    few_step: str = "auto"  # the bundle's sampler defaults for a few-step LoRA: auto | t2v-turbo | lcm | none
    guidance_w: float = 7.5  # T2V-Turbo's guidance value, folded into the UNet when a LoRA has the embedding

    def validate(self) -> None:
        if self.precision not in PRECISION_CHOICES:
            raise UsageError(f"--precision must be one of {', '.join(PRECISION_CHOICES)}, got {self.precision!r}")
        if self.opset not in OPSETS:
            raise UsageError(
                f"--opset must be {OPSETS.start}..{OPSETS.stop - 1} (17+ has native LayerNorm), got {self.opset}"
            )


def versions() -> dict[str, str]:
    out = {
        "t2vrt": t2vrt.__version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "onnx": onnx.__version__,
        "onnxruntime": onnxruntime.__version__,
    }
    try:  # optional: only the original layout's text encoder comes from open_clip
        import open_clip

        out["open_clip"] = open_clip.__version__
    except ImportError:
        pass
    return out


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 24), b""):
            h.update(block)
    return h.hexdigest()


def fingerprint_sources(files: list[Path], previous: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """sha256 of each source file, reusing the previous manifest's when size and mtime are unchanged."""
    out = []
    for p in files:
        st = p.stat()
        old = previous.get(str(p))
        same = old is not None and old.get("bytes") == st.st_size and old.get("mtime") == st.st_mtime
        sha = str(old["sha256"]) if old is not None and same else sha256_file(p)
        out.append({"path": str(p), "bytes": st.st_size, "mtime": st.st_mtime, "sha256": sha})
    return out


def key_of(*parts: object) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def read_previous(out: Path) -> dict[str, Any] | None:
    """The manifest of the bundle already at --out (to reuse its unchanged graphs), or None."""
    try:
        old = json.loads((out / MANIFEST_NAME).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError):
        return None
    return old if isinstance(old, dict) and old.get("schema_version") == SCHEMA_VERSION else None


@dataclass(frozen=True)
class ExportPlan:
    options: ExportOptions
    source: Any  # t2vrt.models.source.Source
    config: ModelConfig
    source_key: str
    source_files: tuple[dict[str, Any], ...]
    versions: dict[str, str]
    keys: dict[Job, str]  # every (component, precision) this export writes -> its key
    reuse: dict[Job, dict[str, Any]]  # the jobs an earlier bundle already has: job -> its manifest file entry
    previous: dict[str, Any] | None
    lora: Any = None  # t2vrt.export.loras.LoraPlan, or None without --lora

    @property
    def todo(self) -> list[Job]:
        return [job for job in self.keys if job not in self.reuse]

    @property
    def precisions(self) -> tuple[str, ...]:
        return PRECISION_CHOICES[self.options.precision]


def make_plan(
    opts: ExportOptions, source: Any, cfg: ModelConfig, previous: dict[str, Any] | None, lora: Any = None
) -> ExportPlan:
    old_sources = {f["path"]: f for f in (previous or {}).get("source", {}).get("files", [])}
    src_files = fingerprint_sources([Path(p) for p in source.files], old_sources)
    where = str(source.root) if source.layout == "embedded" else ""
    src_key = key_of(source.layout, where, [f["sha256"] for f in src_files])
    vers = versions()
    lora_key = lora.key() if lora is not None and lora.loras else None  # LoRAs change the UNet graph only
    keys = {
        (name, p): key_of(
            src_key,
            to_dict(c.config(cfg)),
            p,
            opts.opset,
            vers["t2vrt"],
            vers["torch"],
            vers["onnx"],
            *([lora_key] if name == "unet" and lora_key is not None else []),
        )
        for name, c in COMPONENTS.items()
        for p in PRECISION_CHOICES[opts.precision]
    }
    old_components = (previous or {}).get("components", {})
    reuse = {}
    for (name, p), key in keys.items():
        entry = old_components.get(name, {}).get("files", {}).get(p)
        if opts.force or not entry or entry.get("key") != key:
            continue
        rels = [entry.get("path")] + ([entry["data"]] if entry.get("data") else [])
        try:  # an earlier manifest is untrusted too: a path leaving the bundle is never reused
            files = [confine(opts.out, rel, f"{name} {p} file") for rel in rels]
        except UsageError:
            continue
        if all(f.is_file() for f in files):
            reuse[(name, p)] = entry
    return ExportPlan(opts, source, cfg, src_key, tuple(src_files), vers, keys, reuse, previous, lora)
