"""The target table (edgecnn/targets.py): names validated everywhere, a new target is one entry."""

from __future__ import annotations

import onnx
import pytest

from edgecnn import targets
from edgecnn.errors import UserError
from edgecnn.targets import TARGETS, QuantTarget

pytestmark = pytest.mark.usefixtures("torch_one_thread")


def test_every_target_is_complete_and_consistent():
    for name, t in TARGETS.items():
        assert t.name == name and t.description
        assert t.backend in ("ort", "tensorrt") and t.cpu_accuracy in ("optimized", "reference")
        assert t.shift_deploy in ("onehot_dwconv", "pad_slice") and t.shift_deploy_basis
        # A target whose int8 kernels are not ORT's cannot be timed or run optimized on a CPU.
        assert (t.backend == "ort") == (t.cpu_accuracy == "optimized") == t.cpu_latency_meaningful
    assert targets.DEFAULT_TARGET in TARGETS and targets.UNTARGETED_ENCODING in TARGETS


def test_unknown_names_are_one_line_errors_listing_the_valid_ones():
    from edgecnn.passes.quantize import QuantConfig
    from edgecnn.recipe import validate

    with pytest.raises(UserError, match=r"unknown quantization target 'tpu'; valid targets: ort-x86, ort-arm, trt$"):
        targets.get_target("tpu")
    with pytest.raises(UserError, match=r"targets\[1\]: unknown target 'tpu'; valid targets: ort-x86, ort-arm, trt$"):
        validate({"model": {"name": "squeezenet"}, "stages": ["export"], "targets": ["trt", "tpu"]}, "r.yaml")
    with pytest.raises(ValueError, match="valid targets: ort-x86, ort-arm, trt"):
        QuantConfig(target="tpu")
    with pytest.raises(UserError, match="no shift deploy form known for 'tpu'"):
        targets.shift_deploy_form("tpu")
    assert targets.shift_deploy_form("ort") == targets.shift_deploy_form("trt") == "onehot_dwconv"


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

    toy = QuantTarget("toy", "int8", False, extra_quantizers=frozenset({"pool_input"}), backend="tensorrt", trt_lint=True,
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
