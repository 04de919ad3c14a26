"""One input/output spec per engine: ordered names, symbolic shapes, dtypes.

Everything shape-related is derived from these: the export's sample inputs and ONNX dynamic axes, the TensorRT
optimisation profiles, the runtime's buffers and the checks on every call. Pure Python (no numpy, no torch), so the
export, engine and runtime stages all read the same definition; the bundle's manifest carries it as JSON.

A dimension is an int (fixed) or a symbol: "frames", or a symbol times an int: "latent_height*8".
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

from t2vrt.errors import UsageError

Dim = int | str
_SYMBOL = re.compile(r"^([a-z_][a-z0-9_]*)(?:\*(\d+))?$")

# The symbols, what they mean, and the smallest size each may take.
SYMBOLS: dict[str, str] = {
    "text_batch": "prompts encoded in one call",
    "batch": "videos in one UNet call (2 = cond + uncond guidance in one call)",
    "frames": "frames per video",
    "latent_height": "image height / 8",
    "latent_width": "image width / 8",
    "vae_batch": "frames in one VAE call (decoder, or encoder for video-to-video)",
}


def _parse(dim: Dim) -> tuple[str | None, int]:
    if isinstance(dim, int):
        return None, dim
    m = _SYMBOL.match(dim)
    if not m:
        raise ValueError(f"bad dimension {dim!r}: expected an int, 'symbol' or 'symbol*k'")
    return m.group(1), int(m.group(2) or 1)


@dataclass(frozen=True)
class TensorSpec:
    name: str
    shape: tuple[Dim, ...]
    dtype: str  # numpy dtype name: float32, float16, int64, int32

    def symbols(self) -> list[str]:
        return [s for s, _ in map(_parse, self.shape) if s is not None]

    def resolve(self, dims: Mapping[str, int]) -> tuple[int, ...]:
        out = []
        for d in self.shape:
            sym, k = _parse(d)
            if sym is None:
                out.append(k)
            elif sym not in dims:
                raise KeyError(f"{self.name}: no size given for dimension {sym!r}")
            else:
                out.append(int(dims[sym]) * k)
        return tuple(out)

    def match(self, shape: tuple[int, ...], dims: dict[str, int]) -> None:
        """Check a concrete shape against this spec, binding symbols in `dims` (raises UsageError on mismatch)."""
        if len(shape) != len(self.shape):
            raise UsageError(f"{self.name}: expected rank {len(self.shape)} {self.shape}, got shape {tuple(shape)}")
        for axis, (d, n) in enumerate(zip(self.shape, shape)):
            sym, k = _parse(d)
            if sym is None:
                if n != k:
                    raise UsageError(f"{self.name}: axis {axis} must be {k}, got {n} (shape {tuple(shape)})")
                continue
            if n % k:
                raise UsageError(f"{self.name}: axis {axis} ({d}) must be a multiple of {k}, got {n}")
            if dims.setdefault(sym, n // k) != n // k:
                raise UsageError(
                    f"{self.name}: axis {axis} ({d}) is {n}, but {sym} = {dims[sym]} elsewhere (shape {tuple(shape)})"
                )

    def to_json(self) -> dict:
        return {"name": self.name, "shape": list(self.shape), "dtype": self.dtype}

    @classmethod
    def from_json(cls, d: Mapping) -> TensorSpec:
        return cls(str(d["name"]), tuple(d["shape"]), str(d["dtype"]))


@dataclass(frozen=True)
class IOSpec:
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]

    @property
    def input_names(self) -> list[str]:
        return [t.name for t in self.inputs]

    @property
    def output_names(self) -> list[str]:
        return [t.name for t in self.outputs]

    def tensors(self) -> tuple[TensorSpec, ...]:
        return self.inputs + self.outputs

    def symbols(self) -> list[str]:
        seen: dict[str, None] = {}
        for t in self.tensors():
            for s in t.symbols():
                seen.setdefault(s)
        return list(seen)

    def input_symbols(self) -> list[str]:
        seen: dict[str, None] = {}
        for t in self.inputs:
            for s in t.symbols():
                seen.setdefault(s)
        return list(seen)

    def shapes(self, dims: Mapping[str, int]) -> dict[str, tuple[int, ...]]:
        """Concrete shapes of every input and output for the given symbol sizes."""
        return {t.name: t.resolve(dims) for t in self.tensors()}

    def dynamic_axes(self) -> dict[str, dict[int, str]]:
        """ONNX export's dynamic_axes: {tensor: {axis: symbol}} (a scaled axis gets its own name, 'height' style)."""
        axes: dict[str, dict[int, str]] = {}
        for t in self.tensors():
            for i, d in enumerate(t.shape):
                sym, k = _parse(d)
                if sym is not None:
                    axes.setdefault(t.name, {})[i] = sym if k == 1 else f"{sym}_x{k}"
        return axes

    def bind(self, arrays: Mapping[str, object]) -> dict[str, int]:
        """Check named input arrays (anything with .shape) against the spec; return the symbol sizes they imply."""
        missing = [n for n in self.input_names if n not in arrays]
        extra = [n for n in arrays if n not in self.input_names]
        if missing or extra:
            raise UsageError(f"inputs must be {self.input_names}; missing {missing}, unexpected {extra}")
        dims: dict[str, int] = {}
        for t in self.inputs:
            t.match(tuple(arrays[t.name].shape), dims)  # type: ignore[attr-defined]
        return dims

    def to_json(self) -> dict:
        return {"inputs": [t.to_json() for t in self.inputs], "outputs": [t.to_json() for t in self.outputs]}

    @classmethod
    def from_json(cls, d: Mapping) -> IOSpec:
        return cls(
            tuple(TensorSpec.from_json(t) for t in d["inputs"]), tuple(TensorSpec.from_json(t) for t in d["outputs"])
        )


# The engines' specs (t2vrt.components says which engines a model has). Inputs and outputs are float32 at the boundary in every precision (an fp16 graph casts inside),
# so the runtime's buffers and the sampler's arithmetic never depend on the bundle's precision.


def text_encoder_spec(context_length: int, width: int) -> IOSpec:
    return IOSpec(
        inputs=(TensorSpec("tokens", ("text_batch", context_length), "int64"),),
        outputs=(TensorSpec("text_embeddings", ("text_batch", context_length, width), "float32"),),
    )


def unet_spec(in_channels: int, out_channels: int, context_length: int, context_dim: int) -> IOSpec:
    return IOSpec(
        inputs=(
            TensorSpec("latents", ("batch", in_channels, "frames", "latent_height", "latent_width"), "float32"),
            TensorSpec("timestep", ("batch",), "float32"),
            TensorSpec("text_embeddings", ("batch", context_length, context_dim), "float32"),
        ),
        outputs=(TensorSpec("eps", ("batch", out_channels, "frames", "latent_height", "latent_width"), "float32"),),
    )


def vae_decoder_spec(z_channels: int, downscale: int, out_channels: int = 3) -> IOSpec:
    return IOSpec(
        inputs=(TensorSpec("latents", ("vae_batch", z_channels, "latent_height", "latent_width"), "float32"),),
        outputs=(
            TensorSpec(
                "images",
                ("vae_batch", out_channels, f"latent_height*{downscale}", f"latent_width*{downscale}"),
                "float32",
            ),
        ),
    )


def vae_encoder_spec(in_channels: int, downscale: int, embed_dim: int) -> IOSpec:
    """images (one frame each) -> the posterior's moments: channels [0, embed_dim) the mean, the rest the logvar."""
    return IOSpec(
        inputs=(
            TensorSpec(
                "images",
                ("vae_batch", in_channels, f"latent_height*{downscale}", f"latent_width*{downscale}"),
                "float32",
            ),
        ),
        outputs=(TensorSpec("moments", ("vae_batch", 2 * embed_dim, "latent_height", "latent_width"), "float32"),),
    )
