"""The ported Dynamic World network exports to ONNX and predicts there what it predicts in torch.

Its antialiased halving (architectures.dynamicworld._halve) builds a depthwise kernel from the
input's channel count, which ONNX cannot take as a convolution's shape; the export path
convolves each plane with one constant kernel instead. The shipped weights, the real graph.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

ort = pytest.importorskip("onnxruntime")
pytest.importorskip("onnx")

from geoseg.models.defaults import WEIGHTS_DIR  # noqa: E402
from geoseg.models.onnx import export_onnx  # noqa: E402
from geoseg.models.registry import load_network  # noqa: E402

DW = WEIGHTS_DIR / "dynamicworld-s2l1c.safetensors"


@pytest.mark.parametrize("size", [(64, 64), (96, 160)])
def test_dynamic_world_exports_and_onnxruntime_agrees_with_torch(
    tmp_path_factory: pytest.TempPathFactory, size: tuple[int, int]
) -> None:
    out = tmp_path_factory.getbasetemp() / "dw.onnx"
    if not out.exists():
        export_onnx(DW, out)
    _, net = load_network(DW)
    rng = np.random.default_rng(0)
    x = rng.normal(0.0, 1.0, (2, 9, *size)).astype(np.float32)
    with torch.no_grad():
        expected = torch.softmax(net.eval()(torch.from_numpy(x)).float(), dim=1).numpy()
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    (got,) = session.run(None, {session.get_inputs()[0].name: x})
    assert got.shape == expected.shape == (2, 9, *size)
    np.testing.assert_allclose(got, expected, atol=1e-4, rtol=0)
    assert (got.argmax(1) == expected.argmax(1)).mean() > 0.999
