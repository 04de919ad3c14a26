"""Input clips for video-to-video: a video file, a GIF, a folder of images or one image -> uint8 frames at a size.

Torch-free: videos decode through imageio-ffmpeg's bundled ffmpeg (the stack video.py writes with), GIFs and
images through Pillow (imageio's own dependency). Frames are chosen (start frame, count) while decoding and
resized one at a time with Pillow's Lanczos filter (antialiased when shrinking), so memory holds the chosen
frames at the target size plus one source frame. Every size is checked from the file's header before any pixel
is decoded; every failure is one UsageError line naming the file.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from t2vrt.errors import UsageError
from t2vrt.runtime.metadata import read_metadata

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
VIDEO_EXTENSIONS = (".mp4", ".webm", ".mov", ".mkv", ".avi", ".m4v")
GIF = ".gif"
FITS = ("crop", "stretch")  # crop: keep the aspect ratio, cut the centre; stretch: scale each axis on its own
MAX_SOURCE_PIXELS = 7680 * 4320  # one decoded frame (8K); larger is refused from the header
MAX_FRAMES = 1024
MAX_TOTAL_PIXELS = 1 << 30  # all chosen frames at the output size (3 GiB of uint8 RGB)
ALLOWED = (
    f"a video ({', '.join(VIDEO_EXTENSIONS)}), a {GIF}, an image ({', '.join(IMAGE_EXTENSIONS)}) or a folder of images"
)


@dataclass(frozen=True)
class Clip:
    frames: np.ndarray  # (f, H, W, 3) uint8
    fps: float | None  # the source's frame rate; None for images and folders
    source_size: tuple[int, int]  # (width, height) as stored, before resizing
    metadata: dict[str, Any] | None  # t2vrt's generation record when the file carries one (see metadata.py)

    @property
    def num_frames(self) -> int:
        return int(self.frames.shape[0])


def _natural_key(path: Path) -> list[object]:
    """frame_2.png before frame_10.png."""
    return [int(s) if s.isdigit() else s.lower() for s in re.split(r"(\d+)", path.name)]


def _check_source_size(path: Path, w: int, h: int) -> None:
    if w < 1 or h < 1:
        raise UsageError(f"{path} has an empty frame size {w}x{h}")
    if w * h > MAX_SOURCE_PIXELS:
        raise UsageError(
            f"{path} has {w}x{h} frames ({w * h / 1e6:.0f} Mpx); at most {MAX_SOURCE_PIXELS / 1e6:.0f} Mpx "
            "per frame are read: scale it down first"
        )


def _open_image(path: Path) -> Any:
    """Pillow image, header only (nothing decoded yet), its size checked."""
    from PIL import Image, UnidentifiedImageError

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            im = Image.open(path)
    except Image.DecompressionBombError:
        raise UsageError(f"{path} is too large to read (over {MAX_SOURCE_PIXELS / 1e6:.0f} Mpx per frame)") from None
    except (UnidentifiedImageError, OSError) as e:
        raise UsageError(f"cannot read {path}: not an image Pillow can open ({e})") from None
    _check_source_size(path, *im.size)
    return im


def _rgb(im: Any, path: Path) -> np.ndarray:
    try:
        return np.asarray(im.convert("RGB"), dtype=np.uint8)
    except (OSError, ValueError) as e:
        raise UsageError(f"cannot decode {path}: {e}") from None


def _gif_frames(path: Path) -> tuple[Iterator[np.ndarray], tuple[int, int], float | None]:
    im = _open_image(path)
    duration = im.info.get("duration")
    fps = 1000.0 / duration if isinstance(duration, (int, float)) and duration > 0 else None

    def frames() -> Iterator[np.ndarray]:
        with im:
            for i in range(getattr(im, "n_frames", 1)):
                try:
                    im.seek(i)
                except EOFError:
                    return
                yield _rgb(im, path)

    return frames(), im.size, fps


def _video_frames(path: Path, stop: int) -> tuple[Iterator[np.ndarray], tuple[int, int], float | None]:
    import imageio_ffmpeg  # type: ignore[import-untyped]

    try:
        imageio_ffmpeg.get_ffmpeg_exe()
    except RuntimeError as e:
        raise UsageError(f"no ffmpeg found to read {path}: {e}") from None
    # ffmpeg stops decoding after the last frame we take; the generator's first item is the header (no pixels yet).
    gen = imageio_ffmpeg.read_frames(str(path), pix_fmt="rgb24", output_params=["-frames:v", str(stop)])
    try:
        meta = next(gen)
    except (OSError, RuntimeError, StopIteration) as e:
        gen.close()
        lines = [ln for ln in str(e).splitlines() if ln.strip() and not ln.startswith("===")]
        raise UsageError(f"cannot read {path}: {lines[-1] if lines else 'ffmpeg found no video stream'}") from None
    w, h = (int(v) for v in meta["size"])
    try:
        _check_source_size(path, w, h)
    except UsageError:
        gen.close()
        raise
    fps = float(meta["fps"]) if meta.get("fps") else None

    def frames() -> Iterator[np.ndarray]:
        try:
            for raw in gen:
                yield np.frombuffer(raw, dtype=np.uint8).reshape(h, w, 3)
        except RuntimeError as e:
            lines = [ln for ln in str(e).splitlines() if ln.strip() and not ln.startswith("===")]
            raise UsageError(f"cannot decode {path}: {lines[-1] if lines else e}") from None
        finally:
            gen.close()

    return frames(), (w, h), fps


def _folder_images(path: Path) -> list[Path]:
    files = sorted(
        (
            p
            for p in path.iterdir()
            if p.suffix.lower() in IMAGE_EXTENSIONS and not p.name.startswith(".") and p.is_file()
        ),
        key=_natural_key,
    )
    if not files:
        raise UsageError(f"{path} holds no images ({', '.join(IMAGE_EXTENSIONS)})")
    return files


def crop_box(src: tuple[int, int], dst: tuple[int, int], fit: str) -> tuple[int, int, int, int]:
    """The source rectangle (left, top, right, bottom) that maps onto the output: all of it, or its centre cut to
    the output's aspect ratio (whole pixels, so nothing outside the cut bleeds in through the filter)."""
    sw, sh = src
    dw, dh = dst
    if fit == "stretch" or sw * dh == sh * dw:
        return (0, 0, sw, sh)
    if sw * dh > sh * dw:  # source wider than the output: cut the sides
        cw = max(1, round(sh * dw / dh))
        left = (sw - cw) // 2
        return (left, 0, left + cw, sh)
    ch = max(1, round(sw * dh / dw))
    top = (sh - ch) // 2
    return (0, top, sw, top + ch)


def resize_frame(frame: np.ndarray, size: tuple[int, int], fit: str = "crop") -> np.ndarray:
    """(h, w, 3) uint8 -> (size[1], size[0], 3) uint8 with Lanczos; unchanged when the size already matches."""
    from PIL import Image

    h, w = frame.shape[:2]
    if (w, h) == tuple(size):
        return frame
    left, top, right, bottom = crop_box((w, h), size, fit)
    im = Image.fromarray(np.ascontiguousarray(frame[top:bottom, left:right]))
    return np.asarray(im.resize((int(size[0]), int(size[1])), Image.Resampling.LANCZOS), dtype=np.uint8)


def _check_request(start_frame: int, num_frames: int | None, size: tuple[int, int] | None, fit: str) -> None:
    if isinstance(start_frame, bool) or not isinstance(start_frame, int) or start_frame < 0:
        raise UsageError(f"start frame must be an integer >= 0, got {start_frame!r}")
    if num_frames is not None and (
        isinstance(num_frames, bool) or not isinstance(num_frames, int) or not 1 <= num_frames <= MAX_FRAMES
    ):
        raise UsageError(f"frames must be an integer in 1..{MAX_FRAMES}, got {num_frames!r}")
    if fit not in FITS:
        raise UsageError(f"fit must be one of {', '.join(FITS)}, got {fit!r}")
    if size is not None:
        w, h = size
        if not (isinstance(w, int) and isinstance(h, int) and w > 0 and h > 0):
            raise UsageError(f"size must be two positive integers (width, height), got {size!r}")
        if num_frames is not None and num_frames * w * h > MAX_TOTAL_PIXELS:
            raise UsageError(
                f"{num_frames} frames of {w}x{h} is more than t2vrt reads at once "
                f"({MAX_TOTAL_PIXELS / 1e6:.0f} Mpx in all)"
            )


def read_clip(
    path: str | Path,
    start_frame: int = 0,
    num_frames: int | None = None,
    size: tuple[int, int] | None = None,
    fit: str = "crop",
) -> Clip:
    """Frames [start_frame, start_frame + num_frames) of `path`, resized to size = (width, height) when given.

    num_frames None takes every frame from start_frame on (at most MAX_FRAMES). A single image is a still clip:
    it gives num_frames copies of itself (one when num_frames is None). A folder's images are taken in natural
    name order (frame_2 before frame_10) and must share one size unless `size` is given.
    """
    _check_request(start_frame, num_frames, size, fit)
    p = Path(path)
    if not p.exists():
        raise UsageError(f"no such clip: {p}")
    suffix = p.suffix.lower()
    fps: float | None = None
    stop = start_frame + (num_frames if num_frames is not None else MAX_FRAMES + 1)
    if p.is_dir():
        files = _folder_images(p)
        source: Iterator[np.ndarray] = (_rgb(_open_image(f), f) for f in files[start_frame:stop])
        with _open_image(files[0]) as first:
            src_size = first.size
        skip, available = 0, len(files)
    elif suffix in IMAGE_EXTENSIONS:
        if start_frame:
            raise UsageError(f"{p} is a single image: start frame must be 0, got {start_frame}")
        with _open_image(p) as im:
            src_size, still = im.size, _rgb(im, p)
        source, skip, available = iter([still] * (num_frames or 1)), 0, num_frames or 1
    elif suffix == GIF:
        source, src_size, fps = _gif_frames(p)
        skip, available = start_frame, -1
    elif suffix in VIDEO_EXTENSIONS:
        source, src_size, fps = _video_frames(p, stop)
        skip, available = start_frame, -1
    elif p.is_file():
        raise UsageError(f"cannot read {p}: unknown clip format {suffix or '(none)'!r}; give {ALLOWED}")
    else:
        raise UsageError(f"{p} is not a file or a folder")

    out_size = tuple(size) if size is not None else src_size
    frames: list[np.ndarray] = []
    seen = 0
    for frame in source:
        seen += 1
        if seen <= skip:
            continue
        if size is None and frame.shape[1::-1] != tuple(src_size):
            raise UsageError(
                f"{p}: frame {start_frame + len(frames)} is {frame.shape[1]}x{frame.shape[0]}, the first "
                f"is {src_size[0]}x{src_size[1]}; give a size to resize them all"
            )
        frames.append(resize_frame(frame, out_size, fit))  # type: ignore[arg-type]
        if num_frames is not None and len(frames) == num_frames:
            break
        if len(frames) > MAX_FRAMES:
            raise UsageError(f"{p} has more than {MAX_FRAMES} frames from frame {start_frame}; choose fewer (--frames)")
        if len(frames) * out_size[0] * out_size[1] > MAX_TOTAL_PIXELS:
            raise UsageError(
                f"{p}: {len(frames)} frames of {out_size[0]}x{out_size[1]} is more than t2vrt reads at "
                f"once ({MAX_TOTAL_PIXELS / 1e6:.0f} Mpx in all); choose fewer frames or a smaller size"
            )
    if hasattr(source, "close"):
        source.close()  # stops ffmpeg when we took fewer frames than it would give
    if not frames:
        total = available if available >= 0 else seen
        raise UsageError(f"{p} has no frames from frame {start_frame} (it has {total})")
    if num_frames is not None and len(frames) < num_frames:
        raise UsageError(
            f"{p} has only {len(frames)} frames from frame {start_frame}; {num_frames} are needed "
            "(choose fewer frames or an earlier start frame)"
        )
    metadata = read_metadata(p) if suffix in VIDEO_EXTENSIONS + (GIF,) else None
    return Clip(np.stack(frames), fps, (int(src_size[0]), int(src_size[1])), metadata)
