"""The pipeline's video-to-video stage: an input clip or image -> frames at the generation size -> encoded latents.

Every random draw can be given explicitly (the posterior noise, or "mean" to take the posterior's mean), so a run
from another tool is reproducible; otherwise it comes from the run's numpy Generator. The VAE encoder runs per frame
in chunks (frames are independent images there), like the decoder. Torch-free.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from t2vrt.errors import T2VError, UsageError
from t2vrt.runtime import samplers, vid2vid_math
from t2vrt.runtime.clip import read_clip, resize_frame
from t2vrt.runtime.vid2vid_math import frames_to_images, posterior_latents, to_video

if TYPE_CHECKING:
    from t2vrt.manifest import Manifest
    from t2vrt.runtime.backend import Backend
    from t2vrt.runtime.options import GenerateOptions

ClipSource = str | Path | np.ndarray  # a path read_clip takes, or uint8 frames (f, H, W, 3) / an image (H, W, 3)
PosteriorNoise = np.ndarray | str | None  # (f, c, h, w) noise, "mean", or None = drawn from the run's rng
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
        raise UsageError(
            f"init frames must be uint8 (frames, height, width, 3) or one image (height, width, 3), "
            f"got {arr.dtype} {arr.shape}"
        )
    if arr.ndim == 3:
        if start_frame:
            raise UsageError(f"a single image has no frame {start_frame}: start frame must be 0")
        arr = np.repeat(arr[None], num_frames, axis=0)
    chosen = arr[start_frame : start_frame + num_frames]
    if len(chosen) < num_frames:
        raise UsageError(
            f"the init video has {max(len(arr) - start_frame, 0)} frames from frame {start_frame}; "
            f"{num_frames} are needed"
        )
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
            raise UsageError(
                f"posterior noise must have shape {mean.shape} (frames, channels, height/8, width/8), got {noise.shape}"
            )
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


DEFAULT_STRENGTH = {"video": 0.6, "image": 1.0, "latents": 1.0}  # diffusers' v2v default; held-frame runs from noise
ENCODER = "vae_encoder"


@dataclass(frozen=True)
class Init:
    """What a run starts from besides noise: an input clip (video-to-video), an image whose latents hold the first
    frames (image-to-video), or known latents to hold (continuation). All None: text-to-video."""

    video: ClipSource | None = None
    image: ClipSource | None = None
    hold_latents: np.ndarray | None = None  # (1, c, k, h, w): the first k frames' latents, held (continuation)
    strength: float | None = None  # None: DEFAULT_STRENGTH of the kind
    start_frame: int = 0
    hold_frames: int | None = None  # with `image`: how many first frames it holds (default 1)
    posterior_noise: PosteriorNoise = None
    hold_noise: Sequence[np.ndarray] | None = None  # per UNet call, the noise of the held frames (default: rng)
    fit: str = "crop"

    @property
    def kind(self) -> str | None:
        given = [
            k
            for k, v in (("video", self.video), ("image", self.image), ("latents", self.hold_latents))
            if v is not None
        ]
        if len(given) > 1:
            raise UsageError(f"give one of an init video, an init image or latents to hold, not {' and '.join(given)}")
        return given[0] if given else None

    def check(self) -> None:
        kind = self.kind
        if kind is None:
            extra = [
                n
                for n, v in (
                    ("strength", self.strength),
                    ("hold frames", self.hold_frames),
                    ("posterior noise", self.posterior_noise),
                    ("hold noise", self.hold_noise),
                )
                if v is not None
            ] + (["start frame"] if self.start_frame else [])
            if extra:
                raise UsageError(f"{', '.join(extra)}: only with an init video or an init image")
            return
        if self.strength is not None:
            vid2vid_math.check_strength(self.strength)
        if self.hold_frames is not None and kind != "image":
            raise UsageError("hold frames go with an init image (--init-image); continuation holds the overlap")
        if self.start_frame and kind != "video":
            raise UsageError("a start frame goes with an init video (--init-video)")


@dataclass(frozen=True)
class Start:
    """Where the sampler starts: its first latents, the schedule it runs, and the latents it holds (or None)."""

    x: np.ndarray  # (1, c, f, h, w)
    timesteps: np.ndarray
    known: np.ndarray | None  # (1, c, n, h, w) held at the first n frames
    record: dict[str, Any]  # the init's part of the video's metadata
    hold_noise: Callable[[int], np.ndarray] | None = None

    def eps(self, eps: Callable[[np.ndarray, int], np.ndarray], alphas_cumprod: np.ndarray):  # type: ignore[no-untyped-def]
        """The eps model the sampler should call: holding the known frames when there are any."""
        if self.known is None or self.hold_noise is None:
            return eps
        return vid2vid_math.holding_eps(eps, self.known, alphas_cumprod, self.hold_noise)

    def finish(self, x: np.ndarray, alphas_cumprod: np.ndarray) -> np.ndarray:
        """After the last step: the held frames become the known latents themselves."""
        return x if self.known is None else vid2vid_math.hold(x, self.known, None, alphas_cumprod)


def encoder_missing(manifest: Manifest) -> UsageError:
    src = manifest.source.location or "MODEL"
    return UsageError(
        f"bundle {manifest.bundle} has no VAE encoder (it was exported before video-to-video support): add it with "
        f"`t2vrt export {src} --out {manifest.bundle}` (the existing graphs are reused; only the encoder is exported)"
    )


def encode_with(
    backend: Backend,
    manifest: Manifest,
    frames: np.ndarray,
    chunk: int,
    posterior_noise: PosteriorNoise,
    rng: np.random.Generator,
) -> np.ndarray:
    """Frames through the bundle's VAE encoder engine (opened for this stage, released after)."""
    if ENCODER not in manifest.components:
        raise encoder_missing(manifest)
    e = manifest.model.vae.embed_dim
    runner = backend.open(ENCODER)
    try:

        def run(images: np.ndarray) -> dict[str, np.ndarray]:
            moments = runner.run({"images": images})["moments"]  # (n, 2 * embed_dim, h, w)
            return {"mean": moments[:, :e], "logvar": moments[:, e:]}

        return encode_frames(run, frames, manifest.model.vae.scaling_factor, chunk, posterior_noise, rng)
    finally:
        backend.release(ENCODER)


def prepare(
    init: Init,
    o: GenerateOptions,
    noise: np.ndarray,
    rng: np.random.Generator,
    manifest: Manifest,
    backend: Backend,
    alphas_cumprod: np.ndarray,
) -> Start | None:
    """The sampler's start for `init` (None for plain text-to-video). `noise` (1, c, f, h, w) is what is added to the
    encoded latents at the first kept timestep (the same draw text-to-video starts from)."""
    init.check()
    kind = init.kind
    if kind is None:
        return None
    if kind != "latents" and ENCODER not in manifest.components:  # before any clip is read
        raise encoder_missing(manifest)
    strength = DEFAULT_STRENGTH[kind] if init.strength is None else init.strength
    sampler = samplers.get(o.scheduler)
    timesteps = vid2vid_math.kept_timesteps(
        sampler.timesteps(manifest.schedule.num_train_timesteps, o.num_inference_steps), strength
    )
    size = (o.width, o.height)
    record: dict[str, Any] = {"kind": kind, "strength": strength}
    known = None
    if kind == "video":
        assert init.video is not None
        frames, clip_record, _ = load_frames(init.video, o.num_frames, size, init.start_frame, init.fit)
        z0 = encode_with(backend, manifest, frames, o.vae_chunk, init.posterior_noise, rng)
        record.update(start_frame=init.start_frame, source=_name(init.video))
        if clip_record and "prompt" in clip_record:
            record["source_prompt"] = clip_record["prompt"]
    elif kind == "image":
        assert init.image is not None
        n = vid2vid_math.check_hold(1 if init.hold_frames is None else init.hold_frames, o.num_frames)
        frames, _, _ = load_frames(init.image, 1, size, 0, init.fit)
        one = encode_with(backend, manifest, frames, 1, init.posterior_noise, rng)  # (1, c, 1, h, w)
        z0 = np.repeat(one, o.num_frames, axis=2)
        known = z0[:, :, :n]
        record.update(hold_frames=n, source=_name(init.image))
    else:
        known = _check_hold_latents(init.hold_latents, noise.shape)
        k = known.shape[2]
        z0 = np.concatenate([known, np.repeat(known[:, :, -1:], noise.shape[2] - k, axis=2)], axis=2)
        record.update(hold_frames=k)
    x = vid2vid_math.add_noise(z0.astype(np.float32), noise, int(timesteps[0]), alphas_cumprod)
    hold_noise = None
    if known is not None:
        hold_noise = _hold_noise(init.hold_noise, known.shape, len(timesteps), rng)
    return Start(x, timesteps, known, record, hold_noise)


def _name(source: ClipSource) -> str:
    return Path(source).name if isinstance(source, (str, Path)) else "array"


def _check_hold_latents(latents: np.ndarray | None, shape: tuple[int, ...]) -> np.ndarray:
    arr = np.asarray(latents, dtype=np.float32)
    ok = arr.ndim == 5 and arr.shape[:2] == shape[:2] and arr.shape[3:] == shape[3:] and 1 <= arr.shape[2] < shape[2]
    if not ok:
        raise UsageError(
            f"latents to hold must have shape (1, {shape[1]}, k, {shape[3]}, {shape[4]}) with k in "
            f"1..{shape[2] - 1}, got {arr.shape}"
        )
    if not np.isfinite(arr).all():
        raise UsageError("latents to hold contain NaN or inf")
    return arr


def _hold_noise(
    given: Sequence[np.ndarray] | None, shape: tuple[int, ...], steps: int, rng: np.random.Generator
) -> Callable[[int], np.ndarray]:
    if given is None:
        return lambda i: rng.standard_normal(shape).astype(np.float32)
    arrays = [check_noise(a, shape, f"hold noise [{i}]") for i, a in enumerate(given)]
    if len(arrays) != steps:
        raise UsageError(f"hold noise needs one array per step ({steps}), got {len(arrays)}")
    return lambda i: arrays[i]  # type: ignore[return-value]


def record(o: GenerateOptions, manifest: Manifest, init: dict[str, Any] | None, fps: int) -> dict[str, Any]:
    """The generation record written into the video (t2vrt.runtime.metadata): what reproduces it."""
    import t2vrt

    out: dict[str, Any] = {
        "t2vrt": t2vrt.__version__,
        "model": manifest.model_name,
        "prompt": o.prompt,
        "negative_prompt": o.negative_prompt,
        "frames": o.num_frames,
        "width": o.width,
        "height": o.height,
        "steps": o.num_inference_steps,
        "guidance": o.guidance_scale,
        "scheduler": o.scheduler,
        "eta": o.eta,
        "seed": o.seed,
        "fps": fps,
    }
    if init:
        out["init"] = init
    return out
