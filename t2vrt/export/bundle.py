"""`t2vrt export`: checkpoint -> bundle directory, every component gated against PyTorch, written atomically.

The bundle is built in a hidden temp directory beside --out and renamed into place at the end, so an interrupted or
failed export never leaves anything that looks like a bundle. What to (re)write is decided up front by a frozen
ExportPlan (t2vrt.export.plan); unchanged graphs of an earlier bundle are linked over.
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

import numpy as np
import torch
from torch import nn

from t2vrt.components import COMPONENTS
from t2vrt.config import ModelConfig
from t2vrt.errors import UsageError
from t2vrt.export import gates, onnx_io
from t2vrt.export.loras import apply_loras, plan_loras, with_few_step_defaults
from t2vrt.export.memory import release_memory
from t2vrt.export.numerics import sample_inputs
from t2vrt.export.onnx_io import module_bytes, trace_to_onnx
from t2vrt.export.owner import legacy_bundle
from t2vrt.export.plan import ExportOptions, ExportPlan, make_plan, read_previous, sha256_file
from t2vrt.export.stream import Traced, named_weights, placeholder, trace_streamed
from t2vrt.export.tokenizer_json import write_tokenizer_json
from t2vrt.manifest import (
    MANIFEST_NAME,
    Component,
    ComponentFile,
    Manifest,
    SourceInfo,
    TokenizerInfo,
    write_json_atomic,
)
from t2vrt.models.checkpoint_config import config_of
from t2vrt.models.source import resolve
from t2vrt.models.weights import PartReader, load_component
from t2vrt.runtime import schedulers  # the runtime's schedule math: the manifest's betas are what it samples with
from t2vrt.runtime.onnxruntime_backend import run_once
from t2vrt.runtime.tokenizer import Tokenizer
from t2vrt.safety.atomic import StagedDir
from t2vrt.safety.paths import confine

Progress = Callable[[str], None]
DTYPES = {"fp32": torch.float32, "fp16": torch.float16}
__all__ = ["EngineIO", "ExportOptions", "export_bundle"]


class EngineIO(nn.Module):
    """Exactly one engine's forward: float inputs cast to the weights' dtype (except the component's fp32 inputs,
    e.g. the timestep for the sinusoidal embedding), the output cast to fp32, so every bundle precision has the same
    fp32 boundary."""

    def __init__(self, module: nn.Module, dtype: torch.dtype, fp32_inputs: tuple[bool, ...] = ()) -> None:
        super().__init__()
        self.module = module
        self.dtype = dtype
        self.fp32_inputs = fp32_inputs  # per positional input: keep fp32
        # A new Module starts in training mode, and the exporter restores the wrapper's mode recursively when it is
        # done: without this, exporting would leave the wrapped model in training mode (Dropout live).
        self.train(module.training)

    def forward(self, *args: torch.Tensor) -> torch.Tensor:
        keep = self.fp32_inputs or (False,) * len(args)
        cast = [a.to(self.dtype) if a.is_floating_point() and not k else a for a, k in zip(args, keep)]
        return self.module(*cast).float()


def _check_out(out: Path) -> StagedDir:
    """--out is a bundle t2vrt wrote (to be replaced: files a user added are kept), an empty directory, or a new path
    whose parent can be created and written. Leftovers of interrupted exports to it are cleaned first."""
    staged = StagedDir(out, "bundle", legacy_bundle, flag="--out")
    staged.prepare()
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UsageError(f"--out {str(out)!r}: cannot create its parent directory ({e.strerror})") from None
    if not os.access(out.parent, os.W_OK):
        raise UsageError(f"--out {str(out)!r}: directory {str(out.parent)!r} is not writable")
    return staged


def _link_or_copy(src: Path, dst: Path) -> None:
    """Reuse a previous bundle's graph file; both paths come from a manifest, so both are confined by the caller."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def export_bundle(opts: ExportOptions, progress: Progress = lambda s: None) -> Path:
    opts.validate()
    out = Path(opts.out)
    staged = _check_out(out)
    source = resolve(opts.model)
    read = PartReader(source)  # each checkpoint file read once, for the config and the weights
    cfg = config_of(source, read)
    lora_plan = None
    if opts.loras:  # read and checked now: a bad LoRA fails before anything is written
        lora_plan = plan_loras(opts.loras, cfg, opts.few_step, opts.guidance_w)
        cfg = with_few_step_defaults(cfg, lora_plan)
    plan = make_plan(opts, source, cfg, read_previous(out), lora_plan)

    # Built in a hidden temp dir, swapped in atomically (t2vrt.safety.atomic); an error, Ctrl-C or SIGTERM removes
    # it. The old bundle's engines and any file a user put there are carried into the new one, never deleted.
    with staged as tmp:
        ctx = plan.config.text_encoder.context_length
        write_tokenizer_json(tmp / "tokenizer.json", context_length=ctx)  # the fp16 gate reads it
        tok = TokenizerInfo("tokenizer.json", ctx, sha256=sha256_file(tmp / "tokenizer.json"))
        manifest = _execute(plan, read, tmp, tok, progress)
        write_json_atomic(tmp / MANIFEST_NAME, manifest.to_json())
        staged.commit()
    for note in staged.notes:
        progress(note)
    return staged.target


def _betas(cfg: ModelConfig) -> np.ndarray:
    s = cfg.schedule
    return schedulers.scaled_linear_betas(s.beta_start, s.beta_end, s.num_train_timesteps)


def _execute(plan: ExportPlan, read: PartReader, tmp: Path, tok: TokenizerInfo, progress: Progress) -> Manifest:
    """Link the reused graphs, trace and gate the others, and return the new bundle's manifest (rooted at tmp)."""
    files: dict[str, dict[str, ComponentFile]] = {name: {} for name in COMPONENTS}
    for (name, p), entry in plan.reuse.items():
        for rel in filter(None, (entry["path"], entry.get("data"))):
            _link_or_copy(confine(plan.options.out, rel, f"{name} {p} file"), confine(tmp, rel, f"{name} {p} file"))
        files[name][p] = ComponentFile.from_json(tmp, entry, f"{name} {p}")
        progress(f"{name} {p}: unchanged (key {entry['key']}), reused")
    todo = plan.todo
    chain = (plan.previous or {}).get("fp16_gate") if not any(p == "fp16" for _, p in todo) else None
    if todo:
        chain = _export_components(plan, read, files, tmp, progress) or chain

    cfg = plan.config
    components = {n: Component(n, c.io(cfg), files[n]) for n, c in COMPONENTS.items() if files[n]}
    source = SourceInfo(plan.source.layout, str(plan.source.root), plan.source_key, plan.source_files)
    return Manifest(
        tmp,
        cfg,
        tuple(float(b) for b in _betas(cfg)),
        tok,
        components,
        source,
        opset=plan.options.opset,
        fp16_gate=chain,
        versions=plan.versions,
        created=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        lora=plan.lora.manifest_entry() if plan.lora is not None else None,
    )


def _load(plan: ExportPlan, read: PartReader, name: str, progress: Progress) -> nn.Module:
    """One component's fp32 module (LoRAs merged into the UNet before anything is measured or traced)."""
    t0 = time.perf_counter()
    module = load_component(name, plan.source, plan.config, read, dtype=torch.float32)
    progress(f"{name}: loaded from the {plan.source.layout} checkpoint in {time.perf_counter() - t0:.1f} s")
    if name == "unet" and plan.lora is not None:
        apply_loras(module, plan.lora, plan.config, progress)
    return module


def _export_components(
    plan: ExportPlan, read: PartReader, files: dict[str, dict[str, ComponentFile]], tmp: Path, progress: Progress
) -> dict[str, float] | None:
    """Component by component: trace its big graphs from a placeholder, load it, take its fp32 references (and its
    stage of the fp16 gate's chain), stream the big graphs' weights and trace the small ones, drop it, then gate its
    graphs; at the end, the fp16 chain through the fp16 graphs.

    At full size only one PyTorch module is ever loaded; a big graph is traced from a placeholder before it, and its
    weights (fp32, or cast to fp16 one tensor at a time) are streamed from it; an ORT session never shares memory
    with a module."""
    cfg, todo = plan.config, plan.todo
    vocab = cfg.text_encoder.vocab_size
    want_chain = any(p == "fp16" for _, p in todo)
    chain_in = _chain_inputs(cfg, tmp / "tokenizer.json") if want_chain else None
    chain32 = gates.Chain(chain_in) if chain_in is not None else None

    for name, c in COMPONENTS.items():
        jobs = [p for p in ("fp32", "fp16") if (name, p) in todo]
        if not jobs and not (chain32 is not None and name in gates.Chain.STAGES):
            continue
        spec = c.io(cfg)
        fp32_inputs = tuple(t.name in c.fp32_inputs for t in spec.inputs)
        trace = sample_inputs(spec, c.trace_dims, vocab_size=vocab)
        # Big graphs are traced first, from a placeholder (no weights behind it): the tracer's memory is handed back
        # before the real weights are loaded, and they are then streamed into the graph's data file.
        streamed: dict[str, tuple[Traced, float]] = {}
        with torch.device("meta"):
            shape_only = c.build(cfg)
        for p in jobs:
            if module_bytes(shape_only, DTYPES[p]) < onnx_io.EXTERNAL_DATA_THRESHOLD:
                continue
            t0 = time.perf_counter()
            progress(f"{name} {p}: tracing to ONNX (opset {plan.options.opset}), weights streamed after loading")
            # fp16 placeholders are materialised (fast fp16 CPU kernels): at full size 2.8 GB, before anything loads
            ghost = EngineIO(placeholder(partial(c.build, cfg), DTYPES[p], p == "fp16"), DTYPES[p], fp32_inputs)
            path = tmp / name / p / "model.onnx"
            streamed[p] = (trace_streamed(ghost, spec, trace, path, plan.options.opset), time.perf_counter() - t0)
            del ghost
            release_memory()

        module = _load(plan, read, name, progress)
        check = sample_inputs(spec, c.check_dims, seed=1, vocab_size=vocab)
        ref = gates.torch_run(module, check)
        if chain32 is not None:
            chain32.feed(name, partial(gates.torch_run, module))
        traced: list[tuple[str, Path, Path | None, float]] = []
        for p in jobs:  # fp32 first: then a small module is cast for fp16
            dtype = DTYPES[p]
            path = tmp / name / p / "model.onnx"
            t0 = time.perf_counter()
            if p in streamed:  # the fp32 weights, cast one tensor at a time: never a second copy of the module
                graph, t_trace = streamed.pop(p)
                data = graph.write(named_weights(EngineIO(module, dtype, fp32_inputs)), dtype)
                t0 -= t_trace
            else:
                if p == "fp16":
                    module = module.to(torch.float16)
                progress(f"{name} {p}: tracing to ONNX (opset {plan.options.opset})")
                data = trace_to_onnx(EngineIO(module, dtype, fp32_inputs), spec, trace, path, plan.options.opset)
            traced.append((p, path, data, time.perf_counter() - t0))
        del module
        release_memory()
        # Gate after the module is gone: at full size an ORT session of the UNet never shares memory with it.
        for p, path, data, t_export in traced:
            got = _check_run(path, check, spec.output_names)
            parity = gates.check_component(name, p, got, ref)
            size = path.stat().st_size + (data.stat().st_size if data else 0)
            files[name][p] = ComponentFile(
                path,
                data,
                sha256_file(path),
                size,
                plan.keys[(name, p)],
                {**parity, "export_seconds": round(t_export, 2)},
                data_sha256=sha256_file(data) if data is not None else "",
            )
            progress(
                f"{name} {p}: {size / 2**20:.1f} MiB, rel L2 vs PyTorch fp32 {parity['rel_l2']:.2e} ({t_export:.1f} s)"
            )
    if chain32 is None or chain_in is None:
        return None

    def run16(name: str, inputs: dict[str, np.ndarray]) -> np.ndarray:
        """Each fp16 graph (new or reused) loaded for its one call in the chain, then freed."""
        return _check_run(files[name]["fp16"].path, inputs)

    frames16 = gates.chain_frames(run16, chain_in)
    result = gates.check_fp16_chain(frames16, chain32.frames)
    progress(f"fp16 gate: decoded frames {result['psnr_db']:.1f} dB PSNR vs fp32 (bar {gates.FP16_PSNR_BAR_DB:.0f} dB)")
    return result


def _check_run(path: Path, inputs: dict[str, np.ndarray], output_names: list[str] | None = None) -> np.ndarray:
    """A gate's one call of one graph (its first output), the session's memory handed back before the next stage."""
    out = run_once(path, inputs, output_names)[0]
    release_memory()
    return out


def _chain_inputs(cfg: ModelConfig, tokenizer_file: Path) -> gates.ChainInputs:
    """The bundle's own tokenizer file through the runtime's tokenizer: the gate sees the ids users will."""
    tokens = Tokenizer.from_file(tokenizer_file, context_length=cfg.text_encoder.context_length).encode(
        ["a red panda playing an electric guitar on a rooftop at night", ""]
    )
    rng = np.random.default_rng(7)
    d = gates.CHAIN_DIMS
    latents = rng.standard_normal((1, cfg.latent_channels, d["frames"], d["latent_height"], d["latent_width"]))
    acp = float(schedulers.alphas_cumprod(_betas(cfg))[gates.CHAIN_TIMESTEP])
    return gates.ChainInputs(tokens.astype(np.int64), latents.astype(np.float32), acp)
