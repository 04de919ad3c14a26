"""`t2vrt generate PROMPT --bundle B -o out.mp4`: one video from a prompt, defaults from the bundle."""

from __future__ import annotations

import time
from pathlib import Path

import click

from t2vrt.commands import reports_errors
from t2vrt.commands.v2v_common import describe_init, read_posterior_noise
from t2vrt.errors import UsageError
from t2vrt.runtime.backends import CHOICES
from t2vrt.runtime.samplers import SAMPLERS


@click.command("generate")
@click.argument("prompt")
@click.option("--bundle", "-b", required=True, type=click.Path(path_type=Path), help="Bundle directory (t2vrt export).")
@click.option(
    "--output",
    "-o",
    type=click.Path(path_type=Path),
    default=Path("t2vrt.mp4"),
    show_default=True,
    help="Output: .mp4, .webm, .gif, or a directory (PNG frames).",
)
@click.option("--negative", default=None, help="Negative prompt (default: the bundle's, usually empty).")
@click.option("--frames", type=int, default=None, help="Frames (default: the bundle's).")
@click.option("--height", type=int, default=None, help="Height in pixels, a multiple of 64.")
@click.option("--width", type=int, default=None, help="Width in pixels, a multiple of 64.")
@click.option(
    "--steps",
    type=int,
    default=None,
    help="Denoising steps (default: the bundle's; 1..T-1 for a schedule of T training steps: 1..999).",
)
@click.option("--guidance", type=float, default=None, help="Classifier-free guidance scale (1..1000).")
@click.option("--eta", type=float, default=0.0, show_default=True, help="DDIM eta (0 = deterministic).")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option(
    "--scheduler",
    type=click.Choice(list(SAMPLERS)),
    default=None,
    help="Sampler (default: the bundle's, ddim for the base models).",
)
@click.option("--fps", type=int, default=None, help="Frames per second of the file (default: the bundle's, 8).")
@click.option("--backend", type=click.Choice(CHOICES), default="auto", show_default=True)
@click.option(
    "--guidance-batch",
    type=click.IntRange(1, 2),
    default=None,
    help="2: cond+uncond in one UNet call; 1: two calls, less memory (default: the engine plan's or 2).",
)
@click.option("--vae-chunk", type=click.IntRange(0), default=None, help="Frames per VAE call (0 = all).")
@click.option(
    "--latents",
    "latents_file",
    type=click.Path(path_type=Path),
    default=None,
    help="Initial noise as a .npy of shape (1, 4, frames, height/8, width/8), instead of --seed's.",
)
@click.option(
    "--init-video",
    type=click.Path(path_type=Path),
    default=None,
    help="Video-to-video: start from this clip (.mp4/.webm/.gif, a folder of images, or one image), resized "
    "to the output size.",
)
@click.option(
    "--strength",
    type=float,
    default=None,
    help="How much of the input is redrawn, in (0, 1] (default 0.6 with --init-video, 1 with --init-image).",
)
@click.option(
    "--start-frame", type=click.IntRange(0), default=0, show_default=True, help="First frame of --init-video to use."
)
@click.option(
    "--init-image",
    type=click.Path(path_type=Path),
    default=None,
    help="Image-to-video: the first --hold-frames frames hold this image; the model animates the rest.",
)
@click.option("--hold-frames", type=int, default=None, help="Frames --init-image holds (default 1).")
@click.option(
    "--posterior-noise",
    default=None,
    help="'mean', or a .npy (frames, 4, height/8, width/8): the VAE posterior's draw for the input "
    "(default: from --seed).",
)
@click.option("--overwrite", is_flag=True, help="Replace an existing output.")
@click.option("--quiet", "-q", is_flag=True, help="No progress bar.")
@reports_errors
def command(
    prompt: str,
    bundle: Path,
    output: Path,
    negative: str | None,
    frames: int | None,
    height: int | None,
    width: int | None,
    steps: int | None,
    guidance: float | None,
    eta: float,
    seed: int,
    scheduler: str | None,
    fps: int | None,
    backend: str,
    guidance_batch: int | None,
    vae_chunk: int | None,
    latents_file: Path | None,
    init_video: Path | None,
    strength: float | None,
    start_frame: int,
    init_image: Path | None,
    hold_frames: int | None,
    posterior_noise: str | None,
    overwrite: bool,
    quiet: bool,
) -> None:
    """Generate a video for PROMPT with a bundle's engines."""
    from t2vrt.commands.progress import step_bar
    from t2vrt.runtime.pipeline import Pipeline
    from t2vrt.runtime.video import check_output_path

    check_output_path(output, overwrite=overwrite)  # fail before minutes of work, not after
    if fps is not None and not 1 <= fps <= 240:
        raise UsageError(f"--fps must be in 1..240, got {fps}")
    latents = None
    if latents_file is not None:  # untrusted: header checked before reading, never unpickled (t2vrt.safety.npy)
        from t2vrt.safety.npy import load_npy

        latents = load_npy(latents_file, ndim=5, what=f"--latents {latents_file}")
    posterior = read_posterior_noise(posterior_noise)
    from t2vrt.runtime.vid2vid_stage import Init

    Init(init_video, init_image, None, strength, start_frame, hold_frames, posterior).check()  # before any loading

    with Pipeline.from_bundle(bundle, backend=backend) as pipe:
        click.echo(f"backend: {pipe.selection_note}", err=True)
        bar, on_step = step_bar("denoising", quiet)

        try:
            video = pipe(
                prompt,
                negative_prompt=negative,
                num_frames=frames,
                height=height,
                width=width,
                num_inference_steps=steps,
                guidance_scale=guidance,
                eta=eta,
                seed=seed,
                latents=latents,
                scheduler=scheduler,
                guidance_batch=guidance_batch,
                vae_chunk=vae_chunk,
                callback=on_step,
                init_video=init_video,
                strength=strength,
                start_frame=start_frame,
                init_image=init_image,
                hold_frames=hold_frames,
                posterior_noise=posterior,
            )
        finally:
            bar.close()  # ends the bar's line, so an error (or "interrupted") is a line of its own
    t0 = time.perf_counter()
    path = video.save(output, fps=fps, overwrite=overwrite)
    video.timings["write"] = time.perf_counter() - t0
    o = video.options
    t = video.timings
    click.echo(
        f"{o.num_frames} frames {o.width}x{o.height}, {o.num_inference_steps} {o.scheduler} steps, guidance "
        f"{o.guidance_scale:g}, seed {o.seed} on {video.backend}\n"
        f"  text encode {t['text_encode']:.2f} s | denoise {t['denoise']:.2f} s ({t['step'] * 1000:.0f} ms/step) | "
        f"decode {t['decode']:.2f} s | write {t['write']:.2f} s"
    )
    if video.record and "init" in video.record:
        click.echo(f"  {describe_init(video.record['init'], o.num_inference_steps)}")
    click.echo(f"wrote {path}")
