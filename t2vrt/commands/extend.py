"""`t2vrt extend CLIP --bundle B --overlap K`: a clip continued past the model's length, window by window."""

from __future__ import annotations

from pathlib import Path

import click

from t2vrt.commands import reports_errors
from t2vrt.commands.upscale import prompt_for
from t2vrt.commands.v2v_common import describe_init
from t2vrt.runtime.backends import CHOICES
from t2vrt.runtime.samplers import SAMPLERS


@click.command("extend")
@click.argument("clip", type=click.Path(path_type=Path))
@click.option("--bundle", "-b", required=True, type=click.Path(path_type=Path), help="Bundle directory.")
@click.option("--overlap", type=int, required=True, help="Frames each new window holds from the video so far.")
@click.option("--windows", type=int, default=1, show_default=True, help="New windows to generate.")
@click.option("--frames", type=int, default=None, help="Frames per window (default: the bundle's).")
@click.option(
    "--output",
    "-o",
    type=click.Path(path_type=Path),
    default=None,
    help="Output (default: CLIP's name + '_extended.mp4' beside it).",
)
@click.option("--prompt", default=None, help="Prompt (default: the one recorded in CLIP by t2vrt).")
@click.option("--negative", default=None, help="Negative prompt (default: CLIP's recorded one, else the bundle's).")
@click.option("--steps", type=int, default=None)
@click.option("--guidance", type=float, default=None)
@click.option("--seed", type=int, default=0, show_default=True, help="Window w uses seed + w.")
@click.option("--scheduler", type=click.Choice(list(SAMPLERS)), default=None)
@click.option("--backend", type=click.Choice(CHOICES), default="auto", show_default=True)
@click.option("--overwrite", is_flag=True, help="Replace an existing output.")
@click.option("--quiet", "-q", is_flag=True, help="No progress bar.")
@reports_errors
def command(
    clip: Path,
    bundle: Path,
    overlap: int,
    windows: int,
    frames: int | None,
    output: Path | None,
    prompt: str | None,
    negative: str | None,
    steps: int | None,
    guidance: float | None,
    seed: int,
    scheduler: str | None,
    backend: str,
    overwrite: bool,
    quiet: bool,
) -> None:
    """Continue CLIP by --windows windows, each holding the last --overlap frames so far; write the stitched video."""
    from t2vrt.commands.progress import step_bar
    from t2vrt.runtime.clip import read_clip
    from t2vrt.runtime.extend import extend
    from t2vrt.runtime.options import resolve_options
    from t2vrt.runtime.pipeline import Pipeline
    from t2vrt.runtime.vid2vid_math import continuation_length
    from t2vrt.runtime.video import check_output_path, save_video

    out = output if output is not None else clip.with_name(f"{clip.stem}_extended.mp4")
    check_output_path(out, overwrite=overwrite)
    with Pipeline.from_bundle(bundle, backend=backend) as pipe:
        c = read_clip(clip)
        text, neg = prompt_for(clip, c.metadata, prompt, negative)
        window = frames if frames is not None else pipe.manifest.defaults.num_frames
        total = continuation_length(c.num_frames, window, overlap, windows)  # checked before any work
        h, w = c.frames.shape[1:3]
        resolve_options(pipe.manifest, text, num_frames=window, height=h, width=w)  # the clip's size must be makeable
        click.echo(f"backend: {pipe.selection_note}", err=True)
        click.echo(
            f"extending {c.num_frames} frames to {total} ({windows} window(s) of {window}, {overlap} held)", err=True
        )
        bar, on_step = step_bar("window 1", quiet)

        def on_window(w: int, n: int) -> None:
            if w < n:
                bar.reset()
                bar.set_description(f"window {w + 1}")

        try:
            result = extend(
                pipe,
                c.frames,
                text,
                overlap,
                windows,
                num_frames=window,
                seed=seed,
                window_callback=on_window,
                negative_prompt=neg,
                num_inference_steps=steps,
                guidance_scale=guidance,
                scheduler=scheduler,
                callback=on_step,
            )
        finally:
            bar.close()
    record = {**result.record, "fps": c.fps or result.fps}
    record["init"] = {**record["init"], "source": clip.name}
    path = save_video(result.frames, out, fps=float(c.fps or result.fps), overwrite=overwrite, metadata=record)
    click.echo(
        f"{len(result.frames)} frames {c.frames.shape[2]}x{c.frames.shape[1]}: "
        f"{describe_init(record['init'], 0)}; denoise {result.timings.get('denoise', 0):.2f} s"
    )
    click.echo(f"wrote {path}")
