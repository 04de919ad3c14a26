"""Decoded frames -> uint8 -> a video file (.mp4, .webm, .gif) or a directory of PNGs, written atomically.

Torch-free: numpy, imageio (Pillow plugin) and imageio-ffmpeg's bundled ffmpeg, run as a subprocess so its exit
status is checked. Every output is written under a hidden temp name beside the target and renamed at the end
(t2vrt.safety.atomic): an interrupted or failed write never leaves a half-written file under the final name, and the
next run on the same target cleans what an interrupted one left. A frames directory carries t2vrt's ownership
marker: only a directory t2vrt wrote is ever replaced, and files a user added to it are kept. A full disk is
"disk full at PATH".
"""

from __future__ import annotations

import errno
import os
import subprocess
from collections.abc import Mapping
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np

from t2vrt.errors import T2VError, UsageError
from t2vrt.runtime.metadata import to_comment
from t2vrt.safety import owned
from t2vrt.safety.atomic import StagedDir, check_target, owner_of, staged_file
from t2vrt.safety.diskfull import text_says_disk_full

# extension -> (codec, extra ffmpeg output options); all yuv420p, the pixel format every player decodes.
FFMPEG_FORMATS = {
    ".mp4": ("libx264", ["-crf", "17", "-preset", "medium", "-movflags", "+faststart"]),
    ".webm": ("libvpx-vp9", ["-crf", "24", "-b:v", "0", "-row-mt", "1", "-deadline", "good", "-cpu-used", "2"]),
}
EXTENSIONS = (*FFMPEG_FORMATS, ".gif")
ALLOWED = ", ".join(EXTENSIONS) + ", or a directory of PNG frames (a path without extension, or ending in '/')"
FRAME_GLOB = "frame_*.png"


def to_uint8(images: np.ndarray) -> np.ndarray:
    """Decoded frames [n, 3, h, w] in [-1, 1] -> uint8 [n, h, w, 3], as the original's tensor2vid.

    x * 0.5 + 0.5 (= (x + 1) / 2 exactly in binary floating point), clamp to [0, 1], * 255, then truncation to
    uint8 (numpy's astype), in float32: modelscope's tensor2vid and diffusers' export_to_video both truncate, they
    do not round. NaN (never expected from a healthy decoder) becomes 0.
    """
    x = np.asarray(images)
    if x.ndim != 4 or x.shape[1] != 3:
        raise ValueError(f"expected decoded frames [n, 3, h, w], got shape {x.shape}")
    x = np.nan_to_num(x.astype(np.float32, copy=False), nan=-1.0)
    x = np.clip(x * np.float32(0.5) + np.float32(0.5), 0.0, 1.0) * np.float32(255.0)
    return np.ascontiguousarray(x.astype(np.uint8).transpose(0, 2, 3, 1))  # (n, h, w, 3)


def output_kind(path: str | os.PathLike[str]) -> str:
    """ ".mp4" | ".webm" | ".gif" | "dir" from the path's form; UsageError for anything else."""
    raw = os.fspath(path)
    if raw.endswith(("/", os.sep)):
        return "dir"
    suffix = Path(raw).suffix.lower()
    if not suffix:
        return "dir"
    if suffix not in EXTENSIONS:
        raise UsageError(f"unknown video format {suffix!r} in {raw}; allowed: {ALLOWED}")
    return suffix


def _check_frames(frames: np.ndarray, kind: str) -> np.ndarray:
    frames = np.asarray(frames)
    if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] != 3 or frames.shape[0] < 1:
        raise UsageError(
            f"frames must be uint8 [frames, height, width, 3] with at least one frame, got "
            f"{frames.dtype} {frames.shape} (use to_uint8 on decoded frames)"
        )
    h, w = frames.shape[1:3]
    if kind in FFMPEG_FORMATS and (h % 2 or w % 2):
        raise UsageError(f"{kind} (yuv420p) needs an even width and height, got {w}x{h}; use .gif or a directory")
    return np.ascontiguousarray(frames)


def _check_parent(parent: Path) -> None:
    """The output's directory exists and is writable, or can be created (its nearest existing ancestor is)."""
    probe = parent
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    if not probe.is_dir():
        raise UsageError(f"cannot create output directory {parent}: {probe} is not a directory")
    if not os.access(probe, os.W_OK | os.X_OK):
        what = "output directory" if probe == parent else f"cannot create output directory {parent}:"
        raise UsageError(f"{what} {probe} is not writable")


def _legacy_frames_dir(path: Path) -> owned.Owned | None:
    """A directory of frame_*.png only, as t2vrt wrote them before ownership markers: t2vrt's."""
    entries = list(path.iterdir())
    if entries and all(p.is_file() and not p.is_symlink() and p.match(FRAME_GLOB) for p in entries):
        return owned.Owned("frames", owned.COMPLETE, frozenset(p.name for p in entries))
    return None


def _write_ffmpeg(frames: np.ndarray, tmp: Path, fps: float, kind: str, comment: str | None = None) -> None:
    import imageio_ffmpeg  # type: ignore[import-untyped]

    try:
        exe = imageio_ffmpeg.get_ffmpeg_exe()
    except RuntimeError as e:
        raise T2VError(f"no ffmpeg found to write {kind}: {e}") from e
    codec, opts = FFMPEG_FORMATS[kind]
    _, h, w, _ = frames.shape
    rate = str(Fraction(fps).limit_denominator(1001))
    cmd = [
        exe,
        "-nostdin",
        "-y",
        "-loglevel",
        "error",
        "-f",
        "rawvideo",
        "-pix_fmt",
        "rgb24",
        "-s",
        f"{w}x{h}",
        "-r",
        rate,
        "-i",
        "-",
        "-an",
        "-c:v",
        codec,
        "-pix_fmt",
        "yuv420p",
        *opts,
        *(["-metadata", f"comment={comment}"] if comment else []),
        str(tmp),
    ]
    proc = subprocess.run(cmd, input=frames.tobytes(), capture_output=True, check=False)
    if proc.returncode != 0 or not tmp.is_file() or tmp.stat().st_size == 0:
        text = proc.stderr.decode(errors="replace")
        if text_says_disk_full(text):
            raise OSError(errno.ENOSPC, "No space left on device", str(tmp))
        err = text.strip().splitlines()
        raise T2VError(f"ffmpeg failed writing {kind} (exit {proc.returncode}): {err[-1] if err else 'no output'}")


def _write_gif(frames: np.ndarray, tmp: Path, fps: float, comment: str | None = None) -> None:
    import imageio.v3 as iio

    # Pillow quantizes each frame to its own 256-colour palette, and merges identical consecutive frames into one
    # longer frame (same playback, fewer frames). GIF stores delays in 1/100 s.
    extra: dict[str, Any] = {"comment": comment.encode()} if comment else {}
    data = iio.imwrite(
        "<bytes>", list(frames), plugin="pillow", extension=".gif", duration=1000.0 / fps, loop=0, **extra
    )
    _write_bytes(tmp, data)


def _write_pngs(frames: np.ndarray, tmp: Path) -> None:
    import imageio.v3 as iio

    digits = max(4, len(str(len(frames) - 1)))
    for i, frame in enumerate(frames):
        _write_bytes(
            tmp / f"frame_{i:0{digits}d}.png", iio.imwrite("<bytes>", frame, plugin="pillow", extension=".png")
        )


def _write_bytes(path: Path, data: bytes) -> None:
    """Encoded in memory, written here: a failing disk fails in our own write, never later in an encoder's
    finaliser (imageio's plugin retries its flush at exit and prints a traceback)."""
    with open(path, "xb") as f:
        f.write(data)


def check_output_path(path: str | os.PathLike[str], overwrite: bool = False) -> Path:
    """Everything about the output path that can fail, checked up front (before minutes of sampling).

    Returns the absolute target path. Creates nothing. A directory is replaced only when t2vrt wrote it (its
    marker, or frame_*.png files alone) and no file a user added there has a frame's name.
    """
    kind = output_kind(path)
    raw = os.fspath(path)
    target = check_target(raw.rstrip("/" + os.sep) or raw, "-o")
    if target.exists() or target.is_symlink():
        if not overwrite:
            raise UsageError(f"{target} already exists; pass --overwrite (overwrite=True) to replace it")
        if kind == "dir":
            owner = owner_of(target, "frames", _legacy_frames_dir, "-o")
            clash = [r for r in owned.foreign_entries(target, owner) if Path(r).match(FRAME_GLOB)]
            if clash:
                raise UsageError(
                    f"-o {target} holds frames t2vrt did not write ({', '.join(clash[:3])}); not replacing them"
                )
        if kind != "dir" and target.is_dir():
            raise UsageError(f"{target} is a directory; cannot replace it with a {kind} file")
    _check_parent(target.parent)
    return target


def save_video(
    frames: np.ndarray,
    path: str | os.PathLike[str],
    fps: float = 8,
    overwrite: bool = False,
    metadata: Mapping[str, Any] | None = None,
) -> Path:
    """Write uint8 frames [f, h, w, 3] to `path`; the format comes from the extension (see ALLOWED).

    Returns the final path. Existing output is an error unless overwrite=True (a directory is only replaced when
    it holds nothing but frame_*.png files). The original release writes mp4 at 8 fps. `metadata` (the prompt
    and parameters) goes into the file's comment tag for .mp4, .webm and .gif (see t2vrt.runtime.metadata).
    """
    kind = output_kind(path)
    frames = _check_frames(frames, kind)
    if not (isinstance(fps, (int, float)) and not isinstance(fps, bool) and 0 < fps <= 1000):
        raise UsageError(f"fps must be a number in (0, 1000], got {fps!r}")
    target = check_output_path(path, overwrite)
    comment = to_comment(metadata) if metadata else None
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        if text_says_disk_full(str(e)) or e.errno == errno.ENOSPC:
            raise T2VError(f"disk full at {target.parent}") from None
        raise UsageError(f"cannot create output directory {target.parent}: {e.strerror or e}") from e

    try:
        if kind == "dir":
            staged = StagedDir(target, "frames", _legacy_frames_dir, overwrite, "-o")
            with staged as tmp:
                _write_pngs(frames, tmp)
                staged.commit()
            return target
        suffix = kind  # keep the extension: ffmpeg and Pillow pick the container from it
        with staged_file(target, suffix, "-o") as tmp:
            if kind in FFMPEG_FORMATS:
                _write_ffmpeg(frames, tmp, float(fps), kind, comment)
            else:
                _write_gif(frames, tmp, float(fps), comment)
        return target
    except T2VError:
        raise
    except OSError as e:
        raise T2VError(f"cannot write {target}: {e.strerror or e}") from e


def read_video(path: str | os.PathLike[str]) -> np.ndarray:
    """Frames back as uint8 [f, h, w, 3] from any format save_video writes."""
    p = Path(path)
    if not p.exists():
        raise UsageError(f"no such video: {p}")
    if p.is_dir():
        files = sorted(p.glob(FRAME_GLOB))
        if not files:
            raise UsageError(f"{p} holds no {FRAME_GLOB} frames")
        import imageio.v3 as iio

        return np.stack([iio.imread(f, plugin="pillow", mode="RGB") for f in files])
    kind = p.suffix.lower()
    if kind == ".gif":
        import imageio.v3 as iio

        frames = iio.imread(p, plugin="pillow", index=None, mode="RGB")
        return np.asarray(frames, dtype=np.uint8).reshape(-1, *frames.shape[-3:])
    if kind in FFMPEG_FORMATS:
        import imageio_ffmpeg

        gen = imageio_ffmpeg.read_frames(str(p), pix_fmt="rgb24")
        meta = next(gen)
        w, h = meta["size"]
        data = [np.frombuffer(b, dtype=np.uint8).reshape(h, w, 3) for b in gen]
        if not data:
            raise T2VError(f"{p} has no frames")
        return np.stack(data)
    raise UsageError(f"cannot read {p}: unknown format {kind!r}; allowed: {ALLOWED}")
