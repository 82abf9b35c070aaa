"""Q/DQ export: int8-sized files, per-target encodings, parity with the PyTorch model."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from onnx import numpy_helper

from edgecnn.errors import UserError
from edgecnn.export.qdq import export_qdq, export_qdq_report
from edgecnn.models.layers import SamePadConv2d
from edgecnn.passes.quantize import QuantConfig, quantize_model

SHAPE = (1, 3, 32, 32)


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


class SmallNet(nn.Module):
    """~60k parameters: TF-SAME strided conv (Pad), residual, concat, depthwise, linear."""

    def __init__(self):
        super().__init__()
        self.stem = SamePadConv2d(3, 32, 3, stride=2)
        self.body = nn.Conv2d(32, 32, 3, padding=1)
        self.left = nn.Conv2d(32, 32, 1)
        self.right = nn.Conv2d(32, 32, 3, padding=1, groups=32)
        self.head = nn.Conv2d(64, 64, 3, padding=1)
        self.fc = nn.Linear(64, 100)

    def forward(self, x):
        x = F.relu(self.stem(x))
        x = x + self.body(x)
        x = torch.cat([F.relu(self.left(x)), F.relu(self.right(x))], 1)
        x = F.relu(self.head(x))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


def calib(n=2, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(4, *SHAPE[1:], generator=gen) for _ in range(n)]


@pytest.fixture(scope="module")
def quantized():
    torch.manual_seed(0)
    model = SmallNet().eval()
    for m in model.modules():  # outputs large enough that top-1 is not a tie
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            nn.init.normal_(m.weight, std=0.3)
    params = sum(p.numel() for p in model.parameters())
    q6, _ = quantize_model(SmallNet().eval().load_state_dict(model.state_dict()) and model, QuantConfig(bits=6), calib(), progress=False)
    return q6, params


def _zero_points(model_proto) -> list[np.ndarray]:
    consts = {i.name: numpy_helper.to_array(i) for i in model_proto.graph.initializer}
    for node in model_proto.graph.node:
        if node.op_type == "Constant":
            consts[node.output[0]] = numpy_helper.to_array(node.attribute[0].t)
    return [consts[n.input[2]] for n in model_proto.graph.node if n.op_type == "QuantizeLinear"]


def _weight_initializers(model_proto) -> list[np.ndarray]:
    inits = {i.name: i for i in model_proto.graph.initializer}
    return [
        numpy_helper.to_array(inits[n.input[0]])
        for n in model_proto.graph.node
        if n.op_type == "DequantizeLinear" and n.input[0] in inits
    ]


def test_trt_export_is_int8_sized_symmetric_and_on_the_6_bit_grid(quantized, tmp_path):
    model, params = quantized
    result = export_qdq_report(model, tmp_path / "net_trt.onnx", "trt", input_shape=SHAPE, parity_inputs=calib(seed=9)[0])
    # int8 weights + float biases/scales: about one byte per parameter, far from 4.
    assert result.size_bytes < 1.5 * params
    proto = onnx.load(str(result.path))
    weights = _weight_initializers(proto)
    assert weights and all(w.dtype == np.int8 and np.abs(w).max() <= 31 for w in weights)
    assert not any(n.op_type == "QuantizeLinear" and n.input[0] in {i.name for i in proto.graph.initializer} for n in proto.graph.node)
    zps = _zero_points(proto)
    assert zps and all(z.dtype == np.int8 and not z.any() for z in zps)
    assert result.violations == [] and result.parity.passed
    meta = {p.key: p.value for p in proto.metadata_props}
    assert meta["edgecnn.quant_target"] == "trt" and meta["edgecnn.precision"] == "w6a8"


def test_ort_x86_export_uses_uint8_and_agrees_with_pytorch(quantized, tmp_path):
    model, _ = quantized
    result = export_qdq_report(model, tmp_path / "net_x86.onnx", "ort-x86", input_shape=SHAPE, parity_inputs=calib(seed=9)[0])
    proto = onnx.load(str(result.path))
    zps = _zero_points(proto)
    assert zps and all(z.dtype == np.uint8 for z in zps)
    assert any(int(z) == 0 for z in zps) and any(int(z) == 128 for z in zps)  # ReLU outputs one-sided, input signed
    weights = _weight_initializers(proto)
    assert weights and all(w.dtype == np.uint8 and 128 - 31 <= w.min() and w.max() <= 128 + 31 for w in weights)
    assert result.parity.top1_agreement >= 0.75 and result.parity.max_rel_error < 0.2


def test_ort_arm_export_is_signed_with_one_sided_zero_points(quantized, tmp_path):
    model, _ = quantized
    proto = onnx.load(str(export_qdq(model, tmp_path / "net_arm.onnx", "ort-arm", input_shape=SHAPE)))
    zps = _zero_points(proto)
    assert all(z.dtype == np.int8 for z in zps) and {int(z) for z in zps} <= {0, -128}


def test_shared_residual_quantizer_exports_once(quantized, tmp_path):
    model, _ = quantized
    proto = onnx.load(str(export_qdq(model, tmp_path / "net.onnx", "trt", input_shape=SHAPE)))
    quantized_inputs = [n.input[0] for n in proto.graph.node if n.op_type == "QuantizeLinear"]
    assert len(quantized_inputs) == len(set(quantized_inputs))


def test_export_refuses_float_models_and_bad_paths(tmp_path):
    with pytest.raises(UserError, match="quantize pass"):
        export_qdq(SmallNet().eval(), tmp_path / "x.onnx", "trt", input_shape=SHAPE)
    with pytest.raises(UserError, match="unknown quantization target"):
        export_qdq(SmallNet().eval(), tmp_path / "x.onnx", "tflite", input_shape=SHAPE)
    existing = tmp_path / "exists.onnx"
    existing.write_bytes(b"keep")
    with pytest.raises(UserError, match="--force"):
        export_qdq(SmallNet().eval(), existing, "trt", input_shape=SHAPE, overwrite=False)
    assert existing.read_bytes() == b"keep"
