"""Sample inputs derived from the io spec, and the error measures every parity gate uses (numpy only)."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from t2vrt.iospec import IOSpec


def sample_inputs(
    spec: IOSpec, dims: Mapping[str, int], seed: int = 0, vocab_size: int = 49408, num_timesteps: int = 1000
) -> dict[str, np.ndarray]:
    """Seeded inputs of the spec's shapes: token ids in the vocabulary, timesteps in the schedule, N(0,1) otherwise."""
    rng = np.random.default_rng(seed)
    out: dict[str, np.ndarray] = {}
    for t in spec.inputs:
        shape = t.resolve(dims)
        if t.dtype.startswith("int"):
            out[t.name] = rng.integers(0, vocab_size, size=shape).astype(t.dtype)
        elif t.name == "timestep":
            out[t.name] = rng.integers(0, num_timesteps, size=shape).astype(t.dtype)
        else:
            out[t.name] = rng.standard_normal(shape).astype(t.dtype)
    return out


def rel_l2(a: np.ndarray, ref: np.ndarray) -> float:
    """||a - ref|| / ||ref|| in float64."""
    a64, r64 = np.asarray(a, np.float64), np.asarray(ref, np.float64)
    return float(np.linalg.norm(a64 - r64) / max(np.linalg.norm(r64), 1e-30))


def psnr(a: np.ndarray, ref: np.ndarray, lo: float = -1.0, hi: float = 1.0) -> float:
    """PSNR in dB of decoded frames, both clipped to the displayable range [lo, hi]; inf when equal."""
    a64 = np.clip(np.asarray(a, np.float64), lo, hi)
    r64 = np.clip(np.asarray(ref, np.float64), lo, hi)
    mse = float(np.mean((a64 - r64) ** 2))
    return float("inf") if mse == 0 else 10.0 * np.log10((hi - lo) ** 2 / mse)
