"""The pipeline's video-to-video stage without a bundle: frames from paths or arrays, chunked encoding with
explicit or drawn posterior noise, and the one-line errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from t2vrt.errors import T2VError, UsageError
from t2vrt.runtime import vid2vid_stage
from t2vrt.runtime.video import save_video


def _fake_encoder(calls: list[int]):
    """mean = per-frame mean of the image over 8x8 blocks (4 channels), logvar = -2: frames independent, like a VAE."""

    def run(images: np.ndarray) -> dict[str, np.ndarray]:
        calls.append(len(images))
        n, _, hh, ww = images.shape
        blocks = images.reshape(n, 3, hh // 8, 8, ww // 8, 8).mean(axis=(3, 5))
        mean = np.concatenate([blocks, blocks[:, :1]], axis=1).astype(np.float32)
        return {"mean": mean, "logvar": np.full_like(mean, -2.0)}

    return run


def test_load_frames_from_arrays_and_files(tmp_path: Path) -> None:
    frames = np.random.default_rng(0).integers(0, 256, (6, 32, 48, 3), dtype=np.uint8)
    got, record, fps = vid2vid_stage.load_frames(frames, 3, (48, 32), start_frame=2)
    assert np.array_equal(got, frames[2:5]) and record is None and fps is None
    assert vid2vid_stage.load_frames(frames, 4, (24, 16))[0].shape == (4, 16, 24, 3)
    still, _, _ = vid2vid_stage.load_frames(frames[0], 5, (48, 32))
    assert still.shape == (5, 32, 48, 3) and all(np.array_equal(f, frames[0]) for f in still)
    path = save_video(frames, tmp_path / "c.mp4", metadata={"prompt": "p"})
    got, record, fps = vid2vid_stage.load_frames(path, 6, (64, 64))
    assert got.shape == (6, 64, 64, 3) and record == {"prompt": "p"} and fps == pytest.approx(8)
    with pytest.raises(UsageError, match="has 1 frames from frame 5; 3 are needed"):
        vid2vid_stage.load_frames(frames, 3, (48, 32), start_frame=5)
    with pytest.raises(UsageError, match="init frames must be uint8"):
        vid2vid_stage.load_frames(frames.astype(np.float32), 3, (48, 32))
    with pytest.raises(UsageError, match="single image has no frame 1"):
        vid2vid_stage.load_frames(frames[0], 3, (48, 32), start_frame=1)


def test_encode_chunks_and_noise() -> None:
    frames = np.random.default_rng(1).integers(0, 256, (5, 16, 24, 3), dtype=np.uint8)
    calls: list[int] = []
    run = _fake_encoder(calls)
    mean_all = vid2vid_stage.encode_frames(run, frames, 0.5, chunk=0, posterior_noise="mean")
    assert mean_all.shape == (1, 4, 5, 2, 3) and calls == [5]
    mean_chunked = vid2vid_stage.encode_frames(run, frames, 0.5, chunk=2, posterior_noise="mean")
    assert calls == [5, 2, 2, 1] and np.array_equal(mean_all, mean_chunked)
    noise = np.random.default_rng(2).standard_normal((5, 4, 2, 3)).astype(np.float32)
    given = vid2vid_stage.encode_frames(run, frames, 0.5, posterior_noise=noise)
    np.testing.assert_allclose(
        given, mean_all + 0.5 * np.exp(-1.0) * noise.transpose(1, 0, 2, 3)[None], rtol=1e-5, atol=1e-6
    )
    drawn = vid2vid_stage.encode_frames(run, frames, 0.5, rng=np.random.default_rng(3))
    again = vid2vid_stage.encode_frames(run, frames, 0.5, rng=np.random.default_rng(3))
    assert np.array_equal(drawn, again) and not np.array_equal(drawn, mean_all)
    with pytest.raises(UsageError, match=r"posterior noise must have shape \(5, 4, 2, 3\)"):
        vid2vid_stage.encode_frames(run, frames, 0.5, posterior_noise=noise[:2])
    with pytest.raises(UsageError, match="an array, 'mean' or None"):
        vid2vid_stage.encode_frames(run, frames, 0.5, posterior_noise="mode")

    def broken(images: np.ndarray) -> dict[str, np.ndarray]:
        out = run(images)
        return {"mean": out["mean"] * np.nan, "logvar": out["logvar"]}

    with pytest.raises(T2VError, match="VAE encoder produced NaN"):
        vid2vid_stage.encode_frames(broken, frames, 0.5, posterior_noise="mean")


def test_check_noise() -> None:
    assert vid2vid_stage.check_noise(None, (1, 2), "x") is None
    assert vid2vid_stage.check_noise(np.zeros((1, 2)), (1, 2), "x").dtype == np.float32
    with pytest.raises(UsageError, match=r"init noise must be a float array of shape \(1, 2\)"):
        vid2vid_stage.check_noise(np.zeros((2, 2)), (1, 2), "init noise")
    with pytest.raises(UsageError, match="NaN"):
        vid2vid_stage.check_noise(np.full((1, 2), np.nan), (1, 2), "x")
