"""Each CPU target's encoding on this host's own int8 kernels (ONNX Runtime's or OpenVINO's, the
target's runtime), as the target table claims.

The table says on which CPU classes the runtime's kernels run a target's artifacts as deployed
(``cpu_classes``) and on which they compute them wrongly (``saturates_on``). Both claims are
checked here on the kernels of the machine running the tests, with the worst case of a target's
weight encoding: the largest weight code times the largest activation code, summed over many
input channels. Claims about other CPU classes skip with the reason (an AVX2-only host cannot
check VNNI kernels, and the other way round).
"""

from __future__ import annotations

import numpy as np
import pytest

from edgecnn import cpu
from edgecnn.targets import CPU_BACKENDS, TARGETS

CHANNELS, OUT, SIDE = 64, 16, 8

pytestmark = pytest.mark.usefixtures("torch_one_thread")


def worst_case_conv(target) -> bytes:
    """A Q/DQ 1x1 conv in ``target``'s encoding: all weights at +127, activations at the top code."""
    from onnx import TensorProto, helper, numpy_helper

    act = np.uint8 if target.activation_dtype == "uint8" else np.int8
    unsigned_weights = target.weight_dtype == "uint8" and 127 > target.signed_weights_max
    weights = np.full((OUT, CHANNELS, 1, 1), 127, np.int16) + (128 if unsigned_weights else 0)
    weight_dtype = np.uint8 if unsigned_weights else np.int8
    zero_in = target.activation_encoding(True)[1]
    out_scale = CHANNELS * 255 * 127 / 200.0  # the exact result lands well inside the output range
    inits = [
        numpy_helper.from_array(np.array(1.0, np.float32), "in_scale"),
        numpy_helper.from_array(np.array(zero_in, act), "in_zero"),
        numpy_helper.from_array(weights.astype(weight_dtype), "w"),
        numpy_helper.from_array(np.ones(OUT, np.float32), "w_scale"),
        numpy_helper.from_array(np.full(OUT, 128 if unsigned_weights else 0, weight_dtype), "w_zero"),
        numpy_helper.from_array(np.array(out_scale, np.float32), "out_scale"),
        numpy_helper.from_array(np.array(zero_in, act), "out_zero"),
    ]
    nodes = [
        helper.make_node("QuantizeLinear", ["x", "in_scale", "in_zero"], ["xq"]),
        helper.make_node("DequantizeLinear", ["xq", "in_scale", "in_zero"], ["xd"]),
        helper.make_node("DequantizeLinear", ["w", "w_scale", "w_zero"], ["wd"], axis=0),
        helper.make_node("Conv", ["xd", "wd"], ["c"]),
        helper.make_node("QuantizeLinear", ["c", "out_scale", "out_zero"], ["cq"]),
        helper.make_node("DequantizeLinear", ["cq", "out_scale", "out_zero"], ["y"]),
    ]
    graph = helper.make_graph(nodes, "worst_case", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, CHANNELS, SIDE, SIDE])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, OUT, SIDE, SIDE])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString()


def run(model: bytes, optimized: bool, top_code: float, backend: str = "ort", tmp_path=None) -> np.ndarray:
    """The worst case through ``backend``'s kernels (``optimized``) or ONNX Runtime's reference semantics."""
    x = np.full((1, CHANNELS, SIDE, SIDE), top_code, np.float32)
    if optimized and backend == "openvino":
        from edgecnn.backends.openvino import OvRunner

        path = tmp_path / "worst_case.onnx"
        path.write_bytes(model)
        return OvRunner(path, threads=1).run(x)
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    if not optimized:
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])
    return session.run(None, {"x": x})[0]


@pytest.mark.parametrize("name", [n for n, t in TARGETS.items() if t.backend in CPU_BACKENDS])
def test_worst_case_weights_on_this_hosts_kernels_match_the_table(name, tmp_path):
    target, host = TARGETS[name], cpu.host_class()
    if not target.runs_on(host) and host not in target.saturates_on:
        pytest.skip(f"{name} makes no claim about CPU class {host} (it is for {', '.join(target.cpu_classes)})")
    if target.backend == "openvino":
        pytest.importorskip("openvino", reason="the OpenVINO targets' kernels need openvino (pip install 'edgecnn[openvino]')")
    top_code = float(target.qmax - target.activation_encoding(True)[1])
    model = worst_case_conv(target)
    reference, kernels = run(model, False, top_code), run(model, True, top_code, target.backend, tmp_path)
    if target.runs_on(host):
        np.testing.assert_allclose(kernels, reference, rtol=0.02)  # int32 accumulation: exact up to one output step
    else:
        assert np.all(kernels < 0.75 * reference), f"{name} was expected to saturate on {host}"


def test_a_vnni_artifact_agrees_with_reference_semantics_on_vnni_kernels(tmp_path):
    """Full 8-bit s8 weights of a real export on VNNI kernels: the reference Q/DQ semantics' answers."""
    if cpu.host_class() != "x86-vnni":
        pytest.skip(f"needs an x86-vnni CPU (AVX-512 VNNI or AVX-VNNI); this one is {cpu.host_class()}")
    import torch
    import torch.nn as nn
    from test_qdq_export import SHAPE, SmallNet, calib

    from edgecnn.export.parity import compare_outputs
    from edgecnn.export.qdq import export_qdq
    from edgecnn.passes.quantize import QuantConfig, quantize_model

    torch.manual_seed(0)
    net = SmallNet().eval()
    for m in net.modules():  # large weights: every dense tensor uses the full -127..127 range
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            nn.init.normal_(m.weight, std=0.3)
    model, _ = quantize_model(net, QuantConfig(bits=8, target="ort-x86-vnni"), calib(), progress=False)
    path = export_qdq(model, tmp_path / "vnni.onnx", "ort-x86-vnni", input_shape=SHAPE, parity=False)
    images = np.concatenate([c.numpy() for c in calib(n=16, seed=5)])
    reference, kernels = run_file(path, False, images), run_file(path, True, images)
    report = compare_outputs(reference, kernels, atol=None, rtol=None, min_agreement=0.999)
    assert report.passed, report


def run_file(path, optimized: bool, images: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    options = ort.SessionOptions()
    if not optimized:
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    return np.concatenate([session.run(None, {name: images[i:i + 1]})[0] for i in range(len(images))])
