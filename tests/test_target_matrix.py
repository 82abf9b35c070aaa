"""Every registered target at every weight bit-width: quantize -> Q/DQ export -> parity on this CPU.

Parametrized over the target table and the quantizer's bit widths, so a new target or width is
tested by being registered. Each export is checked against what its table entry says: activation
integer type, how weights are stored (s8, or u8 with zero-point 128 above ``signed_weights_max``),
the weight grid of the bit width, the metadata, TensorRT's placement rules where linted, and
parity with the PyTorch model in the semantics this CPU can measure it in.
"""

from __future__ import annotations

import typing

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from edgecnn.passes.quantize import QuantConfig, WeightBits, quantize_model
from edgecnn.targets import TARGETS

BITS = typing.get_args(WeightBits)

pytestmark = pytest.mark.usefixtures("torch_one_thread")


@pytest.fixture(scope="module")
def models():
    """{bits: SmallNet quantized at that width}; the encoding is set per target at export."""
    import torch
    import torch.nn as nn
    from test_qdq_export import SmallNet, calib

    out = {}
    for bits in BITS:
        torch.manual_seed(0)
        net = SmallNet().eval()
        for m in net.modules():  # outputs large enough that top-1 is not a tie
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.normal_(m.weight, std=0.3)
        out[bits] = quantize_model(net, QuantConfig(bits=bits), calib(), progress=False)[0]
    return out


def _weights(proto) -> list[tuple[np.ndarray, np.ndarray]]:
    """(stored codes, zero-points) of every weight DequantizeLinear."""
    inits = {i.name: i for i in proto.graph.initializer}
    found = []
    for node in proto.graph.node:
        if node.op_type == "DequantizeLinear" and node.input[0] in inits and inits[node.input[0]].data_type != onnx.TensorProto.INT32:
            codes = numpy_helper.to_array(inits[node.input[0]])
            if codes.ndim in (2, 4):
                found.append((codes, numpy_helper.to_array(inits[node.input[2]])))
    return found


@pytest.mark.parametrize("bits", BITS)
@pytest.mark.parametrize("name", list(TARGETS))
def test_every_target_exports_every_width_as_its_table_entry_says(models, name, bits, tmp_path):
    from test_qdq_export import SHAPE, calib

    from edgecnn.export.qdq import export_qdq_report
    from edgecnn.passes.quant.quantizers import weight_qmax

    target = TARGETS[name]
    result = export_qdq_report(models[bits], tmp_path / f"{name}-w{bits}.onnx", name, input_shape=SHAPE,
                               parity_inputs=calib(seed=9)[0])
    assert result.parity is not None and result.parity.passed
    assert result.violations == []
    proto = onnx.load(str(result.path))
    meta = {p.key: p.value for p in proto.metadata_props}
    assert meta["edgecnn.quant_target"] == name and meta["edgecnn.activation_dtype"] == target.activation_dtype

    activation_type = np.uint8 if target.activation_dtype == "uint8" else np.int8
    quantize_zero_points = [n.input[2] for n in proto.graph.node if n.op_type == "QuantizeLinear"]
    inits = {i.name: numpy_helper.to_array(i) for i in proto.graph.initializer}
    assert quantize_zero_points and all(inits[z].dtype == activation_type for z in quantize_zero_points if z in inits)

    weights = _weights(proto)
    assert weights
    for codes, zero in weights:
        depthwise = codes.ndim == 4 and codes.shape[1] == 1
        q = codes.astype(np.int16) - zero.astype(np.int16).reshape((-1,) + (1,) * (codes.ndim - 1))
        width = 8 if depthwise and bits < 8 else bits  # depthwise convs stay 8-bit below 8 bits
        assert int(np.abs(q).max()) <= weight_qmax(width)
        if codes.dtype == np.uint8:  # the U8U8 fallback: only where the table asks for it
            assert target.weight_dtype == "uint8" and not depthwise and int(np.abs(q).max()) > target.signed_weights_max
            assert np.all(zero == 128)
        else:
            assert codes.dtype == np.int8 and np.all(zero == 0)
            if target.weight_dtype == "uint8" and not depthwise:
                assert int(np.abs(q).max()) <= target.signed_weights_max


@pytest.mark.parametrize("name", list(TARGETS))
def test_ship_reads_each_targets_runtime_form_from_the_table(name, tmp_path):
    """ONNX Runtime targets ship an ORT-format file converted for the table's platform; others
    ship the engine build line. The bundle README names the table's runtime title."""
    from edgecnn.ship import readme, runtime

    target = TARGETS[name]
    if target.backend == "ort":
        args = runtime.converter_command(tmp_path / "model.onnx", tmp_path, name)
        platform = args[args.index("--target_platform") + 1] if "--target_platform" in args else None
        assert platform == target.ort_format_platform
    assert readme._runtime_title(name) == target.runtime_title
    assert readme._runtime_title("unknown-target") == "unknown-target"


@pytest.mark.parametrize("host", ["x86-avx2", "x86-vnni", "arm64-dot"])
@pytest.mark.parametrize("bits", [8, 6])
@pytest.mark.parametrize("name", list(TARGETS))
def test_compress_says_when_this_cpu_has_a_faster_target_for_the_file(models, name, bits, host, tmp_path):
    """Full 8-bit ort-x86 (and ov-x86) weights are stored U8U8 (exact everywhere), which a VNNI CPU
    runs on slower kernels than its own target's s8 form: the run says so; nowhere else, and not
    for 6-bit files (already s8)."""
    from test_qdq_export import SHAPE

    from edgecnn.export.qdq import export_qdq_report
    from edgecnn.pipeline.stages.export import host_target_note

    path = export_qdq_report(models[bits], tmp_path / f"{name}-w{bits}.onnx", name, input_shape=SHAPE, parity=False).path
    note = host_target_note(path, name, host)
    family = TARGETS[name].family
    if bits == 8 and host == "x86-vnni" and name in ("ort-x86", "ov-x86"):  # u8 weights where the family has s8 ones
        assert note and f"--target {family}" in note and f"{name}-vnni" in note
    else:
        assert note is None
