"""The denoising progress bar generate, upscale and extend draw on stderr (tqdm is imported when one is made)."""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any


def step_bar(desc: str, quiet: bool) -> tuple[Any, Callable[[int, int], None]]:
    """A bar counting UNet steps and the pipeline callback that advances it (the total is learnt from the first
    call: a video-to-video run keeps only part of the schedule). Close the bar when done, also on an error."""
    from tqdm import tqdm

    bar = tqdm(total=None, desc=desc, unit="step", disable=quiet, file=sys.stderr)

    def on_step(i: int, n: int) -> None:
        bar.total = n
        bar.update(1)

    return bar, on_step
