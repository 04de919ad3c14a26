"""Export a big module with its weights streamed to ONE data file, never a second copy in memory.

The TorchScript exporter, asked to embed parameters, builds the whole protobuf (5.6 GB for the full fp32 UNet) beside
the module that holds the same weights. Here it is two steps:

1. `trace_streamed`: the graph is traced with `export_params=False` (parameters become graph inputs named by their
   state-dict keys) and without constant folding. Only shapes and dtypes matter to the trace, so the module traced
   can be a `placeholder`: the component's structure with every weight one value broadcast to its shape (no
   memory), in the precision being exported. The export traces before the real weights are loaded, so the tracer's own
   memory never adds to theirs.
2. `Traced.write`: each weight is written, one tensor at a time, from the real module into `<model>.onnx.data` as an
   initializer, cast to the graph's precision on the way. The simple ops the exporter applies to weights (Transpose
   of a Linear weight, Unsqueeze/Gather of a conv weight, Cast) are folded per tensor too, so the graph is what
   constant folding would have given: no weight is transposed again at load time.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
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


def placeholder(build: Callable[[], nn.Module], dtype: torch.dtype, materialise: bool = False) -> nn.Module:
    """`build()`'s structure in `dtype` for tracing only (its outputs are meaningless): each parameter and persistent
    buffer holds one value, a different one for each. Broadcast (stride 0, no memory) unless `materialise`: PyTorch's
    fp16 CPU kernels are ~4x slower on broadcast weights (the full UNet's trace forward: 128 s against 34 s)."""
    with torch.device("meta"):
        module = build()
    n = 0
    for sub in module.modules():
        for name, t in list(sub._parameters.items()):
            if t is not None:
                n += 1
                sub._parameters[name] = nn.Parameter(_filled(t, dtype, n, materialise), requires_grad=False)
        for name, t in list(sub._buffers.items()):
            if t is not None:
                n += 1
                sub._buffers[name] = _filled(t, dtype, n, materialise)
    # A non-persistent buffer (the causal mask) is no graph input: the trace bakes its values in, so it must be real.
    init_buffers = getattr(module, "init_buffers", None)
    if callable(init_buffers):
        init_buffers("cpu")
    for sub in module.modules():
        for name in sub._non_persistent_buffers_set:
            t = sub._buffers.get(name)
            if t is not None and t.is_floating_point() and t.stride() and min(t.stride()) > 0:
                sub._buffers[name] = t.to(dtype)
    return module.eval()


# 1.0 as bits: n added gives 1 + n ulp, a normal number (subnormal weights make the CPU's float math ~3x slower)
_ONE_BITS = {torch.float16: (torch.int16, 0x3C00), torch.float32: (torch.int32, 0x3F800000)}


def _filled(t: torch.Tensor, dtype: torch.dtype, n: int, materialise: bool) -> torch.Tensor:
    """Weight n's placeholder: the exporter merges weights of equal value (shape, dtype and contents) into one
    initializer, so every placeholder holds a different value (1 + n ulp; an integer buffer holds n)."""
    if not t.is_floating_point():
        value = torch.tensor(n, dtype=t.dtype)
    else:
        bits, one = _ONE_BITS[dtype]
        if dtype == torch.float16 and n >= 0x7C00 - one:
            raise ValueError(f"{n} weights: too many for distinct fp16 placeholders")
        value = torch.tensor(one + n, dtype=bits).view(dtype)
    return value.expand(t.shape).clone() if materialise else value.expand(t.shape)


def named_weights(module: nn.Module) -> dict[str, torch.Tensor]:
    """Parameters and buffers (persistent or not) by the names the exporter gives their graph inputs."""
    return {k: v for k, v in [*module.named_parameters(), *module.named_buffers()]}


@dataclass
class Traced:
    """A traced graph whose weights are still graph inputs, and how each initializer derives from one weight."""

    model: onnx.ModelProto
    path: Path
    derived: dict[str, tuple[str, tuple[Fold, ...]]]  # initializer -> (weight name, folds applied in order)
    written: list[str]  # initializers the kept nodes read
    keep: list[onnx.NodeProto]

    def write(self, weights: Mapping[str, torch.Tensor], dtype: torch.dtype | None = None) -> Path:
        """Stream `weights` (cast to `dtype` when floating, one tensor at a time) into `<path>.data`; save the graph
        with them as external initializers; returns the data file."""
        graph = self.model.graph
        data = self.path.with_name(self.path.name + ".data")
        with open(data, "wb") as out:
            for name in self.written:
                src, folds = self.derived[name]
                t = weights[src].detach()
                if dtype is not None and t.is_floating_point():
                    t = t.to(dtype)
                arr = t.cpu().numpy()
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
                del arr, t
        del graph.node[:]
        graph.node.extend(self.keep)
        inputs_kept = [i for i in graph.input if i.name not in self.derived]
        del graph.input[:]
        graph.input.extend(inputs_kept)
        onnx.save_model(self.model, str(self.path))
        return data


def torchscript_export(
    module: nn.Module, spec: IOSpec, inputs: dict[str, np.ndarray], path: Path, opset: int, weights: bool
) -> None:
    """The one call of the TorchScript exporter (dynamo=False, deliberately: it exports the full UNet in under a minute
    and keeps every dynamic axis symbolic; the dynamo exporter costs minutes of fixed overhead and mistranslates
    repeat_interleave with symbolic counts, microsoft/onnxscript#2548). weights=False: parameters become graph inputs
    named by their state-dict keys, nothing is constant-folded."""
    with torch.no_grad():
        torch.onnx.export(
            module,
            to_torch(inputs),
            str(path),
            input_names=spec.input_names,
            output_names=spec.output_names,
            dynamic_axes=spec.dynamic_axes(),
            opset_version=opset,
            export_params=weights,
            do_constant_folding=weights,
            dynamo=False,
        )


def trace_streamed(module: nn.Module, spec: IOSpec, inputs: dict[str, np.ndarray], path: Path, opset: int) -> Traced:
    """Trace `module` (real or a placeholder) with its weights as graph inputs; nothing is written to `path` yet."""
    path.parent.mkdir(parents=True, exist_ok=True)
    torchscript_export(module, spec, inputs, path, opset, weights=False)
    model = onnx.load(str(path))
    path.unlink()  # written by Traced.write, with its initializers
    graph = model.graph
    names = set(named_weights(module))
    params = [i.name for i in graph.input if i.name in names]

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
    return Traced(model, path, derived, written, keep)


def export_streamed(module: nn.Module, spec: IOSpec, inputs: dict[str, np.ndarray], path: Path, opset: int) -> Path:
    """Trace `module` to `path` + `<path>.data` (returned), its own weights streamed one tensor at a time."""
    return trace_streamed(module, spec, inputs, path, opset).write(named_weights(module))
