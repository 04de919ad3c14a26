"""Big components export with their weights streamed (one copy in memory): the same graphs' outputs, one data file."""

from __future__ import annotations

from functools import partial
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from t2vrt.components import COMPONENTS
from t2vrt.config import preset
from t2vrt.export import onnx_io
from t2vrt.export.bundle import EngineIO, ExportOptions, export_bundle
from t2vrt.export.numerics import sample_inputs
from t2vrt.export.stream import named_weights, placeholder, trace_streamed
from t2vrt.manifest import load_manifest
from t2vrt.models.random_init import randomize_
from t2vrt.runtime.pipeline import Pipeline

SMALL = dict(num_frames=3, height=64, width=64, num_inference_steps=3, seed=1)


@pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::UserWarning")
def test_streamed_export_gives_the_same_video(
    tmp_path: Path, tiny_bundle: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(onnx_io, "EXTERNAL_DATA_THRESHOLD", 0)  # every component takes the full-size path
    out = export_bundle(ExportOptions(model="tiny", out=tmp_path / "streamed", precision="both"))
    m = load_manifest(out)
    for name, c in m.components.items():
        for p, f in c.files.items():
            assert f.data is not None and f.data.is_file(), (name, p)  # graph + ONE data file
            graph = onnx.load(str(f.path), load_external_data=False)
            inits = {i.name for i in graph.graph.initializer}
            assert inits and all(i.data_location == onnx.TensorProto.EXTERNAL for i in graph.graph.initializer)
            assert not {i.name for i in graph.graph.input} & inits  # weights are initializers, not inputs
            # the exporter's Transpose of Linear weights was folded while streaming: none left on a weight
            assert not any(n.op_type == "Transpose" and n.input[0] in inits for n in graph.graph.node), (name, p)
            assert f.parity["rel_l2"] < 1e-5 if p == "fp32" else True, (name, p, f.parity)  # fp32 round-off only
    with Pipeline.from_bundle(out, "onnxruntime-cpu") as a, Pipeline.from_bundle(tiny_bundle, "onnxruntime-cpu") as b:
        diff = np.abs(a("a fox", **SMALL).frames.astype(int) - b("a fox", **SMALL).frames.astype(int)).max()
    assert diff <= 1, diff


@pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::UserWarning")
@pytest.mark.parametrize(
    "dtype, materialise",
    [(torch.float32, False), (torch.float16, False), (torch.float16, True)],
    ids=["fp32", "fp16", "fp16-materialised"],
)
def test_a_placeholder_traces_the_same_graph_as_the_real_module(
    tmp_path: Path, dtype: torch.dtype, materialise: bool
) -> None:
    """The export traces big graphs from a placeholder (no weights behind it) before loading the real weights: the
    graph must be the one the real module gives, weight for weight (no two placeholders merged as equal)."""
    cfg = preset("tiny")
    for name, c in COMPONENTS.items():
        spec = c.io(cfg)
        trace = sample_inputs(spec, c.trace_dims, vocab_size=cfg.text_encoder.vocab_size)
        real = EngineIO(randomize_(c.build(cfg), seed=0).to(dtype).eval(), dtype)
        ghost = EngineIO(placeholder(partial(c.build, cfg), dtype, materialise), dtype)
        if not materialise:
            assert all(t.stride() == (0,) * t.ndim for t in ghost.parameters() if t.ndim)  # nothing behind it
        values = [float(t.flatten()[0]) for t in ghost.parameters()]
        assert len(set(values)) == len(values) and all(0.5 < abs(v) < 1e4 for v in values)  # distinct, normal
        a = trace_streamed(real, spec, trace, tmp_path / f"{name}-real.onnx", 17)
        b = trace_streamed(ghost, spec, trace, tmp_path / f"{name}-ghost.onnx", 17)
        assert [n.op_type for n in a.keep] == [n.op_type for n in b.keep], name
        assert a.written == b.written, name
        assert {a.derived[w][0] for w in a.written} == set(real.state_dict()) <= set(named_weights(real)), name
