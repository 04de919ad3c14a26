"""Export a big module with its weights streamed to ONE data file, never a second copy in memory.

The TorchScript exporter, asked to embed parameters, builds the whole protobuf (5.6 GB for the full fp32 UNet) beside
the module that holds the same weights. Here the graph is traced with `export_params=False` (parameters become graph
inputs named by their state-dict keys) and without constant folding; then each parameter is written, one tensor at a
time, straight from the module into `<model>.onnx.data` as an initializer. The simple ops the exporter applies to
weights (Transpose of a Linear weight, Unsqueeze/Gather of a conv weight, Cast) are folded per tensor on the way, so
the graph is what constant folding would have given: no weight is transposed again at load time.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import torch
from onnx import numpy_helper
from torch import nn

from t2vrt.iospec import IOSpec

Fold = Callable[[np.ndarray], np.ndarray]
ALIGN = 4096  # page-aligned offsets, so runtimes can memory-map big tensors


def to_torch(inputs: dict[str, np.ndarray]) -> tuple[torch.Tensor, ...]:
    return tuple(torch.from_numpy(np.ascontiguousarray(v)) for v in inputs.values())


def _constants(graph: onnx.GraphProto) -> dict[str, np.ndarray]:
    """Values of the graph's Constant nodes (small: axes, indices, shapes)."""
    out = {}
    for n in graph.node:
        if n.op_type == "Constant" and n.attribute and n.attribute[0].name == "value":
            out[n.output[0]] = numpy_helper.to_array(n.attribute[0].t)
    return out


def _attr(node: onnx.NodeProto, name: str, default: object = None) -> object:
    for a in node.attribute:
        if a.name == name:
            return onnx.helper.get_attribute_value(a)
    return default


def _fold_of(node: onnx.NodeProto, consts: dict[str, np.ndarray]) -> Fold | None:
    """numpy for a node applied to one weight, when its other inputs are constants; None = not foldable."""
    other = [consts.get(i) for i in node.input[1:]]
    if any(v is None for v in other):
        return None
    op = node.op_type
    if op == "Transpose":
        perm = _attr(node, "perm")
        return lambda w: np.ascontiguousarray(np.transpose(w, perm))  # type: ignore[arg-type]
    if op == "Unsqueeze" and other:
        axes = [int(a) for a in np.atleast_1d(other[0])]
        return lambda w: np.expand_dims(w, tuple(a % (w.ndim + len(axes)) for a in axes))
    if op == "Squeeze" and other:
        axes = tuple(int(a) for a in np.atleast_1d(other[0]))
        return lambda w: np.squeeze(w, tuple(a % w.ndim for a in axes))
    if op == "Gather" and other:
        axis, idx = int(_attr(node, "axis", 0)), other[0]  # type: ignore[arg-type]
        return lambda w: np.ascontiguousarray(np.take(w, idx, axis=axis))
    if op == "Cast":
        to = onnx.helper.tensor_dtype_to_np_dtype(int(_attr(node, "to")))  # type: ignore[arg-type]
        return lambda w: w.astype(to)
    return None


def export_streamed(module: nn.Module, spec: IOSpec, inputs: dict[str, np.ndarray], path: Path, opset: int) -> Path:
    """Trace `module` to `path` + `<path>.data` (returned), weights streamed from the module one tensor at a time."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with torch.no_grad():
        torch.onnx.export(
            module,
            to_torch(inputs),
            str(path),
            input_names=spec.input_names,
            output_names=spec.output_names,
            dynamic_axes=spec.dynamic_axes(),
            opset_version=opset,
            export_params=False,
            do_constant_folding=False,
            dynamo=False,
        )
    model = onnx.load(str(path))
    graph = model.graph
    weights = {k: v for k, v in [*module.named_parameters(), *module.named_buffers()]}
    params = [i.name for i in graph.input if i.name in weights]

    # Each derived constant is (source weight, the folds applied to it, in order); computed only when written.
    derived: dict[str, tuple[str, tuple[Fold, ...]]] = {p: (p, ()) for p in params}
    consts = _constants(graph)
    keep: list[onnx.NodeProto] = []
    for node in graph.node:
        src = derived.get(node.input[0]) if node.input else None
        fold = _fold_of(node, consts) if src is not None and len(node.output) == 1 else None
        if src is not None and fold is not None:
            derived[node.output[0]] = (src[0], (*src[1], fold))
        else:
            keep.append(node)
    used = {i for n in keep for i in n.input} | {o.name for o in graph.output}
    keep = [n for n in keep if n.op_type != "Constant" or n.output[0] in used]  # axes/indices only folds read
    written = [name for name in derived if name in used]

    data = path.with_name(path.name + ".data")
    with open(data, "wb") as out:
        for name in written:
            src, folds = derived[name]
            arr = weights[src].detach().cpu().numpy()
            for f in folds:
                arr = f(arr)
            arr = np.ascontiguousarray(arr)
            tensor = onnx.TensorProto(name=name, data_type=onnx.helper.np_dtype_to_tensor_dtype(arr.dtype))
            tensor.dims.extend(arr.shape)
            out.write(b"\0" * ((-out.tell()) % ALIGN if arr.nbytes >= ALIGN else 0))
            offset = out.tell()
            out.write(arr.tobytes())  # one tensor's bytes at a time
            tensor.data_location = onnx.TensorProto.EXTERNAL
            for key, value in (("location", data.name), ("offset", str(offset)), ("length", str(arr.nbytes))):
                entry = tensor.external_data.add()
                entry.key, entry.value = key, value
            graph.initializer.append(tensor)
            del arr
    del graph.node[:]
    graph.node.extend(keep)
    inputs_kept = [i for i in graph.input if i.name not in weights]
    del graph.input[:]
    graph.input.extend(inputs_kept)
    onnx.save_model(model, str(path))
    return data


def spill_half(module: nn.Module, path: Path) -> list[tuple[str, tuple[int, ...], int]]:
    """Write `module`'s state dict as fp16 to `path`, one tensor at a time; returns (key, shape, offset) per tensor.

    With load_half, a big fp32 module becomes fp16 without both copies in memory at once: the caller drops the fp32
    module (its memory-mapped checkpoint pages go with it) between the two."""
    index = []
    with open(path, "wb") as out:
        for key, t in module.state_dict().items():
            arr = t.detach().to(torch.float16 if t.is_floating_point() else t.dtype).cpu().numpy()
            index.append((key, tuple(arr.shape), out.tell()))
            out.write(np.ascontiguousarray(arr).tobytes())
    return index


def load_half(module: nn.Module, path: Path, index: list[tuple[str, tuple[int, ...], int]]) -> nn.Module:
    """Fill `module` (built on the meta device) from spill_half's file; returns it in fp16, eval mode."""
    ref = module.state_dict()
    state = {}
    for key, shape, offset in index:
        dtype = np.float16 if ref[key].is_floating_point() else np.dtype(str(ref[key].dtype).removeprefix("torch."))
        count = int(np.prod(shape, dtype=np.int64))
        state[key] = torch.from_numpy(np.fromfile(path, dtype=dtype, count=count, offset=offset).reshape(shape))
    module.load_state_dict(state, strict=True, assign=True)
    init_buffers = getattr(module, "init_buffers", None)
    if callable(init_buffers):
        init_buffers("cpu")  # non-persistent buffers (the causal mask) are in no state dict
    return module.to(torch.float16).eval().requires_grad_(False)
