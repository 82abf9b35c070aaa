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


pytestmark = pytest.mark.usefixtures("torch_one_thread")


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
    q6, _ = quantize_model(SmallNet().eval().load_state_dict(model.state_dict()) and model, QuantConfig(bits=6, depthwise_bits=6), calib(), progress=False)
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
        if n.op_type == "DequantizeLinear" and n.input[0] in inits and inits[n.input[0]].data_type != onnx.TensorProto.INT32
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
    # 6-bit weights (|q| <= 31) cannot saturate VPMADDUBSW's int16 pair sums: stored s8 (U8S8).
    weights = _weight_initializers(proto)
    assert weights and all(w.dtype == np.int8 and np.abs(w).max() <= 31 for w in weights)
    assert result.parity.top1_agreement >= 0.75 and result.parity.max_rel_error < 0.2


def test_ort_x86_stores_full_8_bit_weights_unsigned(tmp_path):
    torch.manual_seed(0)
    model, _ = quantize_model(SmallNet().eval(), QuantConfig(bits=8), calib(), progress=False)
    proto = onnx.load(str(export_qdq(model, tmp_path / "net8.onnx", "ort-x86", input_shape=SHAPE, parity=False)))
    weights = _weight_initializers(proto)
    dense = [w for w in weights if w.ndim == 2 or (w.ndim == 4 and w.shape[1] > 1)]
    depthwise = [w for w in weights if w.ndim == 4 and w.shape[1] == 1]
    assert dense and all(w.dtype == np.uint8 for w in dense)
    assert any(int(np.abs(w.astype(np.int16) - 128).max()) > 64 for w in dense)
    assert depthwise and all(w.dtype == np.int8 for w in depthwise)  # int32 depthwise kernel: no saturation


def test_ort_x86_graph_fuses_every_conv_and_trt_keeps_its_placement(quantized, tmp_path):
    """ORT's optimizer turns every conv into QLinearConv (Add inputs and pool input quantized,
    TF-SAME Pad folded into the conv, shape arithmetic folded); trt keeps TensorRT's rules."""
    import onnxruntime as ort

    model, _ = quantized
    path = export_qdq(model, tmp_path / "net_x86.onnx", "ort-x86", input_shape=SHAPE, parity=False)
    proto = onnx.load(str(path))
    ops = [n.op_type for n in proto.graph.node]
    assert "Pad" not in ops and not {"ConstantOfShape", "Identity", "Constant", "Slice"} & set(ops)
    stem = next(n for n in proto.graph.node if n.op_type == "Conv")
    assert [a.ints for a in stem.attribute if a.name == "pads"][0] == [0, 0, 1, 1]  # TF SAME, stride 2, even size
    producers = {o: n.op_type for n in proto.graph.node for o in n.output}
    add = next(n for n in proto.graph.node if n.op_type == "Add")
    assert [producers[i] for i in add.input] == ["DequantizeLinear", "DequantizeLinear"]
    options = ort.SessionOptions()
    options.optimized_model_filepath = str(tmp_path / "opt.onnx")
    ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    fused = [n.op_type for n in onnx.load(options.optimized_model_filepath).graph.node]
    assert fused.count("QLinearConv") == 5 and "Conv" not in fused and "FusedConv" not in fused
    assert "QLinearAdd" in fused and "QLinearGlobalAveragePool" in fused
    assert "QGemm" in fused and "Gemm" not in fused  # int32 bias: the classifier runs in int8 too

    trt = export_qdq_report(model, tmp_path / "net_trt.onnx", "trt", input_shape=SHAPE, parity=False)
    trt_proto = onnx.load(str(trt.path))
    trt_producers = {o: n.op_type for n in trt_proto.graph.node for o in n.output}
    trt_add = next(n for n in trt_proto.graph.node if n.op_type == "Add")
    assert sorted(trt_producers[i] for i in trt_add.input) == ["Conv", "DequantizeLinear"]
    assert trt.violations == [] and "Pad" not in {n.op_type for n in trt_proto.graph.node}


@pytest.mark.slow
def test_gemm_bias_is_int32_on_the_product_grid(quantized, tmp_path):
    """The classifier bias is stored as int32 with scale = input scale x weight scale (per
    output), and dequantizes to within half a step of the float bias; trt keeps it float."""
    model, _ = quantized
    proto = onnx.load(str(export_qdq(model, tmp_path / "x86.onnx", "ort-x86", input_shape=SHAPE, parity=False)))
    inits = {i.name: numpy_helper.to_array(i) for i in proto.graph.initializer}
    producers = {o: n for n in proto.graph.node for o in n.output}
    gemm = next(n for n in proto.graph.node if n.op_type == "Gemm")
    dq_bias = producers[gemm.input[2]]
    assert dq_bias.op_type == "DequantizeLinear" and inits[dq_bias.input[0]].dtype == np.int32
    scale_a = inits[producers[gemm.input[0]].input[1]]
    scale_b = inits[producers[gemm.input[1]].input[1]]
    np.testing.assert_allclose(inits[dq_bias.input[1]], scale_a * scale_b, rtol=1e-6)
    bias = model.fc.bias.detach().numpy()
    assert np.all(np.abs(inits[dq_bias.input[0]] * inits[dq_bias.input[1]] - bias) <= inits[dq_bias.input[1]] / 2 + 1e-9)
    trt = onnx.load(str(export_qdq(model, tmp_path / "trt.onnx", "trt", input_shape=SHAPE, parity=False)))
    trt_gemm = next(n for n in trt.graph.node if n.op_type == "Gemm")
    assert trt_gemm.input[2] in {i.name for i in trt.graph.initializer}


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
