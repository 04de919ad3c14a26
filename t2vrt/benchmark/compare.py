"""`t2vrt bench BUNDLE --samplers ddim:50,lcm:4`: samplers side by side on one bundle, in one run.

Each entry NAME[:STEPS[:GUIDANCE]] is a contender: the same prompt, latents, frames and size, its own sampler, steps
and guidance (an unguided few-step sampler runs at guidance 1 with no negative prompt: one batch-1 UNet pass per
step). Per contender: time per stage (text encode, every UNet step, denoise, VAE decode, end to end), the UNet calls
and passes (videos through the UNet: a guided step at guidance batch 2 is one call of two passes) counted at the
backend, and peak host RSS. All contenders share one loaded pipeline; each one's memory is sampled in its first
warm-up, run in ascending order of UNet batch, so the arena a bigger batch grew is not charged to a smaller one.
Timed runs alternate (harness.alternate), starting in that order. Torch-free.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from t2vrt.benchmark import report
from t2vrt.benchmark.harness import Clock, alternate, device_clock
from t2vrt.benchmark.memory import MemorySampler, rss_bytes
from t2vrt.errors import UsageError
from t2vrt.runtime import samplers
from t2vrt.runtime.options import GenerateOptions, resolve_options

STAGES = ("text_encode", "denoise", "decode")  # what end to end is made of: the dominant one is named
Progress = Callable[[str], None]


@dataclass(frozen=True)
class SamplerRun:
    """One entry of --samplers; None = the bundle's default (guidance: 1 for an unguided sampler)."""

    sampler: str
    steps: int | None = None
    guidance: float | None = None

    @property
    def label(self) -> str:
        s = self.sampler + (f":{self.steps}" if self.steps is not None else "")
        return s + (f":{self.guidance:g}" if self.guidance is not None else "")


def parse_samplers(text: str) -> tuple[SamplerRun, ...]:
    """'ddim:50,lcm:4' -> entries; a bad entry is one line naming it."""
    runs: list[SamplerRun] = []
    for raw in text.split(","):
        entry = raw.strip()
        parts = entry.split(":")
        if not entry or len(parts) > 3 or not parts[0]:
            raise UsageError(f"--samplers: bad entry {raw!r}; expected NAME[:STEPS[:GUIDANCE]], e.g. ddim:50,lcm:4")
        name = parts[0]
        if name not in samplers.SAMPLERS:
            raise UsageError(f"--samplers: unknown sampler {name!r}; choose from {', '.join(samplers.SAMPLERS)}")
        try:
            steps = int(parts[1]) if len(parts) > 1 and parts[1] else None
            guidance = float(parts[2]) if len(parts) > 2 and parts[2] else None
        except ValueError:
            raise UsageError(f"--samplers: bad entry {entry!r}; STEPS is an integer, GUIDANCE a number") from None
        runs.append(SamplerRun(name, steps, guidance))
    labels = [r.label for r in runs]
    dup = sorted({x for x in labels if labels.count(x) > 1})
    if dup:
        raise UsageError(f"--samplers: {', '.join(dup)} given twice")
    return tuple(runs)


def contender_options(manifest: Any, run: SamplerRun, prompt: str, hints: Any, **common: Any) -> GenerateOptions:
    """The run's options, checked like a generate call's (a bad step count or guidance is the runtime's one line)."""
    guided = samplers.SAMPLERS[run.sampler].guided
    extra: dict[str, Any] = {} if guided else {"guidance_scale": 1.0, "negative_prompt": ""}
    if run.guidance is not None:
        extra["guidance_scale"] = run.guidance
    try:
        return resolve_options(
            manifest, prompt, hints=hints, scheduler=run.sampler, num_inference_steps=run.steps, **extra, **common
        )
    except UsageError as e:
        raise UsageError(f"--samplers {run.label}: {e}") from None


class _CountingRunner:
    def __init__(self, runner: Any, counts: dict[str, int]) -> None:
        self.component, self.io, self._runner, self._counts = runner.component, runner.io, runner, counts

    def run(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        self._counts["calls"] += 1
        self._counts["passes"] += int(inputs["latents"].shape[0])
        return self._runner.run(inputs)  # type: ignore[no-any-return]


class CountingBackend:
    """A backend as the pipeline sees it, counting the UNet's calls and the videos (batch items) they carry."""

    def __init__(self, backend: Any) -> None:
        self._backend = backend
        self.counts = {"calls": 0, "passes": 0}

    def __getattr__(self, name: str) -> Any:
        return getattr(self._backend, name)

    def open(self, component: str) -> Any:
        runner = self._backend.open(component)
        return _CountingRunner(runner, self.counts) if component == "unet" else runner

    def take(self) -> dict[str, int]:
        out = dict(self.counts)
        self.counts.update(calls=0, passes=0)
        return out


def _runner(
    pipe: Any,
    counter: CountingBackend,
    o: GenerateOptions,
    x0: np.ndarray,
    clock: Clock,
    label: str,
    progress: Progress,
) -> Callable[[], dict[str, Any]]:
    from t2vrt.benchmark.run import _run_once

    neg = o.negative_prompt if o.guided else None

    def run() -> dict[str, Any]:
        rng = np.random.default_rng(o.seed)
        last = [clock.mark()]

        def step(i: int, n: int) -> None:  # a step's time as it happens: a run cut short still leaves its steps
            now = clock.mark()
            progress(f"{label}: step {i}/{n} {clock.elapsed(last[0], now):.2f} s")
            last[0] = now

        def denoise(emb: Any, cb: Callable[[int, int], None]) -> np.ndarray:
            def both(i: int, n: int) -> None:
                cb(i, n)
                step(i, n)

            last[0] = clock.mark()
            return pipe.denoise(x0.copy(), emb[0], emb[1], o, rng, both)  # type: ignore[no-any-return]

        counter.take()
        figures = _run_once(
            lambda: pipe.encode(o.prompt, neg), denoise, lambda lat: pipe.decode(lat, o.vae_chunk), o, clock
        )
        c = counter.take()
        progress(
            f"{label}: text encode {figures['text_encode']:.2f} s, denoise {figures['denoise']:.2f} s, decode "
            f"{figures['decode']:.2f} s, end to end {figures['end_to_end']:.2f} s; UNet calls/passes "
            f"{c['calls']}/{c['passes']}"
        )
        return {**figures, "unet_calls": c["calls"], "unet_passes": c["passes"]}

    return run


def dominant(figures: dict[str, Any]) -> dict[str, Any]:
    """The stage with the largest mean share of end to end."""
    e2e = figures["end_to_end"]["mean"]
    stage = max(STAGES, key=lambda k: figures[k]["mean"])
    return {
        "stage": stage,
        "share": figures[stage]["mean"] / e2e if e2e > 0 else None,
        "shares": {k: figures[k]["mean"] / e2e if e2e > 0 else None for k in STAGES},
    }


def run_compare(opts: Any, progress: Progress = lambda s: None) -> dict[str, Any]:
    """Measure every --samplers entry on opts.bundle; return the record (nothing written)."""
    from t2vrt.benchmark.run import PROMPT, _summaries, bundle_identity
    from t2vrt.manifest import load_manifest
    from t2vrt.runtime.backends import BackendOptions
    from t2vrt.runtime.pipeline import Pipeline

    runs = parse_samplers(opts.samplers)
    manifest = load_manifest(opts.bundle)
    load_start = [os.getloadavg()[0]]
    pipe = Pipeline.from_bundle(opts.bundle, backend=opts.backend, options=BackendOptions(threads=opts.threads))
    try:
        counter = CountingBackend(pipe.backend)
        pipe.backend = counter  # type: ignore[assignment]
        hints = pipe.backend.hints()
        common = dict(
            num_frames=opts.frames, height=opts.height, width=opts.width, seed=opts.seed, vae_chunk=opts.vae_chunk
        )
        options = {r.label: contender_options(manifest, r, PROMPT, hints, **common) for r in runs}
        first = next(iter(options.values()))
        shape = manifest.model.latent_shape(first.num_frames, first.height, first.width)
        x0 = np.random.default_rng(first.seed).standard_normal(shape, np.float32)
        on_gpu = pipe.backend.name != "onnxruntime-cpu"
        clock = device_clock(on_gpu)
        runners = {k: _runner(pipe, counter, o, x0, clock, k, progress) for k, o in options.items()}
        memory: dict[str, dict[str, Any]] = {}
        warm_counts: dict[str, dict[str, int]] = {}
        rss_loaded = rss_bytes()
        batch = {k: 1 if not o.guided else o.guidance_batch for k, o in options.items()}
        order = sorted(options, key=lambda k: batch[k])  # smaller UNet batch first: see the module docstring
        for k in order:
            o = options[k]
            steps = min(opts.warmup_steps or o.num_inference_steps, o.num_inference_steps)
            warm = _runner(pipe, counter, replace(o, num_inference_steps=steps), x0, clock, f"{k} warm-up", progress)
            for i in range(opts.warmup):
                progress(
                    f"{k}: warm-up {i + 1}/{opts.warmup} ({steps} steps)" + (" measuring memory" if i == 0 else "")
                )
                if i == 0:
                    with MemorySampler(device=on_gpu) as m:
                        w = warm()
                    assert m.peaks is not None
                    memory[k] = {
                        **m.peaks.to_json(),
                        "host_rss_added_bytes": m.peaks.host_rss_peak - rss_loaded,
                        "warmup_steps": steps,
                    }
                    warm_counts[k] = {"calls": w["unet_calls"], "passes": w["unet_passes"]}
                else:
                    warm()
        # timed rounds start in the same order: a run cut short has the short sampler's whole run in its log
        samples = alternate({k: runners[k] for k in order}, warmup=0, repeat=opts.repeat, progress=progress)
        backend_name, precision, selection = pipe.backend.name, pipe.backend.precision, pipe.selection_note
    finally:
        pipe.close()
    contenders: dict[str, Any] = {}
    for k, o in options.items():  # columns in the order given
        s = samples[k]
        calls, passes = s.pop("unet_calls"), s.pop("unet_passes")
        if len(set(calls)) != 1 or len(set(passes)) != 1:
            raise RuntimeError(f"{k}: UNet calls differ between runs: {calls}, {passes}")
        figures = _summaries(s, o)
        contenders[k] = {
            "figures": figures,
            "samples": s,
            "memory": memory[k],
            "sampler": {
                "name": o.scheduler,
                "steps": o.num_inference_steps,
                "guidance_scale": o.guidance_scale,
                "guided": o.guided,
                "guidance_batch": batch[k],
                "negative_prompt": o.negative_prompt,
            },
            "unet": {"calls": calls[0], "passes": passes[0], "warmup_calls": warm_counts[k]["calls"]},
            "dominant_stage": dominant(figures),
        }
    labels = list(contenders)
    ref = contenders[labels[0]]["figures"]
    record: dict[str, Any] = {
        "benchmark": "t2vrt bench --samplers",
        "date": report.stamp(),
        "machine": report.machine_info(),
        "versions": report.versions(),
        "bundle": bundle_identity(manifest),
        "shapes": {
            "frames": first.num_frames,
            "height": first.height,
            "width": first.width,
            "latents": list(shape),
            "vae_chunk": first.vae_chunk,
            "samplers": labels,
        },
        "settings": {
            **{k: str(v) if isinstance(v, Path) else v for k, v in asdict(opts).items()},
            "clock": clock.name,
            "load_average_1min": {"start": load_start[0], "end": os.getloadavg()[0]},
        },
        "ours": f"t2vrt-{backend_name}",
        "backend": backend_name,
        "precision": precision,
        "selection": selection,
        "samplers": labels,
        "contenders": contenders,
        "ratios": {
            k: {
                f: ref[f]["mean"] / c["figures"][f]["mean"]
                for f in ("denoise", "end_to_end")
                if c["figures"][f]["mean"] > 0
            }
            for k, c in contenders.items()
        },
    }
    return record


def _s(v: float) -> str:
    return f"{v:.1f} s" if v >= 10 else f"{v:.2f} s" if v >= 1 else f"{v * 1e3:.0f} ms"


def rows(record: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    """The side-by-side table: one column per sampler."""
    cs = record["contenders"]
    labels = list(cs)
    out: list[list[str]] = []

    def row(name: str, fn: Callable[[str, dict[str, Any]], str]) -> None:
        out.append([name, *(fn(k, cs[k]) for k in labels)])

    def guidance(c: dict[str, Any]) -> str:
        g = c["sampler"]
        return f"{g['guidance_scale']:g} (guidance batch {g['guidance_batch']})" if g["guided"] else "none"

    row("sampler", lambda k, c: f"{c['sampler']['name']}, {c['sampler']['steps']} steps")
    row("classifier-free guidance", lambda k, c: guidance(c))
    row("UNet calls / passes", lambda k, c: f"{c['unet']['calls']} / {c['unet']['passes']}")
    row("text encode", lambda k, c: _s(c["figures"]["text_encode"]["mean"]))
    row("UNet step (mean)", lambda k, c: _s(c["figures"]["unet_step"]["mean"]))
    row("denoise (all steps)", lambda k, c: _s(c["figures"]["denoise"]["mean"]))
    row("VAE decode", lambda k, c: _s(c["figures"]["decode"]["mean"]))
    row("end to end", lambda k, c: _s(c["figures"]["end_to_end"]["mean"]))
    row(f"end to end, {labels[0]} / this", lambda k, c: f"{record['ratios'][k]['end_to_end']:.2f}x")
    row("peak host RSS", lambda k, c: f"{c['memory']['host_rss_peak_bytes'] / 2**30:.2f} GiB")
    row("dominant stage", lambda k, c: f"{c['dominant_stage']['stage']} ({c['dominant_stage']['share']:.0%})")
    return ["figure", *labels], out


def summary(record: dict[str, Any]) -> str:
    s = record["shapes"]
    head = (
        f"{record['bundle']['model']}: {s['frames']} frames {s['width']}x{s['height']}, "
        f"{record['backend']} ({record['precision']}), mean of {record['settings']['repeat']} run(s); "
        f"{record['settings']['clock']}"
    )
    header, body = rows(record)
    return head + "\n" + report.table(body, header)


def markdown(record: dict[str, Any]) -> str:
    s, m, v = record["shapes"], record["machine"], record["versions"]
    header, body = rows(record)
    lines = [
        f"# t2vrt bench --samplers {','.join(record['samplers'])}, {record['date']}",
        "",
        f"Bundle: {record['bundle']['model']} ({record['bundle']['path']}, manifest sha256 "
        f"{record['bundle']['manifest_sha256'][:12]}), {record['backend']} {record['precision']}.",
        f"Machine: {m['cpu']}, {m['physical_cores']} cores, {m['ram_bytes'] / 2**30:.0f} GiB RAM; 1-minute load "
        f"average {record['settings']['load_average_1min']['start']:.1f} at the start, "
        f"{record['settings']['load_average_1min']['end']:.1f} at the end.",
        "Versions: " + ", ".join(f"{k} {val}" for k, val in v.items()) + ".",
        f"Shapes: {s['frames']} frames {s['width']}x{s['height']} (latents {s['latents']}), one video, same prompt "
        f"and initial latents; {record['settings']['warmup']} warm-up run(s) per sampler "
        f"({'full length' if not record['settings'].get('warmup_steps') else str(record['settings']['warmup_steps']) + ' step(s)'}"
        f", where memory is sampled), then {record['settings']['repeat']} timed run(s), alternating.",
        "",
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
        *("| " + " | ".join(r) + " |" for r in body),
        "",
        "UNet passes count videos through the UNet (a guided step at guidance batch 2 is one call carrying two).",
    ]
    for k, c in record["contenders"].items():
        steps = c["samples"]["unet_step"]
        lines.append(
            f"{k}: UNet step times (s) "
            + ", ".join(f"{t:.2f}" for t in steps[:60])
            + (" ..." if len(steps) > 60 else "")
            + "."
        )
    return "\n".join(lines) + "\n"


def write_markdown(path: Path, record: dict[str, Any]) -> Path:
    from t2vrt.safety.atomic import staged_file

    with staged_file(path, ".md", "--out") as tmp:
        tmp.write_text(markdown(record))
    return path
