"""What the planner needs to know about a bundle: each engine's weight bytes and its activation bytes at any shape.

Three sources, best last:
- `analytic`: from the model config (the registry's planner entries, t2vrt/engine/analytic.py), for any bundle or for a preset with no export;
- `onnx`: the analytic model scaled, per engine, by the ONNX liveness estimate over the exported fp16 graph at the
  requested shapes (the graph's real op order; one shape inference per engine, then any shape is cheap);
- `measured`: what TensorRT reported for an engine already built at exactly these shapes (its sidecar): its
  device_memory_size_v2, the bytes its weights take on the card and, for a streaming build, its streamable bytes.
Estimates carry the planner's margin; measured figures do not.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from t2vrt.components import COMPONENTS
from t2vrt.config import ModelConfig
from t2vrt.manifest import Manifest

ActivationFn = Callable[[str, Mapping[str, int]], int]


def dims_key(dims: Mapping[str, int], streaming: bool = False) -> str:
    """An engine's shapes as a key; a weight-streaming build at the same shapes is another engine."""
    return ",".join(f"{k}={dims[k]}" for k in sorted(dims)) + ("/streaming" if streaming else "")


@dataclass(frozen=True)
class Measured:
    """What TensorRT reported for one built engine."""

    device_memory: int  # device_memory_size_v2: activations, tactic scratch, streaming scratch
    weights: int | None = None  # bytes all its weights take on the card (streamed ones included); None: not measured
    streamable: int = 0  # streamable_weights_size (0 unless built for weight streaming)
    stream_budget: int = 0  # the weight_streaming_budget_v2 it was measured at (and the backend sets)


@dataclass(frozen=True)
class Sizes:
    weights: dict[str, int]  # bytes of fp16 weights per engine
    estimate: ActivationFn  # estimated activation bytes (before margin) per engine at the given symbol sizes
    source: str  # "analytic" | "onnx"
    measured: dict[str, dict[str, Measured]] = field(default_factory=dict)  # engine -> dims_key -> TensorRT's figures
    calibration: dict[str, float] = field(default_factory=dict)  # engine -> liveness / analytic at the request

    def measured_for(self, component: str, dims: Mapping[str, int], streaming: bool = False) -> Measured | None:
        return self.measured.get(component, {}).get(dims_key(dims, streaming))


FP16 = 2  # bytes per weight and activation in the engines


def weight_bytes(cfg: ModelConfig, itemsize: int = FP16) -> dict[str, int]:
    """Bytes of weights per engine at `itemsize` bytes per parameter (the registry's planner entries)."""
    return {n: c.planner.params(cfg) * itemsize for n, c in COMPONENTS.items()}


def activation_bytes(cfg: ModelConfig, component: str, dims: Mapping[str, int], itemsize: int = FP16) -> int:
    """Peak live activation bytes of one engine at the io-spec symbol sizes `dims` (the analytic walk)."""
    return COMPONENTS[component].planner.activations(cfg, dims) * itemsize


# ONNX liveness / analytic walk, measured on the exported tiny fp16 bundle (tests/test_planner.py re-measures it):
# the fp16 graphs add Casts at the fp32 boundary and around the norms that the walk does not model one by one.
FP16_GRAPH_FACTOR = {n: c.planner.fp16_graph_factor for n, c in COMPONENTS.items()}


def analytic_sizes(cfg: ModelConfig) -> Sizes:
    """Sizes of a model config with no export at all (weights as fp16 parameter counts; activations from the
    analytic walk times FP16_GRAPH_FACTOR)."""

    def estimate(component: str, dims: Mapping[str, int]) -> int:
        return int(activation_bytes(cfg, component, dims) * FP16_GRAPH_FACTOR[component])

    return Sizes(weight_bytes(cfg), estimate, "analytic", calibration=dict(FP16_GRAPH_FACTOR))


def bundle_sizes(
    manifest: Manifest, calibrate_at: Mapping[str, Mapping[str, int]] | None = None, precision: str = "fp16"
) -> Sizes:
    """Weights from the bundle's fp16 files; activations analytic, calibrated per engine by ONNX liveness at
    `calibrate_at[engine]` (symbol sizes) when given. Measured device memory is added by the store."""
    cfg = manifest.model
    weights = {name: c.file(precision).bytes for name, c in manifest.components.items()}
    scale: dict[str, float] = {}
    try:
        from t2vrt.engine.liveness import liveness, load_graph  # onnx only when calibrating
    except ImportError:  # a runtime-only install (no onnx package): the analytic estimate stands alone
        calibrate_at = None
    for name, dims in (calibrate_at or {}).items():
        comp = manifest.components[name]
        live = liveness(load_graph(comp.file(precision).path), comp.io.shapes(dims))
        guess = activation_bytes(cfg, name, dims)
        if guess and live.peak_bytes:  # a graph with no intermediates (a stub) says nothing about the model
            scale[name] = live.peak_bytes / guess

    def estimate(component: str, dims: Mapping[str, int]) -> int:
        return int(activation_bytes(cfg, component, dims) * scale.get(component, 1.0))

    return Sizes(weights, estimate, "onnx" if scale else "analytic", calibration=scale)
