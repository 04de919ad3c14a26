"""What generate, upscale and extend share for inputs: the posterior-noise option and the one-line init summary."""

from __future__ import annotations

from typing import Any

import numpy as np

from t2vrt.errors import UsageError


def read_posterior_noise(value: str | None) -> np.ndarray | str | None:
    """--posterior-noise: None (draw from the seed), 'mean', or a .npy read safely (header checked, never unpickled)."""
    if value is None or value == "mean":
        return value
    if not value.endswith(".npy"):
        raise UsageError(f"--posterior-noise must be 'mean' or a .npy file, got {value!r}")
    from t2vrt.safety.npy import load_npy

    return load_npy(value, ndim=4, what=f"--posterior-noise {value}")


def describe_init(init: dict[str, Any], steps: int) -> str:
    kind = init.get("kind")
    if kind == "video":
        kept = int(steps * float(init["strength"]))
        return (
            f"video-to-video from {init.get('source')} (frame {init.get('start_frame', 0)} on): strength "
            f"{init['strength']:g}, {kept} of {steps} steps"
        )
    if kind == "image":
        return f"image-to-video from {init.get('source')}: {init['hold_frames']} held frame(s), strength {init['strength']:g}"
    if kind == "continuation":
        return (
            f"continued {init['source_frames']} frames by {init['windows']} window(s) of {init['window']}, "
            f"{init['overlap']} held"
        )
    return f"held {init.get('hold_frames')} frame(s)"
