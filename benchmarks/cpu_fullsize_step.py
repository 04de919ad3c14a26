"""One full-size ms-1.7b UNet step on the CPU: ONNX Runtime (several session settings) vs PyTorch eager.

Random weights (the sizes are what matter): the UNet at CFG batch 2, 16 frames, a 32x32 latent (256x256 video),
exported once to ONNX (~50 s, ~7 GB RSS; cached under --work), then
  1. the machine's fp32 GEMM peak (numpy's and torch's BLAS), and the step's FLOPs counted from the ONNX graph;
  2. a screening of ONNX Runtime session settings (one warm-up + --screen-repeat timed steps each, one at a time);
  3. the best setting against torch eager, alternating in one process (--warmup, --repeat), with an output parity
     check, so the ratio holds on a noisy machine.
Writes benchmarks/results/cpu_fullsize_step-<date>.{json,png,md}. Peak RSS ~12 GB (torch and ORT copies of the
5.6 GB of weights). Usage: .venv/bin/python benchmarks/cpu_fullsize_step.py [--repeat 3]
"""

from __future__ import annotations

import argparse
import gc
import os
import shutil
import sys
import time
from pathlib import Path

import numpy as np

from t2vrt.benchmark import flops as F
from t2vrt.benchmark import report as R
from t2vrt.benchmark.harness import alternate, summarize
from t2vrt.benchmark.memory import MemorySampler, rss_bytes

DIMS = {"batch": 2, "frames": 16, "latent_height": 32, "latent_width": 32}
MODEL = "ms-1.7b"


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def build_unet(seed: int):
    import torch

    from t2vrt.config import preset
    from t2vrt.models.random_init import randomize_
    from t2vrt.models.unet3d import UNet3D

    with torch.device("meta"):
        unet = UNet3D(preset(MODEL).unet)
    unet.to_empty(device="cpu")
    return randomize_(unet, seed).eval()


def export_unet(work: Path, seed: int, opset: int) -> Path:
    """The UNet as an fp32 ONNX graph in work/<model>-unet-seed<seed>-.../, exported once, in a child process.

    torch.onnx.export as t2vrt's exporter calls it (TorchScript, the io spec's names and dynamic axes) but without
    the graphsurgeon tidy: that holds the weights three times (16 GB RSS at full size), and ONNX Runtime folds the
    same constants itself when it builds the session. The child's memory goes back to the OS when it exits.
    """
    import subprocess

    import torch

    out = work / f"{MODEL}-unet-seed{seed}-opset{opset}-torch{torch.__version__}"
    if (out / "model.onnx").is_file():
        log(f"reusing {out}")
        return out / "model.onnx"
    wait_for_memory(12)
    t0 = time.perf_counter()
    log("exporting the UNet to ONNX in a child process")
    subprocess.run(
        [
            sys.executable,
            __file__,
            "--export-only",
            str(out),
            "--model",
            MODEL,
            "--seed",
            str(seed),
            "--opset",
            str(opset),
        ],
        check=True,
    )
    log(f"exported in {time.perf_counter() - t0:.0f} s")
    return out / "model.onnx"


def _export_child(out: Path, seed: int, opset: int) -> None:
    import torch

    from t2vrt.components import COMPONENTS
    from t2vrt.config import preset
    from t2vrt.export.bundle import EngineIO
    from t2vrt.export.numerics import sample_inputs

    tmp = out.with_name(f".{out.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    spec = COMPONENTS["unet"].io(preset(MODEL))
    inputs = tuple(torch.from_numpy(v) for v in sample_inputs(spec, COMPONENTS["unet"].trace_dims).values())
    with torch.no_grad():
        torch.onnx.export(
            EngineIO(build_unet(seed), torch.float32),
            inputs,
            str(tmp / "model.onnx"),
            input_names=spec.input_names,
            output_names=spec.output_names,
            dynamic_axes=spec.dynamic_axes(),
            opset_version=opset,
            do_constant_folding=True,
            dynamo=False,
        )
    log(f"child peak RSS {peak_rss_bytes() / 2**30:.1f} GiB")
    tmp.rename(out)


def peak_rss_bytes() -> int:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def wait_for_memory(gib: float, patience_s: float = 1800) -> None:
    """Wait (up to patience_s) until the machine has `gib` GiB available: it is shared with other jobs."""
    import psutil

    t_end = time.time() + patience_s
    while psutil.virtual_memory().available < gib * 2**30:
        if time.time() > t_end:
            raise SystemExit(f"gave up: less than {gib} GiB of memory available for {patience_s:.0f} s")
        log(f"waiting for {gib} GiB of free memory ({psutil.virtual_memory().available / 2**30:.1f} available)")
        time.sleep(20)


def step_inputs(seed: int = 3) -> dict[str, np.ndarray]:
    from t2vrt.config import preset

    cfg = preset(MODEL)
    rng = np.random.default_rng(seed)
    b, f, h, w = DIMS["batch"], DIMS["frames"], DIMS["latent_height"], DIMS["latent_width"]
    return {
        "latents": rng.standard_normal((b, 4, f, h, w), dtype=np.float32),
        "timestep": np.full((b,), 500.0, np.float32),
        "text_embeddings": rng.standard_normal(
            (b, cfg.text_encoder.context_length, cfg.unet.context_dim), dtype=np.float32
        ),
    }


def ort_variants(threads: int) -> dict[str, dict]:
    """Session settings tried: name -> what differs from the base (all optimisations, sequential, one thread per
    physical core, arena and memory pattern on, ORT's default spinning). t2vrt's make_session is ort-all-nospin,
    the fastest in the 2026-11-24 screen."""
    return {
        "ort-all": {},
        "ort-extended": {"level": "ORT_ENABLE_EXTENDED"},  # no NCHWc layout transform of the convolutions
        "ort-all-nospin": {"config": {"session.intra_op.allow_spinning": "0"}},  # idle threads sleep, not spin
        "ort-all-noarena": {"arena": False, "mem_pattern": False},
    }


def make_session(
    path: Path,
    threads: int,
    level: str = "ORT_ENABLE_ALL",
    config: dict | None = None,
    arena: bool = True,
    mem_pattern: bool = True,
):
    import onnxruntime as ort

    o = ort.SessionOptions()
    o.graph_optimization_level = getattr(ort.GraphOptimizationLevel, level)
    o.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    o.intra_op_num_threads = threads
    o.enable_cpu_mem_arena = arena
    o.enable_mem_pattern = mem_pattern
    o.log_severity_level = 3
    for k, v in (config or {}).items():
        o.add_session_config_entry(k, v)
    return ort.InferenceSession(str(path), sess_options=o, providers=["CPUExecutionProvider"])


def timed(fn) -> dict[str, float]:
    load = os.getloadavg()[0]
    t0 = time.perf_counter()
    fn()
    return {"step": time.perf_counter() - t0, "load_1min": load}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", type=Path, default=Path(os.environ.get("TMPDIR", "/tmp")) / "t2vrt-bench-fullsize")
    ap.add_argument("--out", type=Path, default=R.RESULTS_DIR)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--opset", type=int, default=17)
    ap.add_argument("--threads", type=int, default=None, help="intra-op threads for both (default: physical cores)")
    ap.add_argument("--variants", default="all", help="comma-separated ORT settings to screen, or 'all' / 'none'")
    ap.add_argument("--screen-repeat", type=int, default=1)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--model", default=MODEL, help=argparse.SUPPRESS)  # "tiny": a smoke run of this script
    ap.add_argument("--latent", type=int, default=DIMS["latent_height"], help=argparse.SUPPRESS)
    ap.add_argument(
        "--recount",
        type=Path,
        default=None,
        metavar="JSON",
        help="re-derive a record: FLOPs counted again, GEMM peak measured again (best kept)",
    )
    ap.add_argument("--export-only", type=Path, default=None, help=argparse.SUPPRESS)  # the export child
    args = ap.parse_args()
    globals()["MODEL"] = args.model
    DIMS["latent_height"] = DIMS["latent_width"] = args.latent
    if args.export_only:
        return _export_child(args.export_only, args.seed, args.opset)
    if args.recount:
        import torch

        onnx_path = (
            args.work / f"{MODEL}-unet-seed{args.seed}-opset{args.opset}-torch{torch.__version__}" / "model.onnx"
        )
        return recount(args.recount, onnx_path, args.threads or 2)

    import psutil
    import torch

    from t2vrt.runtime.onnxruntime_backend import cpu_threads

    threads = args.threads or cpu_threads()
    torch.set_num_threads(threads)
    args.work.mkdir(parents=True, exist_ok=True)
    record: dict = {
        "benchmark": "cpu_fullsize_step",
        "date": R.stamp(),
        "machine": R.machine_info(),
        "versions": R.versions(),
        "model": args.model,
        "weights": f"random (randomize_, seed {args.seed})",
        "shapes": {**DIMS, "channels": 4},
        "threads": threads,
        "settings": {
            "warmup": args.warmup,
            "repeat": args.repeat,
            "screen_repeat": args.screen_repeat,
            "clock": "host perf_counter (CPU)",
        },
    }

    log("measuring the fp32 GEMM peak")
    record["gemm_peak_gflops"] = F.gemm_peak_gflops(threads=threads)
    log(f"GEMM peak {record['gemm_peak_gflops']}")

    path = export_unet(args.work, args.seed, args.opset)
    inputs = step_inputs()
    shapes = {k: v.shape for k, v in inputs.items()}
    g = F.onnx_flops(path, shapes)
    record["flops"] = {"onnx_graph": g.total, "by_op": g.by_op, "uncounted_nodes": list(g.uncounted)}
    try:
        from torch.nn.attention import SDPBackend, sdpa_kernel
        from torch.utils.flop_counter import FlopCounterMode

        from t2vrt.config import preset
        from t2vrt.models.unet3d import UNet3D

        with torch.device("meta"):
            meta = UNet3D(preset(MODEL).unet)
            with FlopCounterMode(display=False) as fc, sdpa_kernel(SDPBackend.MATH):
                meta(*(torch.empty(s) for s in shapes.values()))
        record["flops"]["torch_flop_counter"] = int(fc.get_total_flops())
    except Exception as e:  # the cross-check is optional
        record["flops"]["torch_flop_counter_error"] = str(e)
    log(
        f"step FLOPs {g.total / 1e12:.2f} T (graph), {record['flops'].get('torch_flop_counter', 0) / 1e12:.2f} T (torch)"
    )

    variants = ort_variants(threads)
    chosen = list(variants) if args.variants == "all" else [] if args.variants == "none" else args.variants.split(",")
    screen: dict[str, dict] = {}
    with MemorySampler(interval=0.1) as mem_screen:
        for name in chosen:
            wait_for_memory(8)
            t0 = time.perf_counter()
            sess = make_session(path, threads, **variants[name])
            t_load = time.perf_counter() - t0
            log(f"{name}: session in {t_load:.0f} s, RSS {rss_bytes() / 2**30:.1f} GiB")
            res = alternate(
                {name: lambda s=sess: timed(lambda: s.run(None, inputs))},
                warmup=1,
                repeat=args.screen_repeat,
                progress=log,
            )[name]
            screen[name] = {
                "settings": variants[name],
                "session_seconds": t_load,
                "step": summarize(res["step"]).to_json(),
                "load_1min": res["load_1min"],
            }
            log(f"{name}: step {screen[name]['step']['mean']:.1f} s")
            del sess
            gc.collect()
    record["screen"] = screen
    record["screen_peak_rss_bytes"] = mem_screen.peaks.host_rss_peak if mem_screen.peaks else None
    best = min(screen, key=lambda n: screen[n]["step"]["mean"]) if screen else "ort-all"
    record["best_variant"] = best

    log(f"alternating {best} with torch eager")
    wait_for_memory(13)
    unet = build_unet(args.seed)
    tin = {k: torch.from_numpy(v) for k, v in inputs.items()}
    sess = make_session(path, threads, **variants[best])
    outs: dict[str, np.ndarray] = {}

    def run_ort() -> dict[str, float]:
        def go():
            outs["ort"] = sess.run(None, inputs)[0]

        return timed(go)

    def run_torch() -> dict[str, float]:
        def go():
            with torch.inference_mode():
                outs["torch"] = unet(*tin.values()).numpy()

        return timed(go)

    with MemorySampler(interval=0.1) as mem_main:
        res = alternate({best: run_ort, "torch-eager": run_torch}, warmup=args.warmup, repeat=args.repeat, progress=log)
    from t2vrt.export.numerics import rel_l2

    record["main"] = {name: {"samples": smp["step"], "load_1min": smp["load_1min"]} for name, smp in res.items()}
    record["parity_rel_l2"] = rel_l2(outs["ort"], outs["torch"])
    record["main_peak_rss_bytes"] = mem_main.peaks.host_rss_peak if mem_main.peaks else None
    record["machine"]["load_average_end"] = list(os.getloadavg())
    record["machine"]["cpu_percent_after"] = psutil.cpu_percent(interval=1.0)
    finish(record, args.out)


def recount(path: Path, onnx_path: Path | None, threads: int) -> None:
    """Re-derive a record: count FLOPs again (from the cached ONNX) and measure the GEMM peak again, keeping the
    best peak seen (a shared machine's measurements only err low); rewrite its .json/.md/.png."""
    import json

    record = json.loads(path.read_text())
    if onnx_path is not None and onnx_path.is_file():
        shapes = {
            "latents": (DIMS["batch"], 4, DIMS["frames"], DIMS["latent_height"], DIMS["latent_width"]),
            "timestep": (DIMS["batch"],),
            "text_embeddings": (DIMS["batch"], 77, 1024),
        }
        g = F.onnx_flops(onnx_path, shapes)
        record["flops"].update(onnx_graph=g.total, by_op=g.by_op, uncounted_nodes=list(g.uncounted))
    again = F.gemm_peak_gflops(threads=threads)
    record.setdefault("gemm_peak_measurements", [dict(record["gemm_peak_gflops"])]).append({**again, "date": R.stamp()})
    record["gemm_peak_gflops"] = {k: max(m.get(k, 0.0) for m in record["gemm_peak_measurements"]) for k in again}
    finish(record, path.parent)


def finish(record: dict, out: Path) -> None:
    """Summaries, FLOP rates and fractions of peak from the samples; write <out>/cpu_fullsize_step-<date>.*"""
    flops = record["flops"]["onnx_graph"]
    peak = max(record["gemm_peak_gflops"].values())
    for f in record["main"].values():
        s = summarize(f["samples"])
        f.update(step=s.to_json(), gflops=flops / s.mean / 1e9, fraction_of_peak=flops / s.mean / 1e9 / peak)
    best, screen, main_figs = record["best_variant"], record["screen"], record["main"]
    record["torch_over_ort"] = main_figs["torch-eager"]["step"]["mean"] / main_figs[best]["step"]["mean"]
    # Round by round (the two ran back to back): a burst of load from other jobs hits one pair, not the median.
    pairs = [t / o for t, o in zip(main_figs["torch-eager"]["samples"], main_figs[best]["samples"])]
    record["torch_over_ort_per_round"] = pairs
    record["torch_over_ort_median_round"] = summarize(pairs).p50
    stamp = record["date"].replace(":", "").replace("-", "")
    base = out / f"cpu_fullsize_step-{stamp}"
    R.write_json(base.with_suffix(".json"), record)
    stages = {
        "UNet step (screen)": {n: screen[n]["step"]["mean"] for n in screen},
        "UNet step (alternating)": {n: main_figs[n]["step"]["mean"] for n in main_figs},
    }
    R.plot_stages(
        base.with_suffix(".png"),
        stages,
        f"{record['model']} UNet step, CFG batch 2 x 16 frames x 32x32 latent, {record['threads']} CPU threads",
    )
    text = R.stage_table(
        {"UNet step": {n: main_figs[n]["step"]["mean"] for n in main_figs}}, ratio_of=(best, "torch-eager")
    )
    base.with_suffix(".md").write_text(markdown(record, text, base.name))
    print(text)
    print(
        f"torch / ORT = {record['torch_over_ort_median_round']:.2f}x (median round); ORT at {main_figs[best]['fraction_of_peak']:.0%} of the "
        f"{peak:.0f} GFLOP/s GEMM peak; parity rel L2 {record['parity_rel_l2']:.1e}; wrote {base}.{{json,png,md}}"
    )


def markdown(r: dict, text: str, name: str) -> str:
    m, model = r["machine"], r["model"]
    peak = max(r["gemm_peak_gflops"].values())
    lines = [
        f"# cpu_fullsize_step, {r['date']}",
        "",
        f"Machine: {m['cpu']}, {m['physical_cores']} cores, {m['ram_bytes'] / 2**30:.0f} GiB RAM "
        f"({m['platform']}); load average {m['load_average'][0]:.2f} at start, {m['load_average_end'][0]:.2f} at end "
        "(shared with other jobs).",
        f"Versions: {', '.join(f'{k} {v}' for k, v in r['versions'].items())}.",
        f"Shapes: {model} UNet (random weights), batch {r['shapes']['batch']} (CFG), {r['shapes']['frames']} frames, "
        f"{r['shapes']['latent_height']}x{r['shapes']['latent_width']} latent; {r['threads']} threads; "
        f"{r['flops']['onnx_graph'] / 1e12:.2f} TFLOP per step (MatMul/Conv/Gemm of the ONNX graph).",
        f"fp32 GEMM peak: {peak:.0f} GFLOP/s ({', '.join(f'{k} {v:.0f}' for k, v in r['gemm_peak_gflops'].items())}).",
        "",
        "ONNX Runtime settings screened (1 warm-up, then timed steps; one at a time, so load varies):",
        "",
        "| setting | step (s) | session load (s) | load average (1 min) |",
        "|---|---|---|---|",
    ]
    for n, s in r["screen"].items():
        load = ", ".join(f"{x:.1f}" for x in s["load_1min"])
        lines.append(
            f"| {n} {s['settings'] or '(ORT defaults)'}{' = t2vrt' if n == 'ort-all-nospin' else ''} | {s['step']['mean']:.1f} | {s['session_seconds']:.0f} | {load} |"
        )
    lines += [
        "",
        f"Alternating ({r['settings']['warmup']} warm-up, {r['settings']['repeat']} rounds):",
        "",
        "```",
        text,
        "```",
        "",
        "| contender | mean (s) | p50 (s) | min (s) | samples (s) | GFLOP/s (mean; best) | of peak (mean; best) |",
        "|---|---|---|---|---|---|---|",
    ]
    flops, peak = r["flops"]["onnx_graph"], max(r["gemm_peak_gflops"].values())
    for n, f in r["main"].items():
        st, best = f["step"], flops / f["step"]["min"] / 1e9
        smp = ", ".join(f"{x:.1f}" for x in f["samples"])
        lines.append(
            f"| {n} | {st['mean']:.1f} | {st['p50']:.1f} | {st['min']:.1f} | {smp} | {f['gflops']:.0f}; {best:.0f} | "
            f"{f['fraction_of_peak']:.0%}; {best / peak:.0%} |"
        )
    rounds = ", ".join(f"{x:.2f}" for x in r["torch_over_ort_per_round"])
    lines += [
        "",
        f"torch eager / ORT: **{r['torch_over_ort_median_round']:.2f}x** (median of the rounds' ratios: {rounds}; "
        f"ratio of means {r['torch_over_ort']:.2f}x); outputs agree to rel L2 {r['parity_rel_l2']:.1e}. "
        f"Peak RSS {r['main_peak_rss_bytes'] / 2**30:.1f} GiB.",
        "",
        f"Files: {name}.json (every figure), {name}.png. Reproduce: `.venv/bin/python benchmarks/cpu_fullsize_step.py`.",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
