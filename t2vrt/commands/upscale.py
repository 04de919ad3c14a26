"""`t2vrt upscale CLIP --bundle XL`: the zeroscope second stage in one command (video-to-video at a larger size)."""

from __future__ import annotations

import re
from pathlib import Path

import click

from t2vrt.commands import reports_errors
from t2vrt.commands.v2v_common import describe_init, read_posterior_noise
from t2vrt.errors import UsageError
from t2vrt.runtime.backends import CHOICES
from t2vrt.runtime.clip import FITS
from t2vrt.runtime.samplers import SAMPLERS


def parse_size(text: str) -> tuple[int, int]:
    """'1024x576' -> (1024, 576)."""
    m = re.fullmatch(r"\s*(\d+)\s*[xX]\s*(\d+)\s*", text)
    if not m:
        raise UsageError(f"--size {text!r}: expected WIDTHxHEIGHT, e.g. 1024x576")
    return int(m.group(1)), int(m.group(2))


def prompt_for(clip: Path, record: dict | None, prompt: str | None, negative: str | None) -> tuple[str, str | None]:
    """--prompt, else the clip's own record's prompt (a t2vrt video carries it); the negative prompt likewise."""
    if prompt is None:
        if not record or not isinstance(record.get("prompt"), str):
            raise UsageError(
                f"{clip} carries no t2vrt record of its prompt (it was not made by t2vrt, or was "
                "re-encoded): pass --prompt"
            )
        prompt = record["prompt"]
    if negative is None and record and isinstance(record.get("negative_prompt"), str):
        negative = record["negative_prompt"]
    return prompt, negative


@click.command("upscale")
@click.argument("clip", type=click.Path(path_type=Path))
@click.option(
    "--bundle",
    "-b",
    required=True,
    type=click.Path(path_type=Path),
    help="The bundle to upscale with (zeroscope_v2_XL for the zeroscope workflow).",
)
@click.option(
    "--output",
    "-o",
    type=click.Path(path_type=Path),
    default=None,
    help="Output (.mp4, .webm, .gif or a directory; default: CLIP's name + '_upscaled.mp4' beside it).",
)
@click.option("--size", default="1024x576", show_default=True, help="Output WIDTHxHEIGHT (multiples of 64).")
@click.option(
    "--strength",
    type=float,
    default=0.7,
    show_default=True,
    help="How much is redrawn, in (0, 1]: zeroscope's card suggests 0.66-0.85, diffusers' example 0.6.",
)
@click.option("--prompt", default=None, help="Prompt (default: the one recorded in CLIP by t2vrt).")
@click.option("--negative", default=None, help="Negative prompt (default: CLIP's recorded one, else the bundle's).")
@click.option("--frames", type=int, default=None, help="Frames to upscale (default: all of CLIP's).")
@click.option("--start-frame", type=click.IntRange(0), default=0, show_default=True)
@click.option(
    "--fit",
    type=click.Choice(FITS),
    default="crop",
    show_default=True,
    help="crop: keep the aspect ratio and cut the centre; stretch: scale each axis.",
)
@click.option("--steps", type=int, default=None, help="Denoising steps of the full schedule (default: the bundle's).")
@click.option("--guidance", type=float, default=None, help="Guidance scale (default: the bundle's).")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--scheduler", type=click.Choice(list(SAMPLERS)), default=None, help="Sampler (default: the bundle's).")
@click.option("--posterior-noise", default=None, help="'mean', or a .npy (frames, 4, height/8, width/8).")
@click.option("--backend", type=click.Choice(CHOICES), default="auto", show_default=True)
@click.option("--guidance-batch", type=click.IntRange(1, 2), default=None, help="1: two UNet calls, less memory.")
@click.option("--vae-chunk", type=click.IntRange(0), default=None, help="Frames per VAE call (0 = all).")
@click.option("--overwrite", is_flag=True, help="Replace an existing output.")
@click.option("--quiet", "-q", is_flag=True, help="No progress bar.")
@reports_errors
def command(
    clip: Path,
    bundle: Path,
    output: Path | None,
    size: str,
    strength: float,
    prompt: str | None,
    negative: str | None,
    frames: int | None,
    start_frame: int,
    fit: str,
    steps: int | None,
    guidance: float | None,
    seed: int,
    scheduler: str | None,
    posterior_noise: str | None,
    backend: str,
    guidance_batch: int | None,
    vae_chunk: int | None,
    overwrite: bool,
    quiet: bool,
) -> None:
    """Redraw CLIP at --size with a bundle (video-to-video), reusing the prompt t2vrt recorded in it."""
    from t2vrt.commands.progress import step_bar
    from t2vrt.runtime.clip import read_clip
    from t2vrt.runtime.options import resolve_options
    from t2vrt.runtime.pipeline import Pipeline
    from t2vrt.runtime.vid2vid_math import check_strength
    from t2vrt.runtime.video import check_output_path, save_video

    width, height = parse_size(size)
    check_strength(strength)
    out = output if output is not None else clip.with_name(f"{clip.stem}_upscaled.mp4")
    check_output_path(out, overwrite=overwrite)
    posterior = read_posterior_noise(posterior_noise)

    with Pipeline.from_bundle(bundle, backend=backend) as pipe:
        resolve_options(pipe.manifest, "", height=height, width=width)  # a size the bundle can't make: say so now
        c = read_clip(clip, start_frame=start_frame, num_frames=frames, size=(width, height), fit=fit)
        text, neg = prompt_for(clip, c.metadata, prompt, negative)
        click.echo(f"backend: {pipe.selection_note}", err=True)
        click.echo(
            f"upscaling {c.num_frames} frames {c.source_size[0]}x{c.source_size[1]} -> {width}x{height}: {text!r}",
            err=True,
        )
        bar, on_step = step_bar("denoising", quiet)

        try:
            video = pipe(
                text,
                negative_prompt=neg,
                num_frames=c.num_frames,
                height=height,
                width=width,
                num_inference_steps=steps,
                guidance_scale=guidance,
                seed=seed,
                scheduler=scheduler,
                guidance_batch=guidance_batch,
                vae_chunk=vae_chunk,
                callback=on_step,
                init_video=c.frames,
                strength=strength,
                posterior_noise=posterior,
            )
        finally:
            bar.close()
    record = dict(video.record or {})
    record["init"] = {**record.get("init", {}), "source": clip.name, "start_frame": start_frame, "fit": fit}
    if c.metadata and isinstance(c.metadata.get("prompt"), str):
        record["init"]["source_prompt"] = c.metadata["prompt"]
    fps = c.fps or (c.metadata or {}).get("fps") or video.fps
    path = save_video(video.frames, out, fps=float(fps), overwrite=overwrite, metadata=record)
    o, t = video.options, video.timings
    click.echo(
        f"{o.num_frames} frames {o.width}x{o.height}, guidance {o.guidance_scale:g}, seed {o.seed} on "
        f"{video.backend}: {describe_init(record['init'], o.num_inference_steps)}\n"
        f"  encode {t.get('init_encode', 0):.2f} s | denoise {t['denoise']:.2f} s ({t['step'] * 1000:.0f} ms/step) | "
        f"decode {t['decode']:.2f} s"
    )
    click.echo(f"wrote {path}")
