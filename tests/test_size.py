"""Size numbers of an ONNX file: bytes, compressed bytes, params, non-zeros, bits per weight."""

from __future__ import annotations

import lzma

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgecnn.errors import UserError
from edgecnn.measure.size import compressed_sizes, size_report


def _save(tmp_path, name, nodes, inits, out_shape):
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 4, 6, 6])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, out_shape)], inits,
    )
    path = tmp_path / name
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9), str(path))
    return path


def test_fp32_pruned_and_shared_weights(tmp_path):
    # 8x4x3x3 conv weight: half zeros, the rest 3 distinct values -> 4 distinct -> 2 bits.
    weight = np.zeros((8, 4, 3, 3), np.float32)
    weight.reshape(-1)[::2] = np.tile(np.array([0.5, -0.25, 1.0], np.float32), 48)
    bias = np.arange(8, dtype=np.float32)  # 7 non-zeros, 8 distinct -> 3 bits
    shape = numpy_helper.from_array(np.array([1, -1], np.int64), "shape")  # not a weight
    nodes = [helper.make_node("Conv", ["input", "w", "b"], ["c"]),
             helper.make_node("Reshape", ["c", "shape"], ["y"])]
    path = _save(tmp_path, "m.onnx", nodes,
                 [numpy_helper.from_array(weight, "w"), numpy_helper.from_array(bias, "b"), shape], [1, 128])
    report = size_report(path)
    assert report.params == 288 + 8
    assert report.nonzeros == 144 + 7
    assert report.sparsity == pytest.approx(1 - 151 / 296)
    assert report.stored_bits_per_weight == 32.0
    assert report.distinct_bits_per_weight == pytest.approx((288 * 2 + 8 * 3) / 296)
    assert report.other_initializer_bytes == 16
    assert report.onnx_bytes == path.stat().st_size
    assert report.compressed["xz"] == len(lzma.compress(path.read_bytes(), preset=6))
    assert set(report.compressed) == {"xz", "gzip"}
    assert 0 < min(report.compressed.values()) < report.onnx_bytes


def test_int8_weights_behind_dequantize_linear(tmp_path):
    rng = np.random.default_rng(0)
    q_weight = rng.integers(-127, 128, size=(8, 4, 1, 1), dtype=np.int8)
    inits = [
        numpy_helper.from_array(q_weight, "wq"),
        numpy_helper.from_array(np.full(8, 0.01, np.float32), "ws"),
        numpy_helper.from_array(np.zeros(8, np.int8), "wz"),
    ]
    nodes = [helper.make_node("DequantizeLinear", ["wq", "ws", "wz"], ["w"], axis=0),
             helper.make_node("Conv", ["input", "w"], ["y"])]
    report = size_report(_save(tmp_path, "q.onnx", nodes, inits, [1, 8, 6, 6]))
    assert report.params == 32 and report.stored_bits_per_weight == 8.0
    distinct = len(np.unique(q_weight))
    assert report.distinct_bits_per_weight == np.ceil(np.log2(distinct))
    assert report.other_initializer_bytes == 8 * 4 + 8  # scales + zero points
    assert report.tensors[0].name == "wq"


def test_compressed_sizes_and_errors(tmp_path):
    sizes = compressed_sizes(b"\x00" * 10000)
    assert sizes["xz"] < 200 and len(sizes) == 2
    with pytest.raises(UserError, match="does not exist"):
        size_report(tmp_path / "missing.onnx")
    (tmp_path / "bad.onnx").write_bytes(b"\xff\xfe garbage")
    with pytest.raises(UserError, match="not a readable ONNX"):
        size_report(tmp_path / "bad.onnx")
