"""Input clips (videos, GIFs, folders, images -> chosen frames at a size) and the generation record t2vrt writes
into its own videos: selection, resizing, metadata round trips, and every bad input as one line."""

from __future__ import annotations

import json
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest

from t2vrt.errors import UsageError
from t2vrt.runtime import clip as clipmod
from t2vrt.runtime import metadata
from t2vrt.runtime.clip import crop_box, read_clip, resize_frame
from t2vrt.runtime.video import save_video

H, W = 48, 64
RECORD = {"prompt": 'a=b; #c \\ d "quoted"\nnew line, caf\u00e9 \U0001f47e', "seed": 7, "steps": 30, "guidance": 9.0}


def _coloured_frames(n: int, h: int = H, w: int = W) -> np.ndarray:
    """Frame i is one flat colour whose red channel is 20 * i: its index survives a lossy codec."""
    frames = np.zeros((n, h, w, 3), np.uint8)
    for i in range(n):
        frames[i] = (20 * i, 128, 255 - 20 * i)
    return frames


def _index_of(frame: np.ndarray) -> int:
    return int(np.rint(frame[..., 0].mean() / 20))


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def _png_header_only(path: Path, w: int, h: int) -> None:
    """A PNG whose header claims w x h (no pixel data): what a size check must refuse before decoding."""
    ihdr = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IEND", b""))


@pytest.mark.parametrize("ext", [".mp4", ".webm", ".gif"])
def test_video_round_trip_with_metadata(tmp_path: Path, ext: str) -> None:
    path = save_video(_coloured_frames(6), tmp_path / f"v{ext}", fps=8, metadata=RECORD)
    c = read_clip(path)
    assert c.frames.shape == (6, H, W, 3) and c.frames.dtype == np.uint8
    assert [_index_of(f) for f in c.frames] == list(range(6))
    assert c.fps == pytest.approx(8.0, rel=0.05)  # GIF stores delays in 1/100 s: 125 ms becomes 120
    assert c.source_size == (W, H)
    assert c.metadata == RECORD
    assert metadata.read_metadata(path) == RECORD


def test_no_record_without_metadata(tmp_path: Path) -> None:
    path = save_video(_coloured_frames(2), tmp_path / "plain.mp4")
    assert read_clip(path).metadata is None
    assert metadata.read_metadata(tmp_path / "missing.mp4") is None


def test_ffmetadata_unescaping_and_foreign_comments() -> None:
    text = (
        r";FFMETADATA1"
        "\n"
        r"major_brand=isom"
        "\n"
        r'comment=t2vrt:{"p":"a\=b\;c\#d\\\\e"}'
        "\n[STREAM]\ncomment=other\n"
    )
    tags = metadata._unescape_ffmetadata(text)
    assert tags["comment"] == r't2vrt:{"p":"a=b;c#d\\e"}' and tags["major_brand"] == "isom"
    assert metadata.from_comment(tags["comment"]) == {"p": "a=b;c#d\\e"}
    assert metadata.from_comment("made with something else") is None
    assert metadata.from_comment("t2vrt:{broken") is None
    assert metadata.from_comment('t2vrt:["not", "a", "dict"]') is None
    with pytest.raises(UsageError, match="at most"):
        metadata.to_comment({"prompt": "x" * 20000})


def test_start_frame_and_count(tmp_path: Path) -> None:
    path = save_video(_coloured_frames(10), tmp_path / "v.mp4")
    c = read_clip(path, start_frame=3, num_frames=4)
    assert [_index_of(f) for f in c.frames] == [3, 4, 5, 6]
    assert [_index_of(f) for f in read_clip(path, start_frame=8).frames] == [8, 9]
    with pytest.raises(UsageError, match="has only 2 frames from frame 8; 4 are needed"):
        read_clip(path, start_frame=8, num_frames=4)
    with pytest.raises(UsageError, match="no frames from frame 12"):
        read_clip(path, start_frame=12)


def test_folder_in_natural_order_and_exact_pixels(tmp_path: Path) -> None:
    import imageio.v3 as iio

    d = tmp_path / "frames"
    d.mkdir()
    frames = _coloured_frames(11)
    for i in range(11):
        iio.imwrite(d / f"f_{i}.png", frames[i])  # f_10.png sorts before f_2.png as text
    (d / "notes.txt").write_text("ignored")
    (d / ".hidden.png").write_bytes(b"not an image")
    c = read_clip(d, start_frame=1, num_frames=10)
    assert np.array_equal(c.frames, frames[1:])  # lossless and in number order
    assert c.fps is None and c.metadata is None
    with pytest.raises(UsageError, match="holds no images"):
        (tmp_path / "empty").mkdir()
        read_clip(tmp_path / "empty")
    iio.imwrite(d / "f_11.png", np.zeros((H + 2, W, 3), np.uint8))
    with pytest.raises(UsageError, match="frame 11 is 64x50, the first is 64x48; give a size"):
        read_clip(d)
    assert read_clip(d, size=(32, 24)).frames.shape == (12, 24, 32, 3)  # resized, they all fit


def test_single_image_is_a_still_clip(tmp_path: Path) -> None:
    import imageio.v3 as iio

    img = _coloured_frames(4)[3]
    iio.imwrite(tmp_path / "still.jpg", img)
    c = read_clip(tmp_path / "still.jpg", num_frames=5)
    assert c.frames.shape == (5, H, W, 3) and all(np.array_equal(f, c.frames[0]) for f in c.frames)
    assert abs(int(c.frames[0, 10, 10, 0]) - 60) <= 3  # JPEG is lossy, not wrong
    assert read_clip(tmp_path / "still.jpg").num_frames == 1
    with pytest.raises(UsageError, match="single image: start frame must be 0"):
        read_clip(tmp_path / "still.jpg", start_frame=1)


def test_resize_filters_instead_of_sampling() -> None:
    """Halving a one-pixel checkerboard gives mid grey (area-like), not the black or white nearest-neighbour gives."""
    board = ((np.indices((64, 64)).sum(0) % 2) * 255).astype(np.uint8)
    frame = np.repeat(board[..., None], 3, -1)
    small = resize_frame(frame, (32, 32))
    assert small.shape == (32, 32, 3)
    assert abs(float(small[4:-4, 4:-4].mean()) - 127.5) < 3 and small[4:-4, 4:-4].std() < 3
    flat = np.full((20, 30, 3), 77, np.uint8)
    assert np.array_equal(resize_frame(flat, (64, 40)), np.full((40, 64, 3), 77, np.uint8))  # no ringing on flat
    assert resize_frame(frame, (64, 64)) is frame  # same size: untouched


def test_crop_keeps_the_centre_stretch_keeps_everything() -> None:
    frame = np.zeros((100, 200, 3), np.uint8)
    frame[:, :50] = frame[:, 150:] = (0, 255, 0)  # green side bars
    frame[:, 50:150] = (255, 0, 0)  # red centre square
    assert crop_box((200, 100), (64, 64), "crop") == (50, 0, 150, 100)
    assert crop_box((100, 200), (64, 32), "crop") == (0, 75, 100, 125)
    assert crop_box((200, 100), (64, 64), "stretch") == (0, 0, 200, 100)
    assert crop_box((576, 320), (1024, 576), "crop") == (3, 0, 572, 320)  # zeroscope upscale: 569 of 576 columns
    cropped = resize_frame(frame, (64, 64), "crop")
    assert cropped[..., 0].min() > 250 and cropped[..., 1].max() < 5  # all red
    stretched = resize_frame(frame, (64, 64), "stretch")
    assert stretched[:, :8, 1].min() > 250  # the green bars are still there


def test_bad_clips_are_one_line(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="no such clip"):
        read_clip(tmp_path / "nope.mp4")
    (tmp_path / "x.avi2").write_bytes(b"123")
    with pytest.raises(UsageError, match="unknown clip format '.avi2'"):
        read_clip(tmp_path / "x.avi2")
    (tmp_path / "junk.mp4").write_bytes(np.random.default_rng(0).bytes(4096))
    with pytest.raises(UsageError, match="^cannot read .*junk.mp4: "):
        read_clip(tmp_path / "junk.mp4")
    (tmp_path / "empty.mp4").write_bytes(b"")
    with pytest.raises(UsageError, match="^cannot read .*empty.mp4: "):
        read_clip(tmp_path / "empty.mp4")
    (tmp_path / "junk.png").write_bytes(b"\x89PNG not really")
    with pytest.raises(UsageError, match="^cannot read .*junk.png: not an image"):
        read_clip(tmp_path / "junk.png")
    for bad, message in [
        (dict(start_frame=-1), "start frame must be an integer >= 0"),
        (dict(num_frames=0), "frames must be an integer in 1..1024"),
        (dict(fit="zoom"), "fit must be one of crop, stretch"),
        (dict(size=(0, 64)), "size must be two positive integers"),
        (dict(num_frames=1024, size=(4096, 4096)), "more than t2vrt reads at once"),
    ]:
        with pytest.raises(UsageError, match=message):
            read_clip(tmp_path / "nope.mp4", **bad)


def test_huge_frames_are_refused_from_the_header(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _png_header_only(tmp_path / "big.png", 8000, 5000)  # 40 Mpx: over our limit, under Pillow's own
    with pytest.raises(UsageError, match="8000x5000 frames .*scale it down first"):
        read_clip(tmp_path / "big.png")
    _png_header_only(tmp_path / "bomb.png", 100000, 100000)  # Pillow's decompression-bomb limit trips first
    with pytest.raises(UsageError, match="too large to read"):
        read_clip(tmp_path / "bomb.png")
    path = save_video(_coloured_frames(3), tmp_path / "v.mp4")
    monkeypatch.setattr(clipmod, "MAX_SOURCE_PIXELS", W * H - 1)
    with pytest.raises(UsageError, match="64x48 frames"):
        read_clip(path)


def test_too_many_frames_without_a_count(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = save_video(_coloured_frames(6), tmp_path / "v.webm")
    monkeypatch.setattr(clipmod, "MAX_FRAMES", 4)
    with pytest.raises(UsageError, match="more than 4 frames from frame 0; choose fewer"):
        read_clip(path)
    assert read_clip(path, num_frames=4).num_frames == 4


def test_clip_modules_never_import_torch() -> None:
    code = (
        "import sys, json, t2vrt.runtime.clip, t2vrt.runtime.metadata, t2vrt.runtime.vid2vid_math, t2vrt.runtime.vid2vid_stage, "
        "t2vrt.runtime.extend, t2vrt.commands.upscale, t2vrt.commands.extend\n"
        "print(json.dumps([m for m in ('torch', 'onnx', 't2vrt.models') if m in sys.modules]))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert json.loads(out.strip().splitlines()[-1]) == []
