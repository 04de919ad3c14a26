"""Video-to-video, image-to-video and continuation as pure numpy functions (no state, no torch).

- Video-to-video (SDEdit, Meng et al. 2022, as diffusers' VideoToVideoSDPipeline does it): encode the clip, noise
  its latents to the timestep where `strength` of the schedule remains, and run the sampler from there.
- Held frames (RePaint, Lugmayr et al. 2022, the way the A1111 extension's "inpainting frames" animate an image):
  the first N frames' latents are known; before every step they are replaced by the known latents noised to that
  step's timestep, and after the last step by the known latents themselves. The model fills in the rest.
- Continuation: windows of the model's length, each holding the last K frames of the video so far, stitched.

Latent videos are (1, c, f, h, w), the UNet's layout; the VAE sees frames as a batch (f, c, h, w).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from t2vrt.errors import UsageError


def check_strength(strength: float) -> float:
    if isinstance(strength, bool) or not isinstance(strength, (int, float)) or not 0.0 < float(strength) <= 1.0:
        raise UsageError(f"strength must be a number in (0, 1] (1 = ignore the clip's content), got {strength!r}")
    return float(strength)


def strength_start(steps: int, strength: float) -> int:
    """Index of the first schedule entry kept: steps - min(int(steps * strength), steps) (diffusers' get_timesteps).

    int() truncates, as diffusers does: 50 steps at strength 0.6 keep 30; 4 steps at 0.6 keep 2.
    """
    strength = check_strength(strength)
    kept = min(int(steps * strength), steps)
    if kept < 1:
        need = 1.0 / steps
        raise UsageError(
            f"strength {strength} of {steps} steps keeps no step; use a strength of at least {need:.3g} or more steps"
        )
    return steps - kept


def kept_timesteps(timesteps: Sequence[int] | np.ndarray, strength: float) -> np.ndarray:
    """The tail of a sampler's descending schedule that `strength` runs (every t2vrt sampler has order 1 per entry:
    DPM-Solver++(2M) starts from that begin index with a first-order step, as diffusers' set_begin_index does)."""
    ts = np.asarray(timesteps, dtype=np.int64)
    return ts[strength_start(len(ts), strength) :].copy()


def add_noise(x0: np.ndarray, noise: np.ndarray, t: int, alphas_cumprod: np.ndarray) -> np.ndarray:
    """x_t = sqrt(a_t) x_0 + sqrt(1 - a_t) noise (DDPM eq. 4), in x0's dtype."""
    if x0.shape != noise.shape:
        raise ValueError(f"x0 {x0.shape} and noise {noise.shape} must have the same shape")
    if not 0 <= int(t) < len(alphas_cumprod):
        raise ValueError(f"timestep {t} is outside the schedule 0..{len(alphas_cumprod) - 1}")
    a_t = float(alphas_cumprod[int(t)])
    return (np.sqrt(a_t) * x0 + np.sqrt(1.0 - a_t) * noise).astype(x0.dtype, copy=False)


def frames_to_images(frames: np.ndarray) -> np.ndarray:
    """uint8 (f, H, W, 3) -> float32 (f, 3, H, W) in [-1, 1]: x / 255 * 2 - 1, as diffusers' VideoProcessor."""
    x = np.asarray(frames)
    if x.dtype != np.uint8 or x.ndim != 4 or x.shape[-1] != 3:
        raise ValueError(f"expected uint8 frames (f, H, W, 3), got {x.dtype} {x.shape}")
    images = x.transpose(0, 3, 1, 2).astype(np.float32) / np.float32(255.0)
    return np.ascontiguousarray(np.float32(2.0) * images - np.float32(1.0))


def posterior_latents(
    mean: np.ndarray, logvar: np.ndarray, scaling_factor: float, noise: np.ndarray | None = None
) -> np.ndarray:
    """The VAE posterior's sample scaled for the sampler: s * (mean + exp(logvar / 2) * noise), or s * mean (its mode)
    when noise is None. mean, logvar, noise: (f, c, h, w); logvar already clamped by the encoder."""
    if mean.shape != logvar.shape:
        raise ValueError(f"mean {mean.shape} and logvar {logvar.shape} must have the same shape")
    z = mean
    if noise is not None:
        if noise.shape != mean.shape:
            raise ValueError(f"posterior noise must have shape {mean.shape}, got {noise.shape}")
        z = mean + np.exp(np.float32(0.5) * logvar) * noise
    return (np.float32(scaling_factor) * z).astype(np.float32, copy=False)


def to_video(z: np.ndarray) -> np.ndarray:
    """(f, c, h, w) frame latents -> (1, c, f, h, w)."""
    return np.ascontiguousarray(z.transpose(1, 0, 2, 3)[None])


def to_frames(x: np.ndarray) -> np.ndarray:
    """(1, c, f, h, w) -> (f, c, h, w)."""
    if x.ndim != 5 or x.shape[0] != 1:
        raise ValueError(f"expected one latent video (1, c, f, h, w), got {x.shape}")
    return np.ascontiguousarray(x[0].transpose(1, 0, 2, 3))


def check_hold(num_held: int, num_frames: int) -> int:
    if isinstance(num_held, bool) or not isinstance(num_held, int) or not 1 <= num_held < num_frames:
        raise UsageError(
            f"held frames must be an integer in 1..{num_frames - 1} (fewer than the {num_frames} "
            f"frames generated), got {num_held!r}"
        )
    return num_held


def hold(
    x: np.ndarray, known: np.ndarray, t: int | None, alphas_cumprod: np.ndarray, noise: np.ndarray | None = None
) -> np.ndarray:
    """x (1, c, f, h, w) with its first n frames replaced by `known` (1, c, n, h, w) noised to t with `noise`.

    t None (after the last step) puts the known latents in as they are. Returns a new array; x is unchanged.
    """
    n = known.shape[2]
    if x.ndim != 5 or known.shape[:2] != x.shape[:2] or known.shape[3:] != x.shape[3:] or not 0 < n <= x.shape[2]:
        raise ValueError(f"known latents {known.shape} do not fit the first frames of {x.shape}")
    out = x.copy()
    if t is None:
        out[:, :, :n] = known
    else:
        if noise is None:
            raise ValueError(f"holding frames at t={t} needs noise of shape {known.shape}")
        out[:, :, :n] = add_noise(known, noise, t, alphas_cumprod)
    return out


def holding_eps(
    eps: Callable[[np.ndarray, int], np.ndarray],
    known: np.ndarray,
    alphas_cumprod: np.ndarray,
    noise: Callable[[int], np.ndarray],
) -> Callable[[np.ndarray, int], np.ndarray]:
    """An eps model that sees the first n frames held at `known` (1, c, n, h, w) noised to each step's t.

    Every sampler step updates each frame from that frame's own x and eps (the UNet mixes frames; the update does
    not), so replacing the held frames in the UNet's input is the whole RePaint replacement: the other frames
    evolve exactly as if x had been edited before the step, and the held frames' own updates are overwritten at the
    next call. Finish with `hold(x, known, None, ...)` to put the known latents in after the last step.
    `noise(i)` gives the standard-normal noise of the i-th call (known's shape): explicit, or drawn by the caller.
    """
    calls = 0

    def eps_held(x: np.ndarray, t: int) -> np.ndarray:
        nonlocal calls
        held = hold(x, known, t, alphas_cumprod, noise(calls))
        calls += 1
        return eps(held, t)

    return eps_held


def continuation_length(clip_frames: int, window: int, overlap: int, windows: int) -> int:
    """Frames of the stitched video: the clip, then window - overlap new frames per window. Checks the numbers."""
    if isinstance(window, bool) or not isinstance(window, int) or window < 2:
        raise UsageError(f"a continuation window needs at least 2 frames, got {window!r}")
    if isinstance(overlap, bool) or not isinstance(overlap, int) or not 1 <= overlap < window:
        raise UsageError(
            f"overlap must be an integer in 1..{window - 1} (the window is {window} frames), got {overlap!r}"
        )
    if clip_frames < overlap:
        raise UsageError(f"the clip has {clip_frames} frames; an overlap of {overlap} needs at least that many")
    if isinstance(windows, bool) or not isinstance(windows, int) or windows < 1:
        raise UsageError(f"windows must be an integer >= 1, got {windows!r}")
    return clip_frames + windows * (window - overlap)


def stitch(video: np.ndarray, window: np.ndarray, overlap: int) -> np.ndarray:
    """Append a generated window (f, ...) whose first `overlap` frames re-state the video's last ones: the video's
    own frames are kept there (they are the originals; the window's are their re-encoded copies)."""
    if video.shape[1:] != window.shape[1:]:
        raise ValueError(f"window frames {window.shape[1:]} differ from the video's {video.shape[1:]}")
    if not 0 < overlap < window.shape[0] or overlap > video.shape[0]:
        raise ValueError(f"overlap {overlap} does not fit a {window.shape[0]}-frame window after {video.shape[0]}")
    return np.concatenate([video, window[overlap:]])
