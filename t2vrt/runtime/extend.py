"""Continuation: a clip made longer, one model-length window at a time, each holding the last frames so far.

Window 1 holds the latents of the clip's last `overlap` frames (encoded); window w > 1 holds the last `overlap`
latents the previous window ended with (no decode/encode round trip between windows). Each window generates
`frames - overlap` new frames; the stitched video is the clip's own frames followed by them. Torch-free.

What to expect: the model never saw more than its trained length (16 frames for ms-1.7b, 24 for zeroscope), and a
window only sees its `overlap` held frames of the past, so motion stays locally coherent at the seams while content
drifts over several windows (a known limit of held-frame continuation, also in the A1111 extension).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from t2vrt.runtime import vid2vid_math, vid2vid_stage
from t2vrt.runtime.clip import read_clip

if TYPE_CHECKING:
    from t2vrt.runtime.pipeline import Pipeline

WindowCallback = Callable[[int, int], None]  # (window done, windows)


@dataclass
class Extended:
    frames: np.ndarray  # (clip frames + windows * (frames - overlap), H, W, 3) uint8
    fps: float
    record: dict[str, Any]
    timings: dict[str, float] = field(default_factory=dict)


def extend(
    pipe: Pipeline,
    clip: vid2vid_stage.ClipSource,
    prompt: str,
    overlap: int,
    windows: int = 1,
    num_frames: int | None = None,
    seed: int = 0,
    window_callback: WindowCallback | None = None,
    **generate: Any,
) -> Extended:
    """`clip` (a path or uint8 frames (f, H, W, 3)) continued by `windows` windows of `num_frames` (default: the
    bundle's) frames, each holding `overlap` frames. The size is the clip's (it must be one the bundle can make);
    window w uses seed + w. Other keywords go to the pipeline call (steps, guidance, scheduler, callback, ...)."""
    m = pipe.manifest
    window = num_frames if num_frames is not None else m.defaults.num_frames
    if isinstance(clip, (str, Path)):
        c = read_clip(clip)
        frames, fps, source_record = c.frames, c.fps, c.metadata
    else:
        frames, fps, source_record = np.asarray(clip), None, None
        vid2vid_stage.load_frames(frames, len(frames), (frames.shape[2], frames.shape[1]))  # the array checks
    total = vid2vid_math.continuation_length(len(frames), window, overlap, windows)
    h, w = frames.shape[1:3]
    o_fps = fps or m.defaults.fps
    video = frames
    known: np.ndarray | None = None
    timings: dict[str, float] = {}
    last_record: dict[str, Any] = {}
    for i in range(windows):
        if known is None:  # window 1: the clip's last frames, encoded (the posterior's mean: no extra draw)
            rng = np.random.default_rng(seed)
            known = vid2vid_stage.encode_with(
                pipe.backend, m, video[-overlap:], generate.get("vae_chunk") or 0, "mean", rng
            )
        out = pipe(prompt, num_frames=window, height=h, width=w, seed=seed + i, hold_latents=known, **generate)
        assert out.latents is not None
        known = out.latents[:, :, -overlap:]
        video = vid2vid_math.stitch(video, out.frames, overlap)
        for k, v in out.timings.items():
            timings[k] = timings.get(k, 0.0) + v
        last_record = dict(out.record or {})
        if window_callback is not None:
            window_callback(i + 1, windows)
    assert len(video) == total
    record = {
        **last_record,
        "seed": seed,
        "frames": total,
        "fps": o_fps,
        "init": {
            "kind": "continuation",
            "overlap": overlap,
            "windows": windows,
            "window": window,
            "source_frames": len(frames),
        },
    }
    if source_record and "prompt" in source_record:
        record["init"]["source_prompt"] = source_record["prompt"]
    return Extended(video, float(o_fps), record, timings)
