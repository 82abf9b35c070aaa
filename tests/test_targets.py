"""The target table (edgecnn/targets.py): names validated everywhere, a new target is one entry."""

from __future__ import annotations

import re

import onnx
import pytest

from edgecnn import targets
from edgecnn.errors import UserError
from edgecnn.targets import TARGETS, QuantTarget

pytestmark = pytest.mark.usefixtures("torch_one_thread")


def test_every_target_is_complete_and_consistent():
    for name, t in TARGETS.items():
        assert t.name == name and t.description
        assert t.backend in targets.BACKENDS and t.cpu_accuracy in ("optimized", "reference")
        assert t.shift_deploy in ("onehot_dwconv", "pad_slice") and t.shift_deploy_basis
        # A target whose int8 kernels are not a CPU runtime's cannot be timed or run optimized on a CPU.
        assert (t.backend in targets.CPU_BACKENDS) == (t.cpu_accuracy == "optimized") == t.cpu_latency_meaningful
        assert t.bundle == (t.ship_refusal() is None)
    assert targets.DEFAULT_TARGET in TARGETS and targets.UNTARGETED_ENCODING in TARGETS


def test_unknown_names_are_one_line_errors_listing_the_valid_ones():
    from edgecnn.passes.quantize import QuantConfig
    from edgecnn.recipe import validate

    valid = re.escape(", ".join(TARGETS))
    assert ", ".join(TARGETS).startswith("ort-x86, ")
    with pytest.raises(UserError, match=rf"unknown quantization target 'tpu'; valid targets: {valid}$"):
        targets.get_target("tpu")
    with pytest.raises(UserError, match=rf"targets\[1\]: unknown target 'tpu'; valid targets: {valid}$"):
        validate({"model": {"name": "squeezenet"}, "stages": ["export"], "targets": ["trt", "tpu"]}, "r.yaml")
    with pytest.raises(ValueError, match=f"valid targets: {valid}"):
        QuantConfig(target="tpu")
    with pytest.raises(UserError, match="no shift deploy form known for 'tpu'"):
        targets.shift_deploy_form("tpu")
    assert targets.shift_deploy_form("ort") == targets.shift_deploy_form("trt") == "onehot_dwconv"
    assert targets.shift_deploy_form("tensorrt") == "onehot_dwconv"  # the older spelling of the backend


def test_a_new_target_is_one_table_entry(monkeypatch, tmp_path):
    """A toy target registered in the table runs through quantize -> export -> lint with no other change.

    Its encoder is the table entry itself: a TensorRT-like accelerator (symmetric s8,
    zero-point 0, TensorRT's Q/DQ lint on every export) that also wants the global-pool input
    quantized, which ``trt`` does not.
    """
    import numpy as np
    from onnx import numpy_helper
    from test_qdq_export import SHAPE, SmallNet, calib

    from edgecnn.export import trt_rules
    from edgecnn.export.qdq import export_qdq_report
    from edgecnn.passes.quantize import QuantConfig, quantize_model
    from edgecnn.recipe import validate

    toy = QuantTarget("toy", "int8", False, extra_quantizers=frozenset({"pool_input"}), backend="trt", trt_lint=True,
                      cpu_accuracy="reference", cpu_latency_meaningful=False, shift_deploy_basis="toy", description="toy")
    monkeypatch.setitem(TARGETS, "toy", toy)
    linted = []
    real_lint = trt_rules.lint
    monkeypatch.setattr(trt_rules, "lint", lambda proto: linted.append(proto.graph.name) or real_lint(proto))

    recipe = validate({"model": {"name": "squeezenet"}, "stages": ["fold_bn", "quantize", "export"], "targets": ["toy"]}, "r.yaml")
    assert recipe.stage("quantize").config.target == "toy"  # the first target's encoding is simulated
    model, _ = quantize_model(SmallNet().eval(), QuantConfig(bits=8, target="toy"), calib(), progress=False)
    result = export_qdq_report(model, tmp_path / "toy.onnx", "toy", input_shape=SHAPE, parity_inputs=calib(seed=3)[0])
    assert result.violations == [] and len(linted) == 1 and result.parity is not None

    proto = onnx.load(str(result.path))
    meta = {p.key: p.value for p in proto.metadata_props}
    assert meta["edgecnn.quant_target"] == "toy" and meta["edgecnn.activation_dtype"] == "int8"
    consts = {i.name: numpy_helper.to_array(i) for i in proto.graph.initializer}
    for node in proto.graph.node:
        if node.op_type == "Constant":
            consts[node.output[0]] = numpy_helper.to_array(node.attribute[0].t)
    zero_points = [consts[n.input[2]] for n in proto.graph.node if n.op_type == "QuantizeLinear"]
    assert all(z.dtype == np.int8 and int(z) == 0 for z in zero_points)
    producers = {out: n for n in proto.graph.node for out in n.output}
    pool = next(n for n in proto.graph.node if n.op_type == "GlobalAveragePool")
    assert producers[pool.input[0]].op_type == "DequantizeLinear"  # the toy's extra quantizer


@pytest.mark.parametrize("name", list(TARGETS))
def test_each_target_declares_where_it_runs_and_how_it_ships(name):
    from edgecnn.cpu import CPU_CLASSES

    t = TARGETS[name]
    assert t.runtime_title and t.ort_format_platform in (None, "arm", "amd64")
    assert set(t.cpu_classes) <= set(CPU_CLASSES) and set(t.saturates_on) <= set(CPU_CLASSES)
    assert not set(t.cpu_classes) & set(t.saturates_on)
    # A CPU runtime's target (ONNX Runtime, OpenVINO) runs on some CPU class; a TensorRT one on none.
    assert bool(t.cpu_classes) == (t.backend in targets.CPU_BACKENDS)
    assert t.family in ("",) + targets.families()
    for cpu_class in CPU_CLASSES:
        fits = t.runs_on(cpu_class)
        assert t.latency_meaningful_on(cpu_class) == (fits and t.cpu_latency_meaningful)
        assert t.accuracy_semantics_on(cpu_class) == ("optimized" if fits and t.cpu_accuracy == "optimized" else "reference")
        assert (t.unfit_reason(cpu_class) is None) == (fits or t.backend not in targets.CPU_BACKENDS)


@pytest.mark.parametrize("cpu_class, x86, arm, openvino", [
    ("x86-vnni", "ort-x86-vnni", "ort-arm", "ov-x86-vnni"),
    ("x86-avx2", "ort-x86", "ort-arm", "ov-x86"),
    ("other", "ort-x86", "ort-arm", "ov-x86"),
    ("arm64-dot", "ort-x86", "ort-arm", "ov-x86"),
])
def test_a_family_name_picks_the_target_for_the_cpu_class(cpu_class, x86, arm, openvino):
    assert targets.resolve_target_name("x86", cpu_class) == x86
    assert targets.resolve_target_name("arm", cpu_class) == arm
    assert targets.resolve_target_name("openvino", cpu_class) == openvino
    assert targets.resolve_target_name("trt", cpu_class) == "trt"
    assert targets.resolve_target_name("tpu", cpu_class) == "tpu"  # left to the validation that lists valid names


@pytest.mark.parametrize("cpu_class, expected", [("x86-vnni", "ort-x86-vnni"), ("x86-avx2", "ort-x86")])
def test_target_x86_in_a_recipe_or_on_the_cli_resolves_on_this_host(monkeypatch, cpu_class, expected):
    from edgecnn import cpu
    from edgecnn.recipe import validate
    from edgecnn.recipe.flags import recipe_from_flags

    monkeypatch.setattr(cpu, "host_class", lambda: cpu_class)
    recipe = validate(recipe_from_flags(None, model="squeezenet", targets=["x86", "trt"]), "flags")
    assert recipe.targets == [expected, "trt"] and recipe.stage("quantize").config.target == expected


def test_backend_is_one_vocabulary():
    from edgecnn.measure import latency

    assert targets.BACKENDS == ("ort", "openvino", "trt") and set(targets.CPU_BACKENDS) < set(targets.BACKENDS)
    assert {t.backend for t in TARGETS.values()} <= set(targets.BACKENDS)
    assert targets.backend_name("tensorrt") == "trt" and targets.targets_on_backend("tensorrt") == ("trt",)
    assert set(targets.targets_on_backend("ort")) == {n for n, t in TARGETS.items() if t.backend == "ort"}
    assert set(targets.targets_on_backend("openvino")) == {"ov-x86", "ov-x86-vnni"}
    with pytest.raises(UserError, match="choose ort or openvino or trt"):
        latency.open_runner(__file__, backend="tpu")


def test_the_search_times_only_targets_this_cpu_computes_correctly(monkeypatch):
    from pydantic import ValidationError

    from edgecnn import cpu
    from edgecnn.search.run import SearchConfig

    with pytest.raises(ValidationError, match="runs elsewhere \\(use " + ", ".join(t for b in targets.CPU_BACKENDS for t in targets.targets_on_backend(b))):
        SearchConfig(target="trt")
    monkeypatch.setattr(cpu, "host_class", lambda: "x86-avx2")
    with pytest.raises(ValidationError, match="ort-x86-vnni is for CPU classes x86-vnni; this CPU is x86-avx2"):
        SearchConfig(target="ort-x86-vnni")
    assert SearchConfig(target="x86").target == "ort-x86"
    monkeypatch.setattr(cpu, "host_class", lambda: "x86-vnni")
    assert SearchConfig(target="x86").target == SearchConfig(target="ort-x86-vnni").target == "ort-x86-vnni"
