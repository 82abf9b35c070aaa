"""TensorRT artifacts on a CPU: reference-semantics evaluation, FP16 for the float rest, and Q/DQ
files from other quantizers (NVIDIA Model Optimizer) through lint, compile, bench and eval."""

from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from onnx import TensorProto, helper, numpy_helper
from PIL import Image

from edgecnn.errors import UserError
from edgecnn.export.metadata import write_metadata
from edgecnn.preprocess import Preprocess

MODELOPT_FIXTURE = Path(__file__).parent / "data" / "modelopt" / "tiny_modelopt_int8.onnx"
PREPROCESS = Preprocess(input_size=8, resize=8, crop=8, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0), value_scale=1 / 255)


@pytest.fixture
def folder(tmp_path):
    """data/<synset>/*.png with classes.txt beside it: three colour classes, four images each."""
    (tmp_path / "classes.txt").write_text("n001 red\nn002 green\nn003 blue\n")
    data = tmp_path / "data"
    for synset, colour in (("n001", (220, 10, 10)), ("n002", (10, 220, 10)), ("n003", (10, 10, 220))):
        (data / synset).mkdir(parents=True)
        for i in range(4):
            Image.new("RGB", (10 + i, 10), colour).save(data / synset / f"img{i}.png")
    return data


def _qdq_colour_model(path, metadata=None):
    """Q/DQ -> GlobalAveragePool -> Gemm that picks the RGB channel of each class (int8 symmetric)."""
    weight = np.eye(3, dtype=np.float32)
    inits = [numpy_helper.from_array(np.array(1 / 127, np.float32), "s"), numpy_helper.from_array(np.array(0, np.int8), "z"),
             numpy_helper.from_array(weight, "w")]
    nodes = [helper.make_node("QuantizeLinear", ["input", "s", "z"], ["q"]),
             helper.make_node("DequantizeLinear", ["q", "s", "z"], ["dq"]),
             helper.make_node("GlobalAveragePool", ["dq"], ["g"]), helper.make_node("Flatten", ["g"], ["f"]),
             helper.make_node("Gemm", ["f", "w"], ["output"], transB=1)]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, 8, 8])],
                              [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["N", 3])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9)
    write_metadata(model, {**PREPROCESS.to_metadata(), **(metadata or {})})
    onnx.save(model, str(path))
    return path


# --- reference semantics -----------------------------------------------------------------------


def test_trt_files_are_evaluated_in_reference_semantics(folder, tmp_path, monkeypatch):
    from edgecnn.backends import ort as ort_backend
    from edgecnn.measure.accuracy import evaluate_onnx, resolve_semantics

    trt = _qdq_colour_model(tmp_path / "trt.onnx", {"edgecnn.quant_target": "trt"})
    plain = _qdq_colour_model(tmp_path / "ort.onnx", {"edgecnn.quant_target": "ort-x86"})
    assert resolve_semantics(trt) == "reference" and resolve_semantics(plain) == "runtime"
    assert resolve_semantics(plain, "reference") == "reference" and resolve_semantics(trt, "runtime") == "runtime"
    with pytest.raises(UserError, match="semantics"):
        resolve_semantics(trt, "fast")
    levels = []
    original = ort_backend.session_options
    monkeypatch.setattr(ort_backend, "session_options",
                        lambda threads, opt_level, *a, **k: levels.append(opt_level) or original(threads, opt_level, *a, **k))
    report = evaluate_onnx(trt, folder, progress=False)
    assert levels == ["disable"] and report.semantics == "reference" and report.top1 == 1.0
    assert "reference semantics" in report.summary()
    assert evaluate_onnx(plain, folder, progress=False).semantics == "runtime" and levels[-1] == "all"


def test_eval_command_semantics_option(folder, tmp_path):
    from edgecnn.cli import cli

    plain = _qdq_colour_model(tmp_path / "m.onnx")
    out = CliRunner().invoke(cli, ["eval", str(plain), "--data", str(folder), "--semantics", "reference", "--json"])
    assert out.exit_code == 0, out.output
    assert json.loads(out.output)["semantics"] == "reference"


# --- FP16 for the float rest ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def quantized_squeezenet(torch_one_thread):
    import torch

    from edgecnn.models import create
    from edgecnn.passes.quantize import QuantConfig, quantize_model

    torch.manual_seed(0)
    model = create("squeezenet1_1", num_classes=10).eval()
    quantized, _ = quantize_model(model, QuantConfig(target="trt"), [torch.randn(2, 3, 32, 32)], progress=False)
    return quantized


@pytest.mark.slow
def test_fp16_rest_export_has_every_float_op_in_fp16(quantized_squeezenet, tmp_path):
    import onnxruntime as ort

    from edgecnn.export.qdq import export_qdq_report
    from edgecnn.export.trt_fp16 import float_ops_precision
    from edgecnn.export.trt_rules import lint

    fp32 = export_qdq_report(quantized_squeezenet, tmp_path / "a.onnx", "trt", input_shape=(1, 3, 32, 32), parity=False)
    half = export_qdq_report(quantized_squeezenet, tmp_path / "b.onnx", "trt", input_shape=(1, 3, 32, 32), parity=False,
                             fp16_rest=True)
    before, after = onnx.load(str(fp32.path)), onnx.load(str(half.path))
    assert float_ops_precision(before)["float16"] == 0
    counts = float_ops_precision(after)
    assert counts["float32"] == 0 and counts["float16"] == float_ops_precision(before)["float32"] > 0
    # Q/DQ stay float32 (opset 17), the app still feeds and gets float32, the placement is unchanged
    kinds = lambda m: sorted(n.op_type for n in m.graph.node if n.op_type in ("QuantizeLinear", "DequantizeLinear"))  # noqa: E731
    assert kinds(after) == kinds(before)
    assert after.graph.input[0].type.tensor_type.elem_type == TensorProto.FLOAT
    assert after.graph.output[0].type.tensor_type.elem_type == TensorProto.FLOAT
    assert lint(after) == [] and half.violations == []
    assert {p.key: p.value for p in after.metadata_props}["edgecnn.float_rest"] == "float16"
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    x = np.random.default_rng(0).standard_normal((1, 3, 32, 32)).astype(np.float32)
    a = ort.InferenceSession(str(fp32.path), options).run(None, {"input": x})[0]
    b = ort.InferenceSession(str(half.path), options).run(None, {"input": x})[0]
    assert b.dtype == np.float32 and np.abs(a - b).max() <= 1e-2 * max(1e-6, float(np.abs(a).max())) + 1e-3


def test_fp16_rest_is_a_trt_option(quantized_squeezenet, tmp_path):
    from edgecnn.export.qdq import export_qdq_report
    from edgecnn.export.trt_fp16 import qdq_rest_to_fp16

    with pytest.raises(UserError, match="TensorRT option"):
        export_qdq_report(quantized_squeezenet, tmp_path / "c.onnx", "ort-arm", input_shape=(1, 3, 32, 32), parity=False,
                          fp16_rest=True)
    plain = helper.make_model(helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g",
                                                [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                                                [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])]))
    with pytest.raises(UserError, match="no Q/DQ"):
        qdq_rest_to_fp16(plain)


def test_fp16_rest_file_builds_strongly_typed_on_10_and_11(quantized_squeezenet, tmp_path):
    from edgecnn.backends.tensorrt import config_for_onnx, plan_build
    from edgecnn.export.qdq import export_qdq_report

    half = export_qdq_report(quantized_squeezenet, tmp_path / "h.onnx", "trt", input_shape=(1, 3, 32, 32), parity=False,
                             fp16_rest=True).path
    assert plan_build(config_for_onnx(half, "10.3")).network_flags == ["STRONGLY_TYPED"]
    assert plan_build(config_for_onnx(half, "11.4")).builder_flags == []
    assert plan_build(config_for_onnx(half, "8.6")).builder_flags == ["FP16", "INT8"]


# --- Q/DQ files from other quantizers --------------------------------------------------------------


def test_modelopt_fixture_is_what_it_says():
    model = onnx.load(str(MODELOPT_FIXTURE))
    assert MODELOPT_FIXTURE.stat().st_size < 8000 and model.producer_name == "onnx.quantize"
    assert any(n.op_type == "QuantizeLinear" for n in model.graph.node)
    assert not {p.key for p in model.metadata_props} & {"edgecnn.quant_target", "edgecnn.target"}


def _accept_foreign_qdq(path: Path, folder: Path, tmp_path: Path):
    """lint, compile --print-trtexec, bench and eval all take the file."""
    from edgecnn.cli import cli

    runner = CliRunner()
    linted = runner.invoke(cli, ["lint", str(path), "--json"])
    assert linted.exit_code in (0, 1), linted.output
    payload = json.loads(linted.output)
    assert payload["qdq_nodes"] > 0 and all(v["source"] for v in payload["violations"])
    for version, expected in (("10.3", "--stronglyTyped"), ("11.4", "--noCudaGraph")):
        printed = runner.invoke(cli, ["compile", str(path), "--backend", "trt", "--print-trtexec", "--trt-version", version])
        assert printed.exit_code == 0, printed.output
        assert expected in printed.output and "--fp16" not in printed.output
    old = runner.invoke(cli, ["compile", str(path), "--backend", "trt", "--print-trtexec", "--trt-version", "8.6"])
    assert isinstance(old.exception, UserError) and "opset 17" in str(old.exception)  # opset-19 file
    bench = runner.invoke(cli, ["bench", str(path), "--iterations", "5", "--warmup", "0", "--in-process", "--json"])
    assert bench.exit_code == 0, bench.output
    assert json.loads(bench.output)["results"][0]["stats"]["samples"] == 5
    evaluated = runner.invoke(cli, ["eval", str(path), "--data", str(folder), "--semantics", "reference",
                                    "--preprocess", "torchvision", "--preprocess-set", "input_size=8",
                                    "--preprocess-set", "resize=8", "--preprocess-set", "crop=8", "--json"])
    assert evaluated.exit_code == 0, evaluated.output
    report = json.loads(evaluated.output)
    assert report["samples"] == 12 and report["semantics"] == "reference" and 0 <= report["top1"] <= 1


def test_modelopt_file_is_accepted(folder, tmp_path):
    path = tmp_path / MODELOPT_FIXTURE.name
    shutil.copy(MODELOPT_FIXTURE, path)
    _accept_foreign_qdq(path, folder, tmp_path)


@pytest.mark.skipif(importlib.util.find_spec("modelopt") is None, reason="nvidia-modelopt is not installed here")
def test_a_fresh_modelopt_export_is_accepted(folder, tmp_path, torch_one_thread):
    """The same with a file modelopt makes now (the installed version), from a torch model."""
    import torch

    moq = pytest.importorskip("modelopt.onnx.quantization")
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 16, 3, padding=1), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1),
                              torch.nn.Flatten(), torch.nn.Linear(16, 3)).eval()
    fp32 = tmp_path / "fp32.onnx"
    torch.onnx.export(net, torch.randn(1, 3, 8, 8), str(fp32), input_names=["input"], output_names=["output"],
                      opset_version=17, dynamo=False)
    out = tmp_path / "modelopt.onnx"
    moq.quantize(str(fp32), quantize_mode="int8", calibration_data=np.random.default_rng(0).uniform(
        0, 1, (8, 3, 8, 8)).astype(np.float32), calibration_method="max", calibration_eps=["cpu"], output_path=str(out))
    _accept_foreign_qdq(out, folder, tmp_path)
