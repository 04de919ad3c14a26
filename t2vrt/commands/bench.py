"""`t2vrt bench BUNDLE`: stage latencies, throughput and peak memory of t2vrt vs PyTorch eager, alternating."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from t2vrt.commands import reports_errors
from t2vrt.runtime.backends import CHOICES


@click.command("bench")
@click.argument("bundle", type=click.Path(path_type=Path))
@click.option("--backend", type=click.Choice(CHOICES), default="auto", show_default=True)
@click.option(
    "--baseline",
    type=click.Choice(["torch", "none"]),
    default=None,
    help="Also run the checkpoint the bundle came from in PyTorch eager (fp16+SDPA on GPU, fp32 on CPU). "
    "Default: torch; none with --samplers.",
)
@click.option(
    "--samplers",
    default=None,
    metavar="NAME[:STEPS[:G]],...",
    help="Samplers side by side on this bundle in one run, e.g. ddim:50,lcm:4 (time per stage, UNet "
    "calls/passes, peak RSS, the dominant stage); an unguided few-step sampler runs at guidance 1.",
)
@click.option(
    "--warmup-steps",
    type=int,
    default=None,
    help="With --samplers: steps of each warm-up run (default: the sampler's own; 1 warms every session "
    "at the run's shapes, where memory is sampled, without a second long run).",
)
@click.option(
    "--vae-chunk",
    type=click.IntRange(0),
    default=None,
    help="Frames per VAE call (0 = all; default: the backend's choice).",
)
@click.option("--frames", type=int, default=None, help="Frames (default: the bundle's).")
@click.option("--height", type=int, default=None, help="Height in pixels (default: the bundle's).")
@click.option("--width", type=int, default=None, help="Width in pixels (default: the bundle's).")
@click.option("--steps", type=int, default=None, help="Denoising steps (default: the bundle's).")
@click.option(
    "--warmup",
    type=int,
    default=1,
    show_default=True,
    help="Untimed runs per contender (>= 1; memory is measured in the first).",
)
@click.option(
    "--repeat", type=int, default=3, show_default=True, help="Timed rounds (contenders alternate within each)."
)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--threads", type=click.IntRange(1), default=None, help="CPU threads for both (default: physical cores).")
@click.option(
    "--out",
    "out_dir",
    type=click.Path(path_type=Path),
    default=Path("benchmarks/results"),
    show_default=True,
    help="Directory for the JSON record and the PNG plot.",
)
@click.option("--no-plot", is_flag=True, help="JSON only.")
@click.option("--quiet", "-q", is_flag=True, help="No progress lines.")
@reports_errors
def command(
    bundle: Path,
    backend: str,
    baseline: str | None,
    samplers: str | None,
    warmup_steps: int | None,
    vae_chunk: int | None,
    frames: int | None,
    height: int | None,
    width: int | None,
    steps: int | None,
    warmup: int,
    repeat: int,
    seed: int,
    threads: int | None,
    out_dir: Path,
    no_plot: bool,
    quiet: bool,
) -> None:
    """Benchmark BUNDLE: text encoding, UNet step (mean/p50/p95), VAE decode, end to end, throughput, peak memory."""
    from t2vrt.benchmark import report
    from t2vrt.benchmark.run import BenchOptions, run_bench, stage_means, write_outputs

    report.check_out_dir(out_dir)  # before minutes of benchmarking
    baseline = baseline or ("none" if samplers is not None else "torch")
    opts = BenchOptions(
        bundle=bundle,
        backend=backend,
        baseline=baseline,
        frames=frames,
        height=height,
        width=width,
        steps=steps,
        warmup=warmup,
        repeat=repeat,
        seed=seed,
        threads=threads,
        samplers=samplers,
        warmup_steps=warmup_steps,
        vae_chunk=vae_chunk,
    )
    record = run_bench(opts, progress=(lambda s: None) if quiet else (lambda s: click.echo(f"  {s}", err=True)))
    if samplers is not None:
        from t2vrt.benchmark.compare import summary

        click.echo(summary(record))
        paths = write_outputs(record, out_dir, plot=not no_plot)
        click.echo("wrote " + ", ".join(str(p) for p in paths.values()), file=sys.stdout)
        return
    s = record["shapes"]
    click.echo(
        f"{record['bundle']['model']}: {s['frames']} frames {s['width']}x{s['height']}, {s['steps']} steps, "
        f"guidance batch {s['guidance_batch']}; {record['settings']['clock']}"
    )
    click.echo(
        report.stage_table(
            stage_means(record), ratio_of=(record["ours"], record["baseline"]) if "baseline" in record else None
        )
    )
    for name, c in record["contenders"].items():
        f, m = c["figures"], c["memory"]
        line = (
            f"{name}: step p50 {f['unet_step']['p50'] * 1e3:.1f} ms, p95 {f['unet_step']['p95'] * 1e3:.1f} ms; "
            f"{f['throughput']['frames_per_s']:.2f} frames/s, {f['throughput']['videos_per_min']:.2f} videos/min; "
            f"host RSS peak {m['host_rss_peak_bytes'] / 2**20:.0f} MiB (+{m['host_rss_added_bytes'] / 2**20:.0f})"
        )
        if m.get("device_added_bytes") is not None:
            line += f"; device +{m['device_added_bytes'] / 2**20:.0f} MiB"
            pred = m.get("planner_prediction") or {}
            if pred.get("peak_bytes"):
                line += f" (planner predicted {pred['peak_bytes'] / 2**20:.0f} MiB: {pred['source']})"
        click.echo(line)
    paths = write_outputs(record, out_dir, plot=not no_plot)
    click.echo("wrote " + ", ".join(str(p) for p in paths.values()), file=sys.stdout)
