"""TensorRT Q/DQ placement lint: each planted violation is named; our exports are clean."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgecnn.export.qdq import QDQLintError
from edgecnn.export.trt_rules import lint


pytestmark = pytest.mark.usefixtures("torch_one_thread")


def _model(nodes, extra_inits=(), zero_dtype=np.int8, second_scale=0.1):
    inits = [
        numpy_helper.from_array(np.array(0.1, np.float32), "s"),
        numpy_helper.from_array(np.array(second_scale, np.float32), "s2"),
        numpy_helper.from_array(np.array(0, zero_dtype), "z"),
        numpy_helper.from_array(np.ones((4, 4, 1, 1), np.float32), "w"),
        numpy_helper.from_array(np.ones((4, 4, 1, 1), np.float32), "w2"),
        numpy_helper.from_array(np.array([0, 0, 1, 1, 0, 0, 1, 1], np.int64), "pads"),
        *extra_inits,
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        inits,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def qdq(name, src, scale="s"):
    return [
        helper.make_node("QuantizeLinear", [src, scale, "z"], [f"{name}_q"], name=f"{name}_Q"),
        helper.make_node("DequantizeLinear", [f"{name}_q", scale, "z"], [f"{name}_dq"], name=f"{name}_DQ"),
    ]


def rules_hit(model):
    return {v.rule: v for v in lint(model)}


def test_clean_conv_chain_has_no_violation():
    nodes = qdq("in", "x") + [
        helper.make_node("Conv", ["in_dq", "w"], ["c"], name="conv"),
        helper.make_node("Relu", ["c"], ["r"], name="relu"),
    ] + qdq("mid", "r") + [helper.make_node("Conv", ["mid_dq", "w2"], ["y"], name="conv2")]
    assert lint(_model(nodes)) == []


def test_qdq_on_a_conv_output_feeding_an_activation():
    nodes = qdq("in", "x") + [helper.make_node("Conv", ["in_dq", "w"], ["c"], name="conv")] + qdq("out", "c") + [
        helper.make_node("Relu", ["out_dq"], ["y"], name="relu")
    ]
    hit = rules_hit(_model(nodes))
    assert "weighted_output_qdq" in hit and "conv" in hit["weighted_output_qdq"].nodes and "relu" in hit["weighted_output_qdq"].nodes


def test_residual_add_without_qdq():
    nodes = qdq("in", "x") + [
        helper.make_node("Conv", ["in_dq", "w"], ["c"], name="conv"),
        helper.make_node("Add", ["x", "c"], ["y"], name="residual_add"),
    ]
    hit = rules_hit(_model(nodes))
    assert hit["residual_add_unquantized"].nodes == ["residual_add"]
    fixed = qdq("in", "x") + [
        helper.make_node("Conv", ["in_dq", "w"], ["c"], name="conv"),
        helper.make_node("Add", ["in_dq", "c"], ["y"], name="residual_add"),
    ]
    assert "residual_add_unquantized" not in rules_hit(_model(fixed))


def test_concat_inputs_with_different_scales():
    nodes = qdq("a", "x") + qdq("b", "x", scale="s2") + [helper.make_node("Concat", ["a_dq", "b_dq"], ["y"], axis=1, name="cat")]
    assert rules_hit(_model(nodes, second_scale=0.2))["concat_scales_differ"].nodes == ["cat"]
    assert "concat_scales_differ" not in rules_hit(_model(nodes, second_scale=0.1))  # equal values pass


def test_every_rule_cites_its_nvidia_source():
    from edgecnn.export.trt_rules import RULE_SOURCES, TRT_RULES

    assert set(RULE_SOURCES) == set(TRT_RULES)
    assert all(("TensorRT Developer Guide" in src or "onnx-tensorrt" in src) for src in RULE_SOURCES.values())


def test_a_float_file_has_nothing_to_break():
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], name="conv"), helper.make_node("Add", ["x", "c"], ["y"], name="add")]
    assert lint(_model(nodes)) == []


def test_pad_before_quantized_conv_is_not_flagged():
    """No NVIDIA document asks for Pad and Conv to be adjacent; NVIDIA's own quantizer leaves them apart."""
    nodes = [helper.make_node("Pad", ["x", "pads"], ["p"], name="pad")] + qdq("p", "p") + [
        helper.make_node("Conv", ["p_dq", "w"], ["y"], name="conv")
    ]
    assert lint(_model(nodes)) == []


def test_uint8_and_nonzero_zero_points():
    nodes = qdq("in", "x") + [helper.make_node("Conv", ["in_dq", "w"], ["y"], name="conv")]
    assert {"uint8_quantization"} <= set(rules_hit(_model(nodes, zero_dtype=np.uint8)))
    shifted = _model(nodes)
    shifted.graph.initializer[2].CopyFrom(numpy_helper.from_array(np.array(3, np.int8), "z"))
    assert "nonzero_zero_point" in rules_hit(shifted)


def test_trt_export_of_a_planted_violation_fails_loudly(tmp_path, monkeypatch):
    """An export whose graph breaks a rule is refused with the rule and node named."""
    import torch

    from edgecnn.export import qdq as qdq_module
    from edgecnn.passes.quantize import QuantConfig, quantize_model

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU(), torch.nn.Conv2d(4, 4, 1)).eval()
    quantized, _ = quantize_model(model, QuantConfig(), [torch.randn(2, 3, 16, 16)], progress=False)
    original = qdq_module.merge_duplicate_qdq

    def plant(proto):  # make every zero-point 1 after the real post-processing
        count = original(proto)
        for node in proto.graph.node:
            if node.op_type == "Constant":
                tensor = numpy_helper.to_array(node.attribute[0].t)
                if tensor.dtype == np.int8 and tensor.ndim == 0:
                    node.attribute[0].t.CopyFrom(numpy_helper.from_array(np.array(1, np.int8)))
        for init in proto.graph.initializer:  # constants folded into initializers
            tensor = numpy_helper.to_array(init)
            if tensor.dtype == np.int8 and tensor.ndim == 0:
                init.CopyFrom(numpy_helper.from_array(np.array(1, np.int8), init.name))
        return count

    monkeypatch.setattr(qdq_module, "merge_duplicate_qdq", plant)
    with pytest.raises(QDQLintError, match="nonzero_zero_point"):
        qdq_module.export_qdq(quantized, tmp_path / "bad.onnx", "trt", input_shape=(1, 3, 16, 16))
    assert not (tmp_path / "bad.onnx").exists()


@pytest.mark.slow
@pytest.mark.parametrize("name", ["mobilenet_v2", "squeezenet1_1", "shufflenet_v2_x0_5"])
def test_zoo_trt_exports_are_clean(name, tmp_path):
    import torch

    from edgecnn.export.qdq import export_qdq_report
    from edgecnn.models import create
    from edgecnn.passes.quantize import QuantConfig, quantize_model

    options = {"tf_padding": True} if name == "mobilenet_v2" else {}
    model = create(name, num_classes=10, **options).eval()
    quantized, report = quantize_model(model, QuantConfig(), [torch.randn(2, 3, 32, 32)], progress=False)
    assert "placement_warning" not in report.summary
    result = export_qdq_report(quantized, tmp_path / f"{name}.onnx", "trt", input_shape=(1, 3, 32, 32), parity=False)
    assert result.violations == []
    assert lint(onnx.load(str(result.path))) == []


def test_lint_command_names_rule_nodes_and_source(tmp_path):
    from click.testing import CliRunner

    from edgecnn.cli import cli

    nodes = qdq("in", "x") + [
        helper.make_node("Conv", ["in_dq", "w"], ["c"], name="conv"),
        helper.make_node("Add", ["x", "c"], ["y"], name="residual_add"),
    ]
    bad = tmp_path / "bad.onnx"
    onnx.save(_model(nodes), str(bad))
    result = CliRunner().invoke(cli, ["lint", str(bad)])
    assert result.exit_code == 1
    assert "[residual_add_unquantized] residual_add" in result.output and "Developer Guide" in result.output
    clean = tmp_path / "clean.onnx"
    onnx.save(_model(qdq("in", "x") + [helper.make_node("Conv", ["in_dq", "w"], ["y"], name="conv")]), str(clean))
    ok = CliRunner().invoke(cli, ["lint", str(clean)])
    assert ok.exit_code == 0 and "every TensorRT placement rule holds" in ok.output
    unknown = CliRunner().invoke(cli, ["lint", str(clean), "--rule", "pad_conv_separated"])
    assert unknown.exit_code != 0 and "unknown rule" in str(unknown.exception)


def _compile_trt(path, capfd):
    from edgecnn.cli import main

    try:
        code = main(["compile", str(path), "--backend", "trt", "--print-trtexec", "--trt-version", "10.3"]) or 0
    except SystemExit as exc:
        code = exc.code
    return (code,) + capfd.readouterr()


TRT_BUILDING_COMMANDS = {
    "compile": lambda path, tmp: ["compile", path, "--backend", "trt", "--print-trtexec", "--trt-version", "10.3"],
    "ship": lambda path, tmp: ["ship", path, "-o", tmp / "bundle", "--target", "trt"],
    "bench": lambda path, tmp: ["bench", path, "--backend", "trt"],
}


@pytest.mark.parametrize("command", sorted(TRT_BUILDING_COMMANDS))
def test_every_command_that_builds_for_tensorrt_refuses_what_it_would_reject(command, tmp_path, capfd):
    """An ort-x86 style file (uint8 Q/DQ): nothing written, one line naming the rule, exit 2."""
    from edgecnn.cli import main

    nodes = qdq("in", "x") + [helper.make_node("Conv", ["in_dq", "w"], ["y"], name="conv")]
    path = tmp_path / "ort_x86.onnx"
    onnx.save(_model(nodes, zero_dtype=np.uint8), str(path))
    try:
        code = main([str(a) for a in TRT_BUILDING_COMMANDS[command](path, tmp_path)]) or 0
    except SystemExit as exc:
        code = exc.code
    out, err = capfd.readouterr()
    assert code == 2 and out == "" and not (tmp_path / "bundle").exists()
    assert err.strip().splitlines() == [err.strip()] and "TensorRT would reject" in err and "[uint8_quantization]" in err


def test_compile_trt_warns_on_placement_rules_and_prints_the_line(tmp_path, capfd):
    nodes = qdq("in", "x") + [
        helper.make_node("Conv", ["in_dq", "w"], ["c"], name="conv"),
        helper.make_node("Add", ["x", "c"], ["y"], name="residual_add"),
    ]
    path = tmp_path / "placement.onnx"
    onnx.save(_model(nodes), str(path))
    code, out, err = _compile_trt(path, capfd)
    assert code == 0, err
    assert "trtexec" in out and "--onnx=" in out
    assert "warning: [residual_add_unquantized] residual_add" in err
