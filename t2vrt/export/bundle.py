"""`t2vrt export`: checkpoint -> bundle directory, every component gated against PyTorch, written atomically.

The bundle is built in a hidden temp directory beside --out and renamed into place at the end, so an interrupted or
failed export never leaves anything that looks like a bundle. Each (component, precision) is keyed by a hash of what
affects it (source weights, component config, precision, opset, versions); re-running copies unchanged ones over.
"""

from __future__ import annotations

import gc
import hashlib
import json
import os
import platform
import shutil
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

import t2vrt
from t2vrt.errors import T2VError, UsageError
from t2vrt.export import gates
from t2vrt.export.numerics import CHECK_DIMS, TRACE_DIMS, sample_inputs
from t2vrt.export.onnx_io import trace_to_onnx
from t2vrt.iospec import COMPONENTS, IOSpec, text_encoder_spec, unet_spec, vae_decoder_spec
from t2vrt.manifest import MANIFEST_NAME, SCHEMA_VERSION, write_json_atomic
from t2vrt.models.presets import ModelConfig
from t2vrt.runtime import schedulers  # the runtime's schedule math: the manifest's betas are what it samples with

PRECISION_CHOICES = {"fp32": ("fp32",), "fp16": ("fp16",), "both": ("fp32", "fp16")}
OPSETS = range(17, 21)
Progress = Callable[[str], None]


@dataclass(frozen=True)
class ExportOptions:
    model: str
    out: Path
    precision: str = "both"
    opset: int = 17
    force: bool = False  # re-export every component even when its key matches

    def validate(self) -> None:
        if self.precision not in PRECISION_CHOICES:
            raise UsageError(f"--precision must be one of {', '.join(PRECISION_CHOICES)}, got {self.precision!r}")
        if self.opset not in OPSETS:
            raise UsageError(f"--opset must be {OPSETS.start}..{OPSETS.stop - 1} (17+ has native LayerNorm), got {self.opset}")


def component_spec(name: str, cfg: ModelConfig) -> IOSpec:
    if name == "text_encoder":
        return text_encoder_spec(cfg.text_encoder.context_length, cfg.text_encoder.width)
    if name == "unet":
        u = cfg.unet
        return unet_spec(u.in_channels, u.out_channels, cfg.text_encoder.context_length, u.context_dim)
    return vae_decoder_spec(cfg.vae.z_channels, cfg.vae.downscale, cfg.vae.out_ch)


def _component_config(name: str, cfg: ModelConfig) -> dict:
    return asdict({"text_encoder": cfg.text_encoder, "unet": cfg.unet, "vae_decoder": cfg.vae}[name])


class EngineIO(nn.Module):
    """Exactly one engine's forward: float inputs cast to the weights' dtype (the timestep stays fp32 for the
    sinusoidal embedding), the output cast to fp32, so every bundle precision has the same fp32 boundary."""

    def __init__(self, module: nn.Module, dtype: torch.dtype) -> None:
        super().__init__()
        self.module = module
        self.dtype = dtype
        # A new Module starts in training mode, and the exporter restores the wrapper's mode recursively when it is
        # done: without this, exporting would leave the wrapped model in training mode (Dropout live).
        self.train(module.training)

    def forward(self, *args: torch.Tensor) -> torch.Tensor:
        cast = [a.to(self.dtype) if a.is_floating_point() and a.ndim > 1 else a for a in args]
        return self.module(*cast).float()


def versions() -> dict[str, str]:
    import onnx
    import onnxruntime

    out = {"t2vrt": t2vrt.__version__, "python": platform.python_version(), "torch": torch.__version__,
           "onnx": onnx.__version__, "onnxruntime": onnxruntime.__version__}
    try:
        import open_clip

        out["open_clip"] = open_clip.__version__
    except ImportError:
        pass
    return out


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 24), b""):
            h.update(block)
    return h.hexdigest()


def _fingerprint_sources(files: list[Path], previous: dict[str, dict]) -> list[dict]:
    """sha256 of each source file, reusing the previous manifest's when size and mtime are unchanged."""
    out = []
    for p in files:
        st = p.stat()
        old = previous.get(str(p))
        same = old and old.get("bytes") == st.st_size and old.get("mtime") == st.st_mtime
        sha = old["sha256"] if same else _sha256(p)
        out.append({"path": str(p), "bytes": st.st_size, "mtime": st.st_mtime, "sha256": sha})
    return out


def _key(*parts: object) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _prepare_out(out: Path) -> dict | None:
    """Check --out is creatable; return the existing bundle's manifest (for reuse) or None."""
    if out.exists():
        if not out.is_dir() or not (out / MANIFEST_NAME).is_file():
            if out.is_dir() and not any(out.iterdir()):
                return None
            raise UsageError(f"--out {str(out)!r} exists and is not a t2vrt bundle; choose another path or remove it")
        try:
            old = json.loads((out / MANIFEST_NAME).read_text())
            return old if old.get("schema_version") == SCHEMA_VERSION else None
        except (OSError, json.JSONDecodeError):
            return None
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UsageError(f"--out {str(out)!r}: cannot create its parent directory ({e.strerror})") from None
    if not os.access(out.parent, os.W_OK):
        raise UsageError(f"--out {str(out)!r}: directory {str(out.parent)!r} is not writable")
    return None


def _link_or_copy(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def export_bundle(opts: ExportOptions, progress: Progress = lambda s: None) -> Path:
    from t2vrt.export.tokenizer_json import write_tokenizer_json
    from t2vrt.models import checkpoint

    opts.validate()
    out = Path(opts.out)
    old = _prepare_out(out)
    source = checkpoint.resolve(opts.model)
    cfg = checkpoint.load_config(source)
    old_sources = {f["path"]: f for f in (old or {}).get("source", {}).get("files", [])}
    src_files = _fingerprint_sources([Path(p) for p in source.files], old_sources)
    src_key = _key(source.layout, str(source.root) if source.layout == "embedded" else "", [f["sha256"] for f in src_files])
    vers = versions()
    precisions = PRECISION_CHOICES[opts.precision]

    tmp = out.parent / f".{out.name}.tmp-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        write_tokenizer_json(tmp / "tokenizer.json", context_length=cfg.text_encoder.context_length)  # the gate reads it
        manifest = _build(opts, source, cfg, src_key, src_files, vers, precisions, old, tmp, progress)
        write_json_atomic(tmp / MANIFEST_NAME, manifest)
        _swap_into_place(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def _swap_into_place(tmp: Path, out: Path) -> None:
    """Rename the finished temp dir to --out; an old bundle's engines move over (their keys say if they're stale)."""
    if out.exists():
        if (out / "engines").is_dir():
            (out / "engines").rename(tmp / "engines")
        trash = out.parent / f".{out.name}.old-{uuid.uuid4().hex[:8]}"
        out.rename(trash)
        tmp.rename(out)
        shutil.rmtree(trash, ignore_errors=True)
    else:
        tmp.rename(out)


def _build(opts, source, cfg, src_key, src_files, vers, precisions, old, tmp, progress) -> dict:
    from t2vrt.models import checkpoint

    old_components = (old or {}).get("components", {})
    keys = {
        (name, p): _key(src_key, _component_config(name, cfg), p, opts.opset, vers["t2vrt"], vers["torch"], vers["onnx"])
        for name in COMPONENTS
        for p in precisions
    }

    out_dir = Path(opts.out)

    def reusable(name: str, p: str) -> dict | None:
        entry = old_components.get(name, {}).get("files", {}).get(p)
        if opts.force or not entry or entry.get("key") != keys[(name, p)]:
            return None
        files = [out_dir / entry["path"]] + ([out_dir / entry["data"]] if entry.get("data") else [])
        return entry if all(f.is_file() for f in files) else None

    reuse = {k: reusable(*k) for k in keys}
    todo = [k for k, entry in reuse.items() if entry is None]
    components: dict[str, dict] = {
        n: {"io": component_spec(n, cfg).to_json(), "config": _component_config(n, cfg), "files": {}} for n in COMPONENTS
    }
    for (n, p), entry in reuse.items():
        if entry is None:
            continue
        for rel in filter(None, (entry["path"], entry.get("data"))):
            _link_or_copy(out_dir / rel, tmp / rel)
        components[n]["files"][p] = entry
        progress(f"{n} {p}: unchanged (key {entry['key']}), reused")
    chain = (old or {}).get("fp16_gate") if not any(p == "fp16" for _, p in todo) else None

    if todo:
        progress(f"loading {source.layout} checkpoint {source.root}")
        t0 = time.perf_counter()
        _, models = checkpoint.load_model(source, dtype=torch.float32)
        progress(f"loaded in {time.perf_counter() - t0:.1f} s")
        chain = _export_components(opts, cfg, models, todo, keys, components, tmp, progress) or chain

    return {
        "schema_version": SCHEMA_VERSION,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "model": {"name": cfg.name, "config": cfg.to_dict()},
        "source": {"layout": source.layout, "location": str(source.root), "files": src_files, "key": src_key},
        "defaults": asdict(cfg.defaults),
        "schedule": {**asdict(cfg.schedule), "betas": _betas(cfg).tolist()},
        "tokenizer": {
            "file": "tokenizer.json",
            "context_length": cfg.text_encoder.context_length,
            "sot": 49406,
            "eot": 49407,
            "pad": 0,
        },
        "latent": {"channels": cfg.unet.in_channels, "downscale": cfg.vae.downscale, "vae_scaling_factor": cfg.vae.scaling_factor},
        "components": components,
        "fp16_gate": chain,
        "opset": opts.opset,
        "versions": vers,
    }


def _betas(cfg: ModelConfig) -> np.ndarray:
    s = cfg.schedule
    return schedulers.scaled_linear_betas(s.beta_start, s.beta_end, s.num_train_timesteps)


def _export_components(opts, cfg, models, todo, keys, components, tmp, progress) -> dict | None:
    """fp32 references first (before any module is cast), then each ONNX file, each gated as it is written."""
    from t2vrt.runtime.onnxruntime_backend import make_session

    vocab = cfg.text_encoder.vocab_size
    refs = {}
    for name in COMPONENTS:
        spec = component_spec(name, cfg)
        check = sample_inputs(spec, CHECK_DIMS[name], seed=1, vocab_size=vocab)
        refs[name] = (check, gates.torch_run(models[name], check))
    want_chain = any(p == "fp16" for _, p in todo)
    chain_in = _chain_inputs(cfg, tmp / "tokenizer.json") if want_chain else None
    chain32 = gates.chain_frames(lambda n, i: gates.torch_run(models[n], i), chain_in) if want_chain else None

    # Component by component, fp32 then fp16, each PyTorch module dropped once traced: at full size the peak is one
    # module plus one ORT session, not all of them.
    module: nn.Module | None = None
    for name in COMPONENTS:
        for p in ("fp32", "fp16"):
            if (name, p) not in todo:
                continue
            dtype = torch.float32 if p == "fp32" else torch.float16
            module = models[name].to(dtype)
            spec = component_spec(name, cfg)
            rel = f"{name}/{p}/model.onnx"
            path = tmp / rel
            t0 = time.perf_counter()
            progress(f"{name} {p}: tracing to ONNX (opset {opts.opset})")
            data = trace_to_onnx(EngineIO(module, dtype), spec, sample_inputs(spec, TRACE_DIMS[name], vocab_size=vocab), path, opts.opset)
            t_export = time.perf_counter() - t0
            check, ref = refs[name]
            got = make_session(path, prepack=False).run(spec.output_names, check)[0]
            parity = gates.check_component(name, p, got, ref)
            size = path.stat().st_size + (data.stat().st_size if data else 0)
            components[name]["files"][p] = {
                "path": rel,
                "data": f"{name}/{p}/{data.name}" if data else None,
                "sha256": _sha256(path),
                "bytes": size,
                "key": keys[(name, p)],
                "parity": {**parity, "export_seconds": round(t_export, 2)},
            }
            progress(f"{name} {p}: {size / 2**20:.1f} MiB, rel L2 vs PyTorch fp32 {parity['rel_l2']:.2e} ({t_export:.1f} s)")
        module = None
        models.pop(name)  # the caller's dict: its last reference to the module
        gc.collect()
    if not want_chain:
        return None

    def run16(name: str, inputs: dict[str, np.ndarray]) -> np.ndarray:
        """Each fp16 graph (new or reused) loaded for its one call in the chain, then freed."""
        return make_session(tmp / components[name]["files"]["fp16"]["path"], prepack=False).run(None, inputs)[0]

    frames16 = gates.chain_frames(run16, chain_in)
    result = gates.check_fp16_chain(frames16, chain32)
    progress(f"fp16 gate: decoded frames {result['psnr_db']:.1f} dB PSNR vs fp32 (bar {gates.FP16_PSNR_BAR_DB:.0f} dB)")
    return result


def _chain_inputs(cfg: ModelConfig, tokenizer_file: Path) -> gates.ChainInputs:
    """The bundle's own tokenizer file through the runtime's tokenizer: the gate sees the ids users will."""
    from t2vrt.runtime.tokenizer import Tokenizer

    tokens = Tokenizer.from_file(tokenizer_file, context_length=cfg.text_encoder.context_length).encode(
        ["a red panda playing an electric guitar on a rooftop at night", ""]
    )
    rng = np.random.default_rng(7)
    c = cfg.unet.in_channels
    d = gates.CHAIN_DIMS
    latents = rng.standard_normal((1, c, d["frames"], d["latent_height"], d["latent_width"])).astype(np.float32)
    acp = float(schedulers.alphas_cumprod(_betas(cfg))[gates.CHAIN_TIMESTEP])
    return gates.ChainInputs(tokens.astype(np.int64), latents, acp)
