"""Activation memory of an ONNX graph at concrete shapes: tensor liveness over the graph's topological order.

Every intermediate tensor lives from the node that produces it to the last node that reads it; the estimate is the
largest total of simultaneously live intermediates (an op's inputs and outputs count together). Not counted:
weights (initializers, Constant nodes and anything computed only from them, which TensorRT folds at build time),
graph inputs and outputs (the runtime's I/O buffers, outside TensorRT's device memory), and, with
`fused_attention`, the score tensors of MatMul -> [Mul/Div/Add/Cast]* -> Softmax -> [Cast]* -> MatMul chains, which
TensorRT fuses into one attention kernel that never materialises them.

It overestimates where TensorRT fuses pointwise ops into their producer, and ignores tactic scratch (bounded by
the workspace limit, planned separately); the planner multiplies it by a stated margin.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import onnx
from onnx import TensorProto, helper, shape_inference

_SCORE_CHAIN = {"Mul", "Div", "Add", "Cast", "Where", "Sub"}


@dataclass(frozen=True)
class Liveness:
    peak_bytes: int  # largest total of simultaneously live intermediates
    peak_node: str  # the node where that peak occurs (name or op type + index)
    tensors: int  # intermediates counted
    unknown: tuple[str, ...]  # intermediates whose shape inference left unresolved (counted as 0)


def load_graph(path: str | Path) -> onnx.ModelProto:
    """The graph without its external weights (liveness needs shapes only; a 5 GB data file stays on disk)."""
    return onnx.load(str(path), load_external_data=False)


def _with_input_shapes(model: onnx.ModelProto, shapes: Mapping[str, tuple[int, ...]]) -> onnx.ModelProto:
    m = onnx.ModelProto()
    m.CopyFrom(model)
    inits = {t.name for t in m.graph.initializer}
    for inp in m.graph.input:
        if inp.name in inits:
            continue
        if inp.name not in shapes:
            raise KeyError(f"no shape given for graph input {inp.name!r}")
        dims = inp.type.tensor_type.shape.dim
        want = shapes[inp.name]
        if len(dims) != len(want):
            raise ValueError(f"input {inp.name!r} has rank {len(dims)}, shape given {want}")
        for d, n in zip(dims, want):
            d.Clear()
            d.dim_value = int(n)
    del m.graph.value_info[:]
    for out in m.graph.output:  # outputs' symbolic dims would otherwise clash with the concrete ones inferred
        for d in out.type.tensor_type.shape.dim:
            d.Clear()
    try:  # onnxruntime's symbolic inference resolves Slice/Reshape with computed bounds (GEGLU halves) that onnx's misses
        from onnxruntime.tools.symbolic_shape_infer import SymbolicShapeInference

        inferred: onnx.ModelProto = SymbolicShapeInference.infer_shapes(m, auto_merge=True)
        return inferred
    except Exception:
        return shape_inference.infer_shapes(m, data_prop=True)


def _nbytes(vi: onnx.ValueInfoProto) -> int | None:
    tt = vi.type.tensor_type
    if not tt.HasField("shape"):
        return None
    n = 1
    for d in tt.shape.dim:
        if not d.HasField("dim_value"):
            return None
        n *= d.dim_value
    if tt.elem_type == TensorProto.UNDEFINED:
        return None
    return n * helper.tensor_dtype_to_np_dtype(tt.elem_type).itemsize


def _attention_scores(
    nodes: list[onnx.NodeProto], producer: dict[str, int], consumers: dict[str, list[int]]
) -> set[str]:
    """Tensors inside MatMul -> chain -> Softmax -> chain -> MatMul: what a fused attention kernel never writes."""
    hidden: set[str] = set()
    for node in nodes:
        if node.op_type != "Softmax":
            continue
        back: list[str] = []
        t = node.input[0]
        while t in producer and nodes[producer[t]].op_type in _SCORE_CHAIN and len(back) < 4:
            back.append(t)
            t = nodes[producer[t]].input[0]
        if t not in producer or nodes[producer[t]].op_type != "MatMul":
            continue
        back.append(t)
        fwd: list[str] = []
        t = node.output[0]
        while len(consumers.get(t, [])) == 1 and nodes[consumers[t][0]].op_type == "Cast":
            fwd.append(t)
            t = nodes[consumers[t][0]].output[0]
        if not consumers.get(t) or any(nodes[i].op_type != "MatMul" for i in consumers[t]):
            continue
        hidden.update(back + fwd + [t, node.input[0]])
    return hidden


def liveness(
    model: onnx.ModelProto, input_shapes: Mapping[str, tuple[int, ...]], fused_attention: bool = True
) -> Liveness:
    """Peak live intermediate bytes of `model` run at `input_shapes` (see the module docstring for what counts)."""
    m = _with_input_shapes(model, input_shapes)
    g = m.graph
    nodes = list(g.node)
    info = {vi.name: vi for vi in list(g.value_info) + list(g.output)}
    constant = {t.name for t in g.initializer}
    io = {vi.name for vi in g.input} | {vi.name for vi in g.output}
    producer: dict[str, int] = {}
    consumers: dict[str, list[int]] = {}
    for i, node in enumerate(nodes):
        for t in node.input:
            if t:
                consumers.setdefault(t, []).append(i)
        for t in node.output:
            if t:
                producer[t] = i
        if node.op_type == "Constant" or all((not t) or t in constant for t in node.input):
            constant.update(t for t in node.output if t)
    hidden = _attention_scores(nodes, producer, consumers) if fused_attention else set()

    delta = [0] * (len(nodes) + 1)
    unknown: list[str] = []
    counted = 0
    for t, born in producer.items():
        if t in constant or t in io or t in hidden:
            continue
        size = _nbytes(info[t]) if t in info else None
        if size is None:
            unknown.append(t)
            continue
        last = max(consumers.get(t, [born]))
        delta[born] += size
        delta[last + 1] -= size
        counted += 1
    live, peak, at = 0, 0, 0
    for i in range(len(nodes)):
        live += delta[i]
        if live > peak:
            peak, at = live, i
    where = (nodes[at].name or f"{nodes[at].op_type}#{at}") if nodes else ""
    return Liveness(peak, where, counted, tuple(unknown))
