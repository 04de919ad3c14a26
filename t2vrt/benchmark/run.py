"""`t2vrt bench`'s work: warm up and measure t2vrt's pipeline (and the PyTorch eager baseline) stage by stage, in
alternating rounds, and assemble the record (every figure, the machine, versions, shapes, the bundle hash).

Per run: text encoding, every UNet step (guidance included), the VAE decode (total and per frame), end to end.
Memory is sampled during each contender's first warm-up run, before the next contender is loaded, so each figure
is that contender's own: host RSS added by loading and running it, and device memory via NVML/cudaMemGetInfo
(beside the engine planner's prediction when the planner is installed).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import asdict, dataclass
from itertools import pairwise
from pathlib import Path
from typing import Any

import numpy as np

from t2vrt.benchmark import report
from t2vrt.benchmark.harness import Clock, alternate, device_clock, summarize
from t2vrt.benchmark.memory import MemorySampler, rss_bytes
from t2vrt.errors import UsageError
from t2vrt.manifest import MANIFEST_NAME, Manifest, load_manifest
from t2vrt.runtime.backends import BackendOptions
from t2vrt.runtime.options import GenerateOptions, resolve_options

FIGURES = ("text_encode", "unet_step", "denoise", "decode", "decode_per_frame", "end_to_end")
BASELINES = ("torch", "none")
PROMPT = "a red panda playing an electric guitar on a rooftop at night"
Progress = Callable[[str], None]


@dataclass(frozen=True)
class BenchOptions:
    bundle: Path
    backend: str = "auto"
    baseline: str = "torch"  # "torch" | "none"
    frames: int | None = None  # None: the bundle's defaults
    height: int | None = None
    width: int | None = None
    steps: int | None = None
    warmup: int = 1  # >= 1: the first warm-up run is where memory is measured
    repeat: int = 3
    seed: int = 0
    threads: int | None = None  # CPU threads for both (default: physical cores)
    samplers: str | None = None  # "ddim:50,lcm:4": samplers side by side on this bundle (t2vrt.benchmark.compare)
    warmup_steps: int | None = None  # --samplers: steps of each warm-up run (None: the contender's own)
    vae_chunk: int | None = None  # frames per VAE call (None: the backend's choice, else all at once)

    def validate(self) -> None:
        if self.baseline not in BASELINES:
            raise UsageError(f"--baseline must be one of {', '.join(BASELINES)}, got {self.baseline!r}")
        if self.samplers is not None and self.baseline != "none":
            raise UsageError(
                "--samplers compares t2vrt's samplers on one bundle and runs no PyTorch baseline: "
                "leave --baseline unset or none"
            )
        if self.samplers is not None and self.steps is not None:
            raise UsageError("--steps does not go with --samplers: give each sampler's steps there (ddim:50,lcm:4)")
        if self.samplers is not None:
            from t2vrt.benchmark.compare import parse_samplers

            parse_samplers(self.samplers)  # a bad entry is refused before the bundle loads
        if self.warmup_steps is not None and (self.samplers is None or self.warmup_steps < 1):
            raise UsageError(f"--warmup-steps must be >= 1 and goes with --samplers, got {self.warmup_steps}")
        if self.warmup < 1:
            raise UsageError(f"--warmup must be >= 1 (memory is measured in the first warm-up run), got {self.warmup}")
        if self.repeat < 1:
            raise UsageError(f"--repeat must be >= 1, got {self.repeat}")


def bundle_identity(manifest: Manifest) -> dict[str, Any]:
    """What was benchmarked: the manifest's sha256 (it lists every graph's sha256) and each graph's."""
    raw = (manifest.bundle / MANIFEST_NAME).read_bytes()
    return {
        "path": str(manifest.bundle),
        "manifest_sha256": hashlib.sha256(raw).hexdigest(),
        "model": manifest.model_name,
        "source_key": manifest.source.key,
        "components": {n: {p: f.sha256 for p, f in c.files.items()} for n, c in manifest.components.items()},
    }


def _run_once(encode, denoise, decode, o: GenerateOptions, clock: Clock) -> dict[str, Any]:
    """One generation, marked between stages and after every step; figures in seconds."""
    marks: list[object] = []
    m0 = clock.mark()
    emb = encode()
    m1 = clock.mark()
    marks.append(m1)
    lat = denoise(emb, lambda i, n: marks.append(clock.mark()))
    m2 = clock.mark()
    decode(lat)
    m3 = clock.mark()
    steps = [clock.elapsed(a, b) for a, b in pairwise(marks)]
    dec = clock.elapsed(m2, m3)
    if hasattr(clock, "reset"):
        clock.reset()  # type: ignore[attr-defined]
    return {
        "text_encode": clock.elapsed(m0, m1),
        "unet_step": steps,
        "denoise": sum(steps),
        "decode": dec,
        "decode_per_frame": dec / o.num_frames,
        "end_to_end": clock.elapsed(m0, m3),
    }


def _t2vrt_runner(pipe, o: GenerateOptions, x0: np.ndarray, clock: Clock) -> Callable[[], dict[str, Any]]:
    neg = o.negative_prompt if o.guided else None

    def run() -> dict[str, Any]:
        rng = np.random.default_rng(o.seed)
        return _run_once(
            lambda: pipe.encode(o.prompt, neg),
            lambda emb, cb: pipe.denoise(x0.copy(), emb[0], emb[1], o, rng, cb),
            lambda lat: pipe.decode(lat, o.vae_chunk),
            o,
            clock,
        )

    return run


def _torch_runner(
    base, tokens: np.ndarray, o: GenerateOptions, x0: np.ndarray, clock: Clock
) -> Callable[[], dict[str, Any]]:
    def run() -> dict[str, Any]:
        return _run_once(
            lambda: base.encode(tokens),
            lambda emb, cb: base.denoise(x0, emb, o, cb),
            lambda lat: base.decode(lat, o.vae_chunk),
            o,
            clock,
        )

    return run


def _planner_prediction(manifest: Manifest, backend: Any, o: GenerateOptions) -> dict[str, Any] | None:
    """The engine planner's device-memory prediction: the built engines' plan, else a plan for this card."""
    try:
        from t2vrt.engine.plans import Plan, Request
    except ImportError:
        return None
    try:
        if isinstance(getattr(backend, "plan", None), dict):
            return {"peak_bytes": Plan.from_json(backend.plan).peak, "source": "the TensorRT engines' plan"}
        from t2vrt.engine.facts import bundle_facts, card_memory, make_plan

        mem = card_memory(None)
        p = make_plan(bundle_facts(manifest.bundle), Request(o.num_frames, o.height, o.width), mem.bytes, mem.free)
        return {"peak_bytes": p.peak, "source": f"planner estimate for TensorRT ({mem.source})"}
    except Exception as e:  # the planner is optional and must never break a benchmark; say why it is missing
        return {"peak_bytes": None, "source": f"unavailable: {e}"}


def _summaries(samples: dict[str, list[float]], o: GenerateOptions) -> dict[str, Any]:
    figs = {k: summarize(samples[k]).to_json() for k in FIGURES}
    e2e = figs["end_to_end"]["mean"]
    figs["throughput"] = {"frames_per_s": o.num_frames / e2e, "videos_per_min": 60.0 / e2e}
    return figs


def run_bench(opts: BenchOptions, progress: Progress = lambda s: None) -> dict[str, Any]:
    """Measure and return the record (nothing written)."""
    from t2vrt.runtime.pipeline import Pipeline

    opts.validate()
    if opts.samplers is not None:
        from t2vrt.benchmark.compare import run_compare

        return run_compare(opts, progress)
    manifest = load_manifest(opts.bundle)
    on_gpu_probe = opts.backend != "onnxruntime-cpu"
    rss0 = rss_bytes()
    with MemorySampler(device=on_gpu_probe) as idle:
        pass
    pipe = Pipeline.from_bundle(opts.bundle, backend=opts.backend, options=BackendOptions(threads=opts.threads))
    try:
        on_gpu = pipe.backend.name != "onnxruntime-cpu"
        o = resolve_options(
            manifest,
            PROMPT,
            hints=pipe.backend.hints(),
            num_frames=opts.frames,
            height=opts.height,
            width=opts.width,
            num_inference_steps=opts.steps,
            seed=opts.seed,
            vae_chunk=opts.vae_chunk,
        )
        shape = manifest.model.latent_shape(o.num_frames, o.height, o.width)
        x0 = np.random.default_rng(o.seed).standard_normal(shape, np.float32)
        clock = device_clock(on_gpu)
        ours = f"t2vrt-{pipe.backend.name}"
        runners = {ours: _t2vrt_runner(pipe, o, x0, clock)}
        memory: dict[str, dict[str, Any]] = {}

        def warm(name: str, rss_before: int) -> None:
            progress(f"{name}: warm-up 1/{opts.warmup} (measuring memory)")
            with MemorySampler(device=on_gpu) as m:
                runners[name]()
            assert m.peaks is not None
            memory[name] = {**m.peaks.to_json(), "host_rss_added_bytes": m.peaks.host_rss_peak - rss_before}
            if idle.peaks and idle.peaks.device_used_start is not None and m.peaks.device_used_peak is not None:
                memory[name]["device_added_bytes"] = m.peaks.device_used_peak - idle.peaks.device_used_start
            for i in range(1, opts.warmup):
                progress(f"{name}: warm-up {i + 1}/{opts.warmup}")
                runners[name]()

        warm(ours, rss0)
        if on_gpu:
            memory[ours]["planner_prediction"] = _planner_prediction(manifest, pipe.backend, o)
        base = None
        if opts.baseline == "torch":
            try:
                from t2vrt.benchmark.baseline import TorchBaseline
            except ImportError as e:
                raise UsageError(
                    f"--baseline torch needs torch and t2vrt's models (pip install 't2vrt[export]'): {e}"
                ) from None
            rss1 = rss_bytes()
            device = "cuda" if on_gpu else "cpu"
            progress(f"loading the PyTorch eager baseline on {device}")
            base = TorchBaseline.from_manifest(manifest, device=device, threads=opts.threads or _threads())
            texts = [o.prompt, o.negative_prompt] if o.guided else [o.prompt]
            runners[base.name] = _torch_runner(base, pipe.tokenizer.encode(texts), o, x0, base.clock())
            warm(base.name, rss1)
        samples = alternate(runners, warmup=0, repeat=opts.repeat, progress=progress)
        if base is not None:
            base.close()
    finally:
        pipe.close()

    contenders = {
        name: {"figures": _summaries(s, o), "samples": s, "memory": memory[name]} for name, s in samples.items()
    }
    contenders[ours].update(backend=pipe.backend.name, precision=pipe.backend.precision, selection=pipe.selection_note)
    record: dict[str, Any] = {
        "benchmark": "t2vrt bench",
        "date": report.stamp(),
        "machine": report.machine_info(),
        "versions": report.versions(),
        "bundle": bundle_identity(manifest),
        "shapes": {
            "frames": o.num_frames,
            "height": o.height,
            "width": o.width,
            "steps": o.num_inference_steps,
            "guidance_scale": o.guidance_scale,
            "guidance_batch": o.guidance_batch,
            "vae_chunk": o.vae_chunk,
            "latents": list(shape),
        },
        "settings": {**{k: str(v) if isinstance(v, Path) else v for k, v in asdict(opts).items()}, "clock": clock.name},
        "ours": ours,
        "contenders": contenders,
    }
    if base is not None:
        ref = contenders[base.name]["figures"]
        mine = contenders[ours]["figures"]
        record["baseline"] = base.name
        record["speedup"] = {k: ref[k]["mean"] / mine[k]["mean"] for k in FIGURES if mine[k]["mean"] > 0}
    return record


def missing_figures(record: dict[str, Any]) -> list[str]:
    """What a complete record lacks (empty when every figure is there): the CI smoke check, no timing asserted."""
    missing = [
        k for k in ("date", "machine", "versions", "bundle", "shapes", "settings", "contenders") if k not in record
    ]
    stat_keys = ("n", "mean", "p50", "p95", "min", "max", "stdev")
    for name, c in record.get("contenders", {}).items():
        figs = c.get("figures", {})
        missing += [f"{name}.{k}.{s}" for k in FIGURES for s in stat_keys if s not in figs.get(k, {})]
        missing += [
            f"{name}.throughput.{k}" for k in ("frames_per_s", "videos_per_min") if k not in figs.get("throughput", {})
        ]
        missing += [
            f"{name}.memory.{k}"
            for k in ("host_rss_peak_bytes", "host_rss_added_bytes")
            if k not in c.get("memory", {})
        ]
    if "manifest_sha256" not in record.get("bundle", {}):
        missing.append("bundle.manifest_sha256")
    return missing


def _threads() -> int:
    from t2vrt.runtime.onnxruntime_backend import cpu_threads

    return cpu_threads()


def stage_means(record: dict[str, Any]) -> dict[str, dict[str, float | None]]:
    """figure -> contender -> mean seconds, for the table and the plot."""
    labels = {
        "text_encode": "text encode",
        "unet_step": "UNet step",
        "decode": "VAE decode",
        "decode_per_frame": "VAE decode / frame",
        "end_to_end": "end to end",
    }
    return {label: {n: c["figures"][k]["mean"] for n, c in record["contenders"].items()} for k, label in labels.items()}


def write_outputs(record: dict[str, Any], out_dir: Path, plot: bool = True) -> dict[str, Path]:
    """<out>/bench-<model>-<backend>-<date>.json (+ .png): the paths written."""
    stamp = record["date"].replace(":", "").replace("-", "")
    kind = "-samplers" if "samplers" in record else ""  # bench --samplers: also a markdown table
    base = report.free_name(
        out_dir / f"bench-{record['bundle']['model']}-{record['ours'].removeprefix('t2vrt-')}{kind}-{stamp}.json"
    )
    stem = base.name.removesuffix(".json")  # not with_suffix: a model name has dots (ms-1.7b)
    base = base.with_name(stem)

    def named(suffix: str) -> Path:
        return base.with_name(stem + suffix)

    paths = {"json": report.write_json(named(".json"), record)}
    if kind:
        from t2vrt.benchmark.compare import write_markdown

        paths["md"] = write_markdown(named(".md"), record)
    if plot:
        try:
            s = record["shapes"]
            steps = " vs ".join(record["samplers"]) if kind else f"{s['steps']} steps"
            title = (
                f"{record['bundle']['model']}: {s['frames']} frames {s['width']}x{s['height']}, {steps} "
                f"(mean of {record['settings']['repeat']})"
            )
            paths["png"] = report.plot_stages(named(".png"), stage_means(record), title)
        except ImportError:
            pass  # matplotlib is the `bench` extra; the JSON has every figure
    return paths
