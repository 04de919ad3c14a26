"""Big components export with their weights streamed (one copy in memory): the same graphs' outputs, one data file."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest

from t2vrt.export import onnx_io
from t2vrt.export.bundle import ExportOptions, export_bundle
from t2vrt.manifest import load_manifest
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
            assert f.parity["rel_l2"] < 1e-6 if p == "fp32" else True
    with Pipeline.from_bundle(out, "onnxruntime-cpu") as a, Pipeline.from_bundle(tiny_bundle, "onnxruntime-cpu") as b:
        diff = np.abs(a("a fox", **SMALL).frames.astype(int) - b("a fox", **SMALL).frames.astype(int)).max()
    assert diff <= 1, diff
