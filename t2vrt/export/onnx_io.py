"""Trace one component to ONNX (TorchScript exporter), tidy the graph, and save it as one file or graph + one data file."""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import onnx
import torch
from torch import nn

from t2vrt.iospec import IOSpec

# Protobuf's hard limit is 2 GiB; stay well under it (the full UNet is 5.6 GB fp32, 2.8 GB fp16).
EXTERNAL_DATA_THRESHOLD = 1 << 30


def _to_torch(inputs: dict[str, np.ndarray]) -> tuple[torch.Tensor, ...]:
    return tuple(torch.from_numpy(np.ascontiguousarray(v)) for v in inputs.values())


def trace_to_onnx(module: nn.Module, spec: IOSpec, inputs: dict[str, np.ndarray], path: Path, opset: int) -> Path | None:
    """Export `module` (whose forward takes the spec's inputs in order) to `path`; returns the data file if external.

    The TorchScript exporter (dynamo=False) is used deliberately: it exports the full UNet in under a minute and keeps
    every dynamic axis symbolic; the dynamo exporter costs minutes of fixed overhead and mistranslates
    repeat_interleave with symbolic counts (microsoft/onnxscript#2548).
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=path.parent, prefix=".trace-") as scratch:
        raw = Path(scratch) / "model.onnx"
        with torch.no_grad():
            torch.onnx.export(
                module,
                _to_torch(inputs),
                str(raw),
                input_names=spec.input_names,
                output_names=spec.output_names,
                dynamic_axes=spec.dynamic_axes(),
                opset_version=opset,
                do_constant_folding=True,
                dynamo=False,
            )
        model = onnx.load(str(raw), load_external_data=False)
        if _has_external_data(model):
            # Over 2 GB the exporter writes one file per tensor. Stream them into ONE data file instead of loading
            # them: tidying the full UNet in memory held its 5.6 GB of weights three times (16 GB RSS). ORT and
            # TensorRT fold the remaining shape arithmetic themselves.
            return consolidate_external_data(model, Path(scratch), path)
    return save(tidy(model), path)


def _has_external_data(model: onnx.ModelProto) -> bool:
    return any(t.data_location == onnx.TensorProto.EXTERNAL for t in model.graph.initializer)


ALIGN = 4096  # page-aligned offsets, so runtimes can memory-map big tensors


def consolidate_external_data(model: onnx.ModelProto, src_dir: Path, path: Path) -> Path:
    """Copy every external tensor (one file each, relative to src_dir) into `<path>.data`, rewriting the graph's
    references; tensors are streamed one at a time, never all in memory."""
    data = path.with_name(path.name + ".data")
    with open(data, "wb") as out:
        for t in model.graph.initializer:
            if t.data_location != onnx.TensorProto.EXTERNAL:
                continue
            info = {e.key: e.value for e in t.external_data}
            src = src_dir / info["location"]
            with open(src, "rb") as f:
                f.seek(int(info.get("offset", 0)))
                blob = f.read(int(info["length"])) if "length" in info else f.read()
            pad = (-out.tell()) % ALIGN if len(blob) >= ALIGN else 0
            out.write(b"\0" * pad)
            offset = out.tell()
            out.write(blob)
            del t.external_data[:]
            for key, value in (("location", data.name), ("offset", str(offset)), ("length", str(len(blob)))):
                entry = t.external_data.add()
                entry.key, entry.value = key, value
    onnx.save_model(model, str(path))
    return data


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


def weight_bytes(model: onnx.ModelProto) -> int:
    total = 0
    for init in model.graph.initializer:
        total += int(np.prod(init.dims, dtype=np.int64)) * onnx.helper.tensor_dtype_to_np_dtype(init.data_type).itemsize
    return total


def save(model: onnx.ModelProto, path: Path) -> Path | None:
    """Save inline when small, else graph + ONE external data file `<name>.data` beside it (loadable by path)."""
    if weight_bytes(model) < EXTERNAL_DATA_THRESHOLD:
        onnx.save_model(model, str(path))
        return None
    data = path.with_name(path.name + ".data")
    onnx.save_model(
        model, str(path), save_as_external_data=True, all_tensors_to_one_file=True, location=data.name, size_threshold=1024
    )
    return data
