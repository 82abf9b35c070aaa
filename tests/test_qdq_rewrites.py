"""The Q/DQ graph rewrites on hand-built ONNX graphs, without torch: each keeps what the graph
computes (checked with ONNX's reference evaluator) and changes its form as promised."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper
from onnx.reference import ReferenceEvaluator

from edgecnn.export.qdq_rewrites import fold_weight_quantizers, merge_duplicate_qdq, quantize_max_pool_inputs


def _model(nodes, inputs, outputs, initializers):
    graph = helper.make_graph(nodes, "g", inputs, outputs, initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 19)])  # the reference evaluator has Q/DQ from 19
    onnx.checker.check_model(model)
    return model


def _run(model, feeds):
    return ReferenceEvaluator(model).run(None, feeds)


def _weight_qdq_gemm():
    """Y = X @ DQ(Q(W))^T, W quantized per output channel (axis 0)."""
    rng = np.random.default_rng(0)
    weight = rng.normal(size=(3, 4)).astype(np.float32)
    scale = (np.abs(weight).max(1) / 127).astype(np.float32)
    inits = [numpy_helper.from_array(weight, "W"), numpy_helper.from_array(scale, "W_scale"),
             numpy_helper.from_array(np.zeros(3, np.int8), "W_zero")]
    nodes = [
        helper.make_node("QuantizeLinear", ["W", "W_scale", "W_zero"], ["W_q"], axis=0),
        helper.make_node("DequantizeLinear", ["W_q", "W_scale", "W_zero"], ["W_dq"], axis=0),
        helper.make_node("Gemm", ["X", "W_dq"], ["Y"], transB=1),
    ]
    model = _model(nodes, [helper.make_tensor_value_info("X", TensorProto.FLOAT, [2, 4])],
                   [helper.make_tensor_value_info("Y", TensorProto.FLOAT, [2, 3])], inits)
    return model, weight, scale


def test_fold_weight_quantizers_stores_int8_and_computes_the_same():
    model, weight, scale = _weight_qdq_gemm()
    x = np.random.default_rng(1).normal(size=(2, 4)).astype(np.float32)
    before = _run(model, {"X": x})[0]

    assert fold_weight_quantizers(model) == 1
    onnx.checker.check_model(model)
    assert [n.op_type for n in model.graph.node] == ["DequantizeLinear", "Gemm"]
    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    assert "W" not in inits  # the float weight is gone: the file is int8-sized
    ints = inits[model.graph.node[0].input[0]]
    assert ints.dtype == np.int8
    np.testing.assert_array_equal(ints, np.clip(np.rint(weight / scale[:, None]), -128, 127).astype(np.int8))
    np.testing.assert_array_equal(_run(model, {"X": x})[0], before)


def test_merge_duplicate_qdq_keeps_one_pair_per_tensor():
    """Two identical Q->DQ pairs on X (as a residual Add and a conv would each insert) become one."""
    inits = [numpy_helper.from_array(np.array(0.05, np.float32), "s"),
             numpy_helper.from_array(np.array(3, np.uint8), "z")]
    nodes = [
        helper.make_node("QuantizeLinear", ["X", "s", "z"], ["q1"]),
        helper.make_node("DequantizeLinear", ["q1", "s", "z"], ["d1"]),
        helper.make_node("QuantizeLinear", ["X", "s", "z"], ["q2"]),
        helper.make_node("DequantizeLinear", ["q2", "s", "z"], ["d2"]),
        helper.make_node("Relu", ["d1"], ["A"]),
        helper.make_node("Neg", ["d2"], ["B"]),
    ]
    value = lambda name: helper.make_tensor_value_info(name, TensorProto.FLOAT, [5])  # noqa: E731
    model = _model(nodes, [value("X")], [value("A"), value("B")], inits)
    x = np.linspace(-1, 1, 5, dtype=np.float32)
    before = _run(model, {"X": x})

    assert merge_duplicate_qdq(model) == 1
    onnx.checker.check_model(model)
    ops = [n.op_type for n in model.graph.node]
    assert ops.count("QuantizeLinear") == 1 and ops.count("DequantizeLinear") == 1
    neg = next(n for n in model.graph.node if n.op_type == "Neg")
    assert neg.input[0] == "d1"
    for got, want in zip(_run(model, {"X": x}), before):
        np.testing.assert_array_equal(got, want)


def test_merge_duplicate_qdq_keeps_pairs_with_other_parameters():
    inits = [numpy_helper.from_array(np.array(0.05, np.float32), "s"),
             numpy_helper.from_array(np.array(0.10, np.float32), "s2"),
             numpy_helper.from_array(np.array(0, np.uint8), "z")]
    nodes = [
        helper.make_node("QuantizeLinear", ["X", "s", "z"], ["q1"]),
        helper.make_node("DequantizeLinear", ["q1", "s", "z"], ["d1"]),
        helper.make_node("QuantizeLinear", ["X", "s2", "z"], ["q2"]),
        helper.make_node("DequantizeLinear", ["q2", "s2", "z"], ["d2"]),
        helper.make_node("Relu", ["d1"], ["A"]),
        helper.make_node("Relu", ["d2"], ["B"]),
    ]
    value = lambda name: helper.make_tensor_value_info(name, TensorProto.FLOAT, [5])  # noqa: E731
    model = _model(nodes, [value("X")], [value("A"), value("B")], inits)
    assert merge_duplicate_qdq(model) == 0 and len(model.graph.node) == 6
    assert [n.input[0] for n in model.graph.node if n.op_type == "Relu"] == ["d1", "d2"]


def test_rewrites_run_without_torch():
    code = ("import sys; sys.modules['torch'] = None\n"
            "import onnx\n"
            "from edgecnn.export import qdq_rewrites\n"
            "from tests.test_qdq_rewrites import _weight_qdq_gemm\n"
            "model, _, _ = _weight_qdq_gemm()\n"
            "assert qdq_rewrites.fold_weight_quantizers(model) == 1\n"
            "assert qdq_rewrites.merge_duplicate_qdq(model) == 0\n")
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    done = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


def _float_relu_pool_quantized(pool_input_dequantized: bool = False):
    """X -> Relu -> MaxPool -> Q -> DQ -> Y: a float layer's output pooled, then quantized for
    the int8 layer after it (optionally with the pool's input already quantized)."""
    inits = [numpy_helper.from_array(np.array(0.05, np.float32), "s"), numpy_helper.from_array(np.array(0, np.uint8), "z")]
    nodes = [helper.make_node("Relu", ["X"], ["R"])]
    pooled = "R"
    if pool_input_dequantized:
        nodes += [helper.make_node("QuantizeLinear", ["R", "s", "z"], ["Rq"]),
                  helper.make_node("DequantizeLinear", ["Rq", "s", "z"], ["Rdq"])]
        pooled = "Rdq"
    nodes += [helper.make_node("MaxPool", [pooled], ["P"], kernel_shape=[3, 3], strides=[2, 2], ceil_mode=1),
              helper.make_node("QuantizeLinear", ["P", "s", "z"], ["Pq"]),
              helper.make_node("DequantizeLinear", ["Pq", "s", "z"], ["Y"])]
    return _model(nodes, [helper.make_tensor_value_info("X", TensorProto.FLOAT, [1, 4, 11, 11])],
                  [helper.make_tensor_value_info("Y", TensorProto.FLOAT, [1, 4, 5, 5])], inits)


def test_quantize_max_pool_inputs_pools_int8_and_computes_the_same():
    model = _float_relu_pool_quantized()
    x = (np.random.default_rng(2).normal(size=(1, 4, 11, 11)) * 3).astype(np.float32)
    before = _run(model, {"X": x})[0]

    assert quantize_max_pool_inputs(model) == 1
    onnx.checker.check_model(model)
    nodes = {n.output[0]: n for n in model.graph.node}
    pool = next(n for n in model.graph.node if n.op_type == "MaxPool")
    dq = nodes[pool.input[0]]
    assert dq.op_type == "DequantizeLinear" and list(dq.input[1:]) == ["s", "z"]  # the reader's own parameters
    assert nodes[dq.input[0]].op_type == "QuantizeLinear"
    np.testing.assert_array_equal(_run(model, {"X": x})[0], before)  # exact: quantization is monotone
    assert quantize_max_pool_inputs(model) == 0  # once


def test_quantize_max_pool_inputs_leaves_an_int8_pool_alone():
    model = _float_relu_pool_quantized(pool_input_dequantized=True)
    assert quantize_max_pool_inputs(model) == 0 and len(model.graph.node) == 6
