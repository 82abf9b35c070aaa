"""ONNX Runtime backend: sessions, providers, optimisation levels, profiler table."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgecnn.backends.ort import OrtRunner, profile_ops, resolve_providers, save_optimized, summarize_profile
from edgecnn.errors import UserError


def tiny_onnx(path, batch="N", size=8, classes=5, seed=0):
    """Conv-Relu-GlobalAveragePool-Flatten-Gemm built with onnx.helper (no torch)."""
    rng = np.random.default_rng(seed)
    inits = [
        numpy_helper.from_array(rng.standard_normal((4, 3, 3, 3)).astype(np.float32), "w"),
        numpy_helper.from_array(rng.standard_normal(4).astype(np.float32), "b"),
        numpy_helper.from_array(rng.standard_normal((classes, 4)).astype(np.float32), "fc_w"),
        numpy_helper.from_array(np.zeros(classes, np.float32), "fc_b"),
    ]
    nodes = [
        helper.make_node("Conv", ["input", "w", "b"], ["c"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c"], ["r"]),
        helper.make_node("GlobalAveragePool", ["r"], ["g"]),
        helper.make_node("Flatten", ["g"], ["f"], axis=1),
        helper.make_node("Gemm", ["f", "fc_w", "fc_b"], ["logits"], transB=1),
    ]
    graph = helper.make_graph(
        nodes, "tiny",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [batch, 3, size, size])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [batch, classes])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9)
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, str(path))
    return path


def test_runner_runs_with_threads_and_levels(tmp_path):
    path = tiny_onnx(tmp_path / "t.onnx")
    outputs = []
    for level in ("disable", "basic", "all"):
        runner = OrtRunner(path, threads=1, opt_level=level)
        x = runner.input_for(3)
        assert x.shape == (3, 3, 8, 8)
        outputs.append(runner.run(x))
    assert outputs[0].shape == (3, 5)
    np.testing.assert_allclose(outputs[0], outputs[2], rtol=1e-4, atol=1e-5)
    assert runner.session.get_session_options().intra_op_num_threads == 1


def test_bad_settings_are_user_errors(tmp_path):
    path = tiny_onnx(tmp_path / "t.onnx", batch=1)
    with pytest.raises(UserError, match="not available"):
        OrtRunner(path, providers="NoSuchExecutionProvider")
    with pytest.raises(UserError, match="optimization level"):
        OrtRunner(path, opt_level="max")
    with pytest.raises(UserError, match="fixed batch of 1"):
        OrtRunner(path).input_for(4)
    with pytest.raises(UserError, match="does not exist"):
        OrtRunner(tmp_path / "missing.onnx")
    (tmp_path / "junk.onnx").write_bytes(b"not a model")
    with pytest.raises(UserError, match="cannot load"):
        OrtRunner(tmp_path / "junk.onnx")


def test_provider_aliases():
    assert resolve_providers("cpu") == ["CPUExecutionProvider"]
    assert resolve_providers(None) == ["CPUExecutionProvider"]


def test_profile_table_from_the_ort_profiler(tmp_path):
    path = tiny_onnx(tmp_path / "t.onnx")
    table = profile_ops(path, batch=2, runs=5, threads=1, opt_level="disable")
    ops = {row.op_type: row for row in table}
    assert {"Conv", "Relu", "GlobalAveragePool", "Gemm"} <= set(ops)
    assert ops["Conv"].calls == 4  # first of 5 runs skipped
    assert sum(row.share for row in table) == pytest.approx(1.0)
    assert [r.total_us for r in table] == sorted((r.total_us for r in table), reverse=True)


def test_summarize_profile_on_injected_events():
    events = [
        {"cat": "Session", "name": "model_run", "ts": 0, "dur": 100},
        {"cat": "Node", "name": "conv_kernel_time", "ts": 10, "dur": 50, "args": {"op_name": "Conv"}},
        {"cat": "Session", "name": "model_run", "ts": 200, "dur": 100},
        {"cat": "Node", "name": "conv_kernel_time", "ts": 210, "dur": 30, "args": {"op_name": "Conv"}},
        {"cat": "Node", "name": "relu_kernel_time", "ts": 250, "dur": 10, "args": {"op_name": "Relu"}},
        {"cat": "Node", "name": "conv_fence_before", "ts": 251, "dur": 99, "args": {"op_name": "Conv"}},
    ]
    table = summarize_profile(events, skip_first=1)
    assert [(r.op_type, r.calls, r.total_us) for r in table] == [("Conv", 1, 30.0), ("Relu", 1, 10.0)]
    assert table[0].share == pytest.approx(0.75)


def test_summarize_profile_by_input_type_tells_apart_the_kernels_of_one_op():
    def pool(ts, dur, kind):
        return {"cat": "Node", "name": f"pool{ts}_kernel_time", "ts": ts, "dur": dur,
                "args": {"op_name": "MaxPool", "input_type_shape": [{kind: [1, 64, 55, 55]}]}}

    events = [pool(1, 40, "uint8"), pool(2, 5, "float"), pool(3, 20, "uint8")]
    table = summarize_profile(events, by_input_type=True)
    assert [(r.op_type, r.calls, r.total_us) for r in table] == [("MaxPool(uint8)", 2, 60.0), ("MaxPool(float)", 1, 5.0)]
    assert [r.op_type for r in summarize_profile(events)] == ["MaxPool"]


def test_save_optimized_writes_a_loadable_graph(tmp_path):
    path = tiny_onnx(tmp_path / "t.onnx")
    out = save_optimized(path, tmp_path / "t.ort.onnx", opt_level="extended")
    runner = OrtRunner(out, threads=1)
    x = runner.input_for(2)
    np.testing.assert_allclose(runner.run(x), OrtRunner(path, threads=1).run(x), rtol=1e-4, atol=1e-5)
    assert not list(tmp_path.glob(".*tmp"))
