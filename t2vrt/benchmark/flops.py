"""What the hardware could do and what a graph asks of it: measured fp32 GEMM peak, and the FLOPs of an ONNX graph.

The FLOP count walks the graph after shape inference at concrete input shapes and counts the ops that carry the
arithmetic (MatMul, Gemm, Conv, ConvTranspose: 2 FLOPs per multiply-add); pointwise ops, norms and softmax are left
out, as a GEMM peak is the limit they are compared with. Weights are never loaded (a 5.6 GB data file stays on disk).
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np


@dataclass(frozen=True)
class GraphFlops:
    total: int  # FLOPs of the counted ops
    by_op: dict[str, int]  # op type -> FLOPs
    uncounted: tuple[str, ...]  # counted-type nodes whose shapes inference left unknown (their FLOPs are missing)


def _shape(info) -> tuple[int, ...] | None:  # onnx.ValueInfoProto -> concrete shape, None if any dim is unknown
    dims = info.type.tensor_type.shape.dim
    if not info.type.tensor_type.HasField("shape") or any(not d.HasField("dim_value") for d in dims):
        return None
    return tuple(int(d.dim_value) for d in dims)


def _symbolic(model):  # -> onnx.ModelProto | None
    """ONNX Runtime's symbolic shape inference: it follows computed Split sizes and Reshape targets that onnx's
    own inference gives up on (GEGLU's chunk, the frame folding). None when it is unavailable or fails."""
    import onnx
    from onnx import helper

    m = onnx.ModelProto()
    m.CopyFrom(model)
    # Weights stored outside the graph become plain inputs of their shape: it would otherwise read their data.
    external = [t for t in m.graph.initializer if t.data_location == onnx.TensorProto.EXTERNAL]
    for t in external:
        m.graph.input.append(helper.make_tensor_value_info(t.name, t.data_type, list(t.dims)))
    keep = [t for t in m.graph.initializer if t.data_location != onnx.TensorProto.EXTERNAL]
    del m.graph.initializer[:]
    m.graph.initializer.extend(keep)
    try:
        from onnxruntime.tools.symbolic_shape_infer import SymbolicShapeInference

        return SymbolicShapeInference.infer_shapes(m, auto_merge=True)
    except Exception:  # an optional helper (needs sympy); onnx's inference still runs
        return None


def onnx_flops(path: str | Path, input_shapes: Mapping[str, tuple[int, ...]]) -> GraphFlops:
    """FLOPs of one run of the ONNX graph at `path` with the given input shapes."""
    import onnx
    from onnx import shape_inference

    model = onnx.load(str(path), load_external_data=False)
    inits = {t.name: tuple(int(d) for d in t.dims) for t in model.graph.initializer}
    for inp in model.graph.input:
        if inp.name in inits:
            continue
        if inp.name not in input_shapes:
            raise KeyError(f"no shape given for graph input {inp.name!r}")
        for d, n in zip(inp.type.tensor_type.shape.dim, input_shapes[inp.name]):
            d.Clear()
            d.dim_value = int(n)
    del model.graph.value_info[:]
    for out in model.graph.output:
        for d in out.type.tensor_type.shape.dim:
            d.Clear()
    shapes: dict[str, tuple[int, ...] | None] = dict(inits)
    for inferred in (_symbolic(model), shape_inference.infer_shapes(model, data_prop=True)):
        if inferred is None:
            continue
        g = inferred.graph
        for vi in list(g.value_info) + list(g.input) + list(g.output):
            if shapes.get(vi.name) is None:
                shapes[vi.name] = _shape(vi)

    by_op: dict[str, int] = {}
    unknown: list[str] = []
    for i, node in enumerate(model.graph.node):
        if node.op_type not in ("MatMul", "Gemm", "Conv", "ConvTranspose"):
            continue
        a = shapes.get(node.input[0])
        b = shapes.get(node.input[1])
        y = shapes.get(node.output[0])
        if a is None or b is None or y is None:
            unknown.append(node.name or f"{node.op_type}#{i}")
            continue
        if node.op_type in ("MatMul", "Gemm"):
            k = a[-1]
            if node.op_type == "Gemm" and any(at.name == "transA" and at.i for at in node.attribute):
                k = a[0]
            flops = 2 * math.prod(y) * k  # every output element is a length-k dot product
        elif node.op_type == "Conv":
            flops = 2 * math.prod(y) * math.prod(b[1:])  # weight (c_out, c_in/groups, *kernel)
        else:  # ConvTranspose: every input element scatters into c_out/groups * kernel outputs
            flops = 2 * math.prod(a) * math.prod(b[1:])
        by_op[node.op_type] = by_op.get(node.op_type, 0) + int(flops)
    return GraphFlops(sum(by_op.values()), by_op, tuple(unknown))


def _ort_matmul(n: int, threads: int | None):  # -> a zero-argument callable running one n x n x n MatMul
    """ONNX Runtime's own GEMM (MLAS), the kernel its MatMul and Conv nodes use: a one-node graph, weights constant."""
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(1)
    w = numpy_helper.from_array(rng.standard_normal((n, n), dtype=np.float32), "w")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["a", "w"], ["c"])],
        "gemm",
        [helper.make_tensor_value_info("a", TensorProto.FLOAT, [n, n])],
        [helper.make_tensor_value_info("c", TensorProto.FLOAT, [n, n])],
        initializer=[w],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    opts = ort.SessionOptions()
    if threads:
        opts.intra_op_num_threads = threads
    sess = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    a = rng.standard_normal((n, n), dtype=np.float32)
    return lambda: sess.run(None, {"a": a})


def gemm_peak_gflops(n: int = 2048, seconds: float = 3.0, threads: int | None = None) -> dict[str, float]:
    """The machine's fp32 GEMM rate in GFLOP/s: the best of repeated n x n x n products by numpy's BLAS, ONNX
    Runtime's MLAS and torch's BLAS (each when importable), each measured for about `seconds`. Best, not mean: a
    peak is what the hardware can reach, and a shared machine only ever makes a measurement low."""
    out: dict[str, float] = {}
    rng = np.random.default_rng(0)
    a = rng.standard_normal((n, n), dtype=np.float32)
    b = rng.standard_normal((n, n), dtype=np.float32)
    flop = 2.0 * n**3

    def best(fn) -> float:
        fn()  # warm-up: thread pool start, page faults
        rates, t_end = [], time.perf_counter() + seconds
        while time.perf_counter() < t_end or len(rates) < 3:
            t0 = time.perf_counter()
            fn()
            rates.append(flop / (time.perf_counter() - t0) / 1e9)
        return max(rates)

    out["numpy"] = best(lambda: a @ b)
    try:
        out["onnxruntime"] = best(_ort_matmul(n, threads))
    except ImportError:
        pass
    try:
        import torch
    except ImportError:
        return out
    prev = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        ta, tb = torch.from_numpy(a), torch.from_numpy(b)
        out["torch"] = best(lambda: ta @ tb)
    finally:
        torch.set_num_threads(prev)
    return out
