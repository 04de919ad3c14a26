"""Trace one component to ONNX (TorchScript exporter): small graphs tidied into one file, big ones streamed into a
graph + one external data file (t2vrt.export.stream)."""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import onnx
import torch
from torch import nn

from t2vrt.export.stream import export_streamed, torchscript_export
from t2vrt.iospec import IOSpec

# Protobuf's hard limit is 2 GiB; stay well under it (the full UNet is 5.6 GB fp32, 2.8 GB fp16).
EXTERNAL_DATA_THRESHOLD = 1 << 30


def module_bytes(module: nn.Module, dtype: torch.dtype | None = None) -> int:
    """Bytes of its parameters and buffers; with `dtype`, as they would be with the floating ones cast to it."""

    def size(t: torch.Tensor) -> int:
        return dtype.itemsize if dtype is not None and t.is_floating_point() else t.element_size()

    return sum(t.numel() * size(t) for t in [*module.parameters(), *module.buffers()])


def trace_to_onnx(
    module: nn.Module, spec: IOSpec, inputs: dict[str, np.ndarray], path: Path, opset: int
) -> Path | None:
    """Export `module` (whose forward takes the spec's inputs in order) to `path`; returns the data file if external.

    Modules over EXTERNAL_DATA_THRESHOLD of weights have them streamed into one data file (t2vrt.export.stream: one
    copy of the weights, not two); smaller ones are tidied (constants folded, dead nodes dropped) and saved as one
    file. Either way through the TorchScript exporter (see stream.torchscript_export for why)."""
    if module_bytes(module) >= EXTERNAL_DATA_THRESHOLD:
        return export_streamed(module, spec, inputs, path, opset)
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=path.parent, prefix=".trace-") as scratch:
        raw = Path(scratch) / "model.onnx"
        torchscript_export(module, spec, inputs, raw, opset, weights=True)
        model = onnx.load(str(raw))
    onnx.save_model(tidy(model), str(path))
    return None


def tidy(model: onnx.ModelProto) -> onnx.ModelProto:
    """Fold constants, drop dead nodes and sort: fewer, bigger nodes for TensorRT's parser and ORT's optimiser."""
    import onnx_graphsurgeon as gs
    import onnxruntime

    onnxruntime.set_default_logger_severity(3)  # the folder runs ORT, whose optimiser chatter is noise here
    graph = gs.import_onnx(model)
    graph.fold_constants().cleanup().toposort()
    tidied = gs.export_onnx(graph)
    del tidied.opset_import[:]  # protobuf repeated fields take no slice assignment
    tidied.opset_import.extend(model.opset_import)
    tidied.producer_name = "t2vrt"
    return tidied
