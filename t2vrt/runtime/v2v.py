"""The pipeline's video-to-video stage: an input clip or image -> frames at the generation size -> encoded latents.

Every random draw can be given explicitly (the posterior noise, or "mean" to take the posterior's mean), so a run
from another tool is reproducible; otherwise it comes from the run's numpy Generator. The VAE encoder runs per frame
in chunks (frames are independent images there), like the decoder. Torch-free.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, Union

import numpy as np

from t2vrt.errors import T2VError, UsageError
from t2vrt.runtime.clip import read_clip, resize_frame
from t2vrt.runtime.vid2vid import frames_to_images, posterior_latents, to_video

ClipSource = Union[str, Path, np.ndarray]  # a path read_clip takes, or uint8 frames (f, H, W, 3) / an image (H, W, 3)
PosteriorNoise = Union[np.ndarray, str, None]  # (f, c, h, w) noise, "mean", or None = drawn from the run's rng
EncodeRun = Callable[[np.ndarray], dict[str, np.ndarray]]  # images (n, 3, H, W) -> {"mean", "logvar"}


def load_frames(
    source: ClipSource, num_frames: int, size: tuple[int, int], start_frame: int = 0, fit: str = "crop"
) -> tuple[np.ndarray, dict[str, Any] | None, float | None]:
    """(frames (num_frames, H, W, 3) uint8 at size = (W, H), the clip's t2vrt record or None, its fps or None)."""
    if isinstance(source, (str, Path)):
        clip = read_clip(source, start_frame=start_frame, num_frames=num_frames, size=size, fit=fit)
        return clip.frames, clip.metadata, clip.fps
    arr = np.asarray(source)
    if arr.dtype != np.uint8 or arr.ndim not in (3, 4) or arr.shape[-1] != 3:
        raise UsageError(f"init frames must be uint8 (frames, height, width, 3) or one image (height, width, 3), "
                         f"got {arr.dtype} {arr.shape}")  # fmt: skip
    if arr.ndim == 3:
        if start_frame:
            raise UsageError(f"a single image has no frame {start_frame}: start frame must be 0")
        arr = np.repeat(arr[None], num_frames, axis=0)
    chosen = arr[start_frame : start_frame + num_frames]
    if len(chosen) < num_frames:
        raise UsageError(f"the init video has {max(len(arr) - start_frame, 0)} frames from frame {start_frame}; "
                         f"{num_frames} are needed")  # fmt: skip
    return np.stack([resize_frame(f, size, fit) for f in chosen]), None, None


def encode_frames(
    run: EncodeRun,
    frames: np.ndarray,
    scaling_factor: float,
    chunk: int = 0,
    posterior_noise: PosteriorNoise = None,
    rng: np.random.Generator | None = None,
) -> np.ndarray:
    """uint8 frames (f, H, W, 3) -> latents (1, c, f, H/8, W/8) for the sampler (scaled, a posterior sample or mean).

    chunk frames per encoder call (0 = all at once); the result does not depend on it. The posterior noise is
    (f, c, h, w) standard normal: given, drawn from `rng` (after the encoder ran, in float64 cast to float32), or
    "mean" for none.
    """
    images = frames_to_images(frames)  # (f, 3, H, W)
    n = chunk or len(images)
    means, logvars = [], []
    for i in range(0, len(images), n):
        out = run(images[i : i + n])
        means.append(out["mean"])
        logvars.append(out["logvar"])
    mean, logvar = np.concatenate(means), np.concatenate(logvars)
    if not (np.isfinite(mean).all() and np.isfinite(logvar).all()):
        raise T2VError("VAE encoder produced NaN or inf: the bundle or engine is numerically broken at this size")
    noise: np.ndarray | None
    if isinstance(posterior_noise, str):
        if posterior_noise != "mean":
            raise UsageError(f"posterior noise must be an array, 'mean' or None, got {posterior_noise!r}")
        noise = None
    elif posterior_noise is None:
        if rng is None:
            raise ValueError("drawing the posterior noise needs a numpy Generator (rng)")
        noise = rng.standard_normal(mean.shape).astype(np.float32)
    else:
        noise = np.asarray(posterior_noise, dtype=np.float32)
        if noise.shape != mean.shape:
            raise UsageError(f"posterior noise must have shape {mean.shape} (frames, channels, height/8, width/8), "
                             f"got {noise.shape}")  # fmt: skip
    return to_video(posterior_latents(mean, logvar, scaling_factor, noise))


def check_noise(noise: np.ndarray | None, shape: tuple[int, ...], what: str) -> np.ndarray | None:
    """An explicit noise array of exactly `shape` (float32), or None."""
    if noise is None:
        return None
    arr = np.asarray(noise)
    if arr.shape != tuple(shape) or not np.issubdtype(arr.dtype, np.floating):
        raise UsageError(f"{what} must be a float array of shape {tuple(shape)}, got {arr.dtype} {arr.shape}")
    if not np.isfinite(arr).all():
        raise UsageError(f"{what} contains NaN or inf")
    return arr.astype(np.float32, copy=False)
