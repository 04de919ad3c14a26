"""Frames -> uint8 (as the original's tensor2vid) and the video writers: round trips, atomic writes, errors."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from t2vrt.errors import T2VError, UsageError
from t2vrt.runtime import video
from t2vrt.runtime.video import read_video, save_video, to_uint8

F, H, W = 6, 48, 64


def _smooth_frames() -> np.ndarray:
    # Gradients that move: what lossy codecs handle well, with every frame different.
    yy, xx = np.mgrid[0:H, 0:W]
    frames = [
        np.stack([(xx * 3 + 10 * i) % 256, (yy * 4 + 5 * i) % 256, np.full_like(xx, 60 + 20 * i)], -1) for i in range(F)
    ]
    return np.stack(frames).astype(np.uint8)


def _palette_frames() -> np.ndarray:
    # At most 256 colours per frame: GIF can hold them exactly.
    rng = np.random.default_rng(0)
    palette = rng.integers(0, 256, (16, 3), dtype=np.uint8)
    idx = rng.integers(0, 16, (F, H // 8, W // 8))
    return palette[np.kron(idx, np.ones((1, 8, 8), dtype=int))]


def _tensor2vid(images: np.ndarray) -> np.ndarray:
    """modelscope's tensor2vid (text_to_video_synthesis_pipeline.py) on per-frame [n, 3, h, w] input, in torch."""
    torch = pytest.importorskip("torch")
    v = torch.from_numpy(images.copy()).permute(1, 0, 2, 3)[None]  # (1, c, f, h, w) as the original gets it
    mean = torch.tensor([0.5, 0.5, 0.5]).reshape(1, -1, 1, 1, 1)
    std = torch.tensor([0.5, 0.5, 0.5]).reshape(1, -1, 1, 1, 1)
    v = v.mul_(std).add_(mean).clamp_(0, 1)
    frames = v[0].permute(1, 2, 3, 0)  # (f, h, w, c)
    return (frames.numpy() * 255).astype("uint8")


def test_to_uint8_matches_the_original():
    rng = np.random.default_rng(0)
    x = rng.uniform(-1.3, 1.3, (4, 3, 16, 24)).astype(np.float32)
    # Exact boundaries and values where truncation and rounding differ.
    k = np.arange(256, dtype=np.float32)
    x[0, 0, 0, :24] = (k[:24] + 0.6) / 255 * 2 - 1
    x[0, 1, 0, :6] = [-1.0, 1.0, 0.0, -2.0, 2.0, 0.99999994]
    ours = to_uint8(x)
    ref = _tensor2vid(x)
    assert ours.dtype == np.uint8 and ours.shape == (4, 16, 24, 3) and ours.flags.c_contiguous
    np.testing.assert_array_equal(ours, ref)
    assert ours[0, 0, 0, 0] == 0 and ours[0, 0, 1, 1] == 255 and ours[0, 0, 2, 1] == 127  # 127.5 truncates
    assert list(ours[0, 0, :24, 0]) == list(range(24))  # k + 0.6 truncates to k, rounding would give k + 1


def test_to_uint8_accepts_float16_and_rejects_bad_shapes():
    x = np.linspace(-1, 1, 3 * 4 * 4, dtype=np.float16).reshape(1, 3, 4, 4)
    np.testing.assert_array_equal(to_uint8(x), _tensor2vid(x.astype(np.float32)))
    with pytest.raises(ValueError, match=r"\[n, 3, h, w\]"):
        to_uint8(np.zeros((1, 4, 4, 3), np.float32))


@pytest.mark.parametrize("ext, bound", [(".mp4", 4.0), (".webm", 4.0)])
def test_lossy_round_trip(tmp_path, ext, bound):
    frames = _smooth_frames()
    out = save_video(frames, tmp_path / f"clip{ext}", fps=8)
    back = read_video(out)
    assert back.shape == frames.shape and back.dtype == np.uint8
    mae = np.abs(back.astype(np.int16) - frames).mean()
    print(f"{ext}: {F} frames {W}x{H}, mean abs error {mae:.2f} (bound {bound}), {out.stat().st_size} bytes")
    assert mae < bound
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"clip{ext}"]


def test_mp4_is_h264_yuv420p_at_the_given_fps(tmp_path):
    import imageio_ffmpeg

    out = save_video(_smooth_frames(), tmp_path / "clip.mp4", fps=8)
    meta = next(imageio_ffmpeg.read_frames(str(out)))
    assert meta["fps"] == 8 and tuple(meta["size"]) == (W, H)
    assert "h264" in meta["codec"] and "yuv420p" in meta["pix_fmt"]


def test_gif_round_trip_is_exact_for_palette_frames(tmp_path):
    frames = _palette_frames()
    out = save_video(frames, tmp_path / "clip.GIF", fps=8)  # extension case does not matter
    back = read_video(out)
    assert back.shape == frames.shape
    np.testing.assert_array_equal(back, frames)


@pytest.mark.parametrize("name", ["frames", "frames/"])
def test_png_directory_round_trip_is_exact(tmp_path, name):
    frames = _smooth_frames()
    out = save_video(frames, str(tmp_path / name), fps=8)
    assert out == tmp_path / "frames" and out.is_dir()
    assert sorted(p.name for p in out.iterdir()) == [".t2vrt-owned"] + [f"frame_{i:04d}.png" for i in range(F)]
    np.testing.assert_array_equal(read_video(out), frames)


def test_existing_output_needs_overwrite(tmp_path):
    frames = _palette_frames()
    target = tmp_path / "clip.mp4"
    target.write_bytes(b"precious")
    with pytest.raises(UsageError, match="already exists"):
        save_video(frames, target)
    assert target.read_bytes() == b"precious"
    save_video(frames, target, overwrite=True)
    assert read_video(target).shape == frames.shape
    # A frames directory t2vrt wrote is replaced (files a user added are kept); any other directory is never touched.
    d = save_video(frames, tmp_path / "frames")
    (d / "notes.txt").write_text("mine")
    save_video(frames[:2], d, overwrite=True)
    assert sorted(p.name for p in d.iterdir()) == [".t2vrt-owned", "frame_0000.png", "frame_0001.png", "notes.txt"]
    other = tmp_path / "mine"
    other.mkdir()
    (other / "notes.txt").write_text("keep")
    with pytest.raises(UsageError, match="was not written by t2vrt"):
        save_video(frames, other, overwrite=True)
    assert (other / "notes.txt").read_text() == "keep"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["clip.mp4", "frames", "mine"]


def test_unknown_extension_lists_the_allowed_ones(tmp_path):
    with pytest.raises(UsageError, match=r"\.avi.*\.mp4, \.webm, \.gif, or a directory"):
        save_video(_palette_frames(), tmp_path / "clip.avi")


def test_unwritable_directory_is_a_usage_error(tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    with pytest.raises(UsageError, match="cannot create output directory"):
        save_video(_palette_frames(), blocker / "sub" / "clip.mp4")


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root writes anywhere")
def test_read_only_directory_is_a_usage_error(tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        with pytest.raises(UsageError, match="not writable"):
            save_video(_palette_frames(), ro / "clip.mp4")
    finally:
        ro.chmod(0o700)


def test_bad_frames_and_fps(tmp_path):
    with pytest.raises(UsageError, match="uint8"):
        save_video(np.zeros((2, 8, 8, 3), np.float32), tmp_path / "a.mp4")
    with pytest.raises(UsageError, match="uint8"):
        save_video(np.zeros((0, 8, 8, 3), np.uint8), tmp_path / "a.mp4")
    with pytest.raises(UsageError, match="even"):
        save_video(np.zeros((2, 9, 8, 3), np.uint8), tmp_path / "a.mp4")
    with pytest.raises(UsageError, match="fps"):
        save_video(np.zeros((2, 8, 8, 3), np.uint8), tmp_path / "a.gif", fps=0)
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(UsageError, match="no such video"):
        read_video(tmp_path / "missing.mp4")


def test_failures_leave_no_temp_files(tmp_path, monkeypatch):
    frames = _palette_frames()

    def broken_ffmpeg(*args, **kwargs):
        Path(args[0][-1]).write_bytes(b"half a video")  # ffmpeg got partway, then failed
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(video.subprocess, "run", broken_ffmpeg)
    with pytest.raises(T2VError, match="cannot write"):
        save_video(frames, tmp_path / "clip.mp4")

    def broken_write(path, data):
        Path(path).write_bytes(data[:10])  # half a file, then Ctrl-C: even an interrupt cleans up
        raise KeyboardInterrupt

    monkeypatch.setattr(video, "_write_bytes", broken_write)
    with pytest.raises(KeyboardInterrupt):
        save_video(frames, tmp_path / "frames")
    with pytest.raises(KeyboardInterrupt):
        save_video(frames, tmp_path / "clip.gif")
    assert list(tmp_path.iterdir()) == []


def test_ffmpeg_error_is_reported_and_cleaned_up(tmp_path, monkeypatch):
    monkeypatch.setitem(video.FFMPEG_FORMATS, ".mp4", ("no-such-codec", []))
    with pytest.raises(T2VError, match="ffmpeg failed writing .mp4"):
        save_video(_palette_frames(), tmp_path / "clip.mp4")
    assert list(tmp_path.iterdir()) == []


def test_check_output_path_fails_early_and_creates_nothing(tmp_path):
    target = video.check_output_path(tmp_path / "new" / "deeper" / "clip.webm")
    assert target == tmp_path / "new" / "deeper" / "clip.webm" and not (tmp_path / "new").exists()
    assert video.check_output_path(str(tmp_path / "frames") + "/") == tmp_path / "frames"
    (tmp_path / "clip.mp4").write_bytes(b"x")
    with pytest.raises(UsageError, match="already exists"):
        video.check_output_path(tmp_path / "clip.mp4")
    assert video.check_output_path(tmp_path / "clip.mp4", overwrite=True) == tmp_path / "clip.mp4"
    with pytest.raises(UsageError, match="cannot create output directory"):
        video.check_output_path(tmp_path / "clip.mp4" / "x.gif")
    with pytest.raises(UsageError, match="allowed"):
        video.check_output_path(tmp_path / "clip.mkv")
    with pytest.raises(UsageError, match="is a directory"):
        (tmp_path / "d.gif").mkdir()
        video.check_output_path(tmp_path / "d.gif", overwrite=True)


def test_unwritable_directory_simulated(tmp_path, monkeypatch):
    # Root (CI containers) may write anywhere, so also check the path through a directory the OS calls unwritable.
    monkeypatch.setattr(video.os, "access", lambda p, mode: Path(p) != tmp_path)
    with pytest.raises(UsageError, match=f"output directory {tmp_path} is not writable"):
        save_video(_palette_frames(), tmp_path / "clip.mp4")
    with pytest.raises(UsageError, match="cannot create output directory"):
        save_video(_palette_frames(), tmp_path / "sub" / "clip.mp4")
    assert list(tmp_path.iterdir()) == []
