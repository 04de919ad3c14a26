"""The exact-layout check the key maps share: every key present, none extra, every shape as expected."""

from __future__ import annotations

from collections.abc import Mapping

from torch import Tensor

from t2vrt.models.rename import KeyMapError


def check_shapes(sd: Mapping[str, Tensor], shapes: Mapping[str, tuple[int, ...]], what: str) -> None:
    """Raise KeyError / ValueError naming the first unexpected key, missing key or wrong shape."""
    for k in sd:
        if k not in shapes:
            raise KeyMapError(f"unexpected {what} key {k!r}")
    for k, shape in shapes.items():
        if k not in sd:
            raise KeyMapError(f"missing {what} key {k!r}")
        if tuple(sd[k].shape) != shape:
            raise ValueError(f"{what} key {k!r} has shape {tuple(sd[k].shape)}, expected {shape}")
