"""The quantize pass: weight grids, integer-exact fake quantization, placement, configs, refinements."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from edgecnn.errors import UserError
from edgecnn.passes.quant.quantizers import QuantConv2d, TensorQuantizer, quant_layers, set_target
from edgecnn.passes.quant.adaround import adaround_layer, bias_correction
from edgecnn.passes.quantize import QuantConfig, quantize_model, weight_levels_used
from edgecnn.passes.registry import PassContext, get_pass, run_pass


pytestmark = pytest.mark.usefixtures("torch_one_thread")


class ResidualConcatNet(nn.Module):
    """conv -> (residual add) -> two branches concatenated -> linear: every placement case."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 3, padding=1)
        self.body = nn.Conv2d(16, 16, 3, padding=1)
        self.left = nn.Conv2d(16, 8, 1)
        self.right = nn.Conv2d(16, 16, 3, padding=1, groups=16)
        self.head = nn.Conv2d(24, 16, 1)
        self.fc = nn.Linear(16, 10)

    def forward(self, x):
        x = F.relu(self.stem(x))
        x = x + self.body(x)
        x = torch.cat([F.relu(self.left(x)), F.relu(self.right(x))], 1)
        x = F.relu(self.head(x))
        return self.fc(x.mean((2, 3)))


def calib(n=2, size=16, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(4, 3, size, size, generator=gen) for _ in range(n)]


def make(seed=0):
    torch.manual_seed(seed)
    return ResidualConcatNet().eval()


@pytest.mark.parametrize("bits", [4, 6, 8])
def test_weights_sit_on_at_most_2_pow_bits_minus_1_levels(bits):
    model, report = quantize_model(make(), QuantConfig(bits=bits, depthwise_bits=bits), calib(), progress=False)
    limit = 2 ** (bits - 1) - 1
    for name, layer in quant_layers(model):
        q = layer.weight_quantizer
        ints = q.integers(layer.weight).reshape(layer.weight.shape[0], -1)
        assert ints.abs().max() <= limit
        # Baked weights are exactly integers times the per-channel scale.
        scale = (q.amax / limit).reshape(-1, *([1] * (layer.weight.dim() - 1)))
        assert torch.allclose(layer.weight, torch.round(layer.weight / scale) * scale, atol=1e-6)
        assert weight_levels_used(layer) <= 2**bits - 1
    assert all(r["weight_bits"] == bits for r in report.rows)
    assert {r["name"] for r in report.rows} == {"stem", "body", "left", "right", "head", "fc"}


def test_low_bit_default_keeps_depthwise_weights_at_8_bit_and_corrects_bias():
    model, report = quantize_model(make(), QuantConfig(bits=6), calib(), progress=False)
    bits = {r["name"]: r["weight_bits"] for r in report.rows}
    assert bits.pop("right") == 8  # the depthwise conv
    assert set(bits.values()) == {6}
    assert report.summary["bias_correction"] is True
    assert any("bias_shift" in r for r in report.rows)
    _, report8 = quantize_model(make(), QuantConfig(bits=8), calib(), progress=False)
    assert report8.summary["bias_correction"] is False and report8.summary["depthwise_bits"] == 8


@pytest.mark.parametrize("target", ["trt", "ort-x86", "ort-arm"])
def test_fake_quant_conv_equals_integer_reference(target):
    torch.manual_seed(1)
    conv = QuantConv2d(4, 6, 3, padding=1, bits=8)
    conv.weight_quantizer.set_amax(conv.weight.detach().abs().amax((1, 2, 3)))
    x = torch.relu(torch.randn(2, 4, 8, 8)) if target != "trt" else torch.randn(2, 4, 8, 8)
    conv.input_quantizer.set_amax(x.abs().max() * 0.9, nonnegative=bool((x >= 0).all()))
    set_target(conv, target)
    with torch.no_grad():
        out = conv(x)
        s_x, zp, qmin, qmax = conv.input_quantizer.encoding()
        x_int = (torch.round(x / s_x) + zp).clamp(qmin, qmax).long() - int(zp)
        s_w = conv.weight_quantizer.encoding()[0]
        w_int = torch.round(conv.weight / s_w.view(-1, 1, 1, 1)).clamp(-127, 127).long()
        # int32 accumulation, then one rescale by s_x * s_w[c], then the float bias.
        acc = F.conv2d(x_int.double(), w_int.double(), padding=1)
        assert torch.equal(acc, acc.round()) and acc.abs().max() < 2**31
        ref = acc * (s_x.double() * s_w.double()).view(1, -1, 1, 1) + conv.bias.double().view(1, -1, 1, 1)
    assert torch.allclose(out.double(), ref, atol=1e-4, rtol=1e-5)


def test_targets_switch_the_encoding_not_the_range():
    q = TensorQuantizer(8)
    q.set_amax(2.55, nonnegative=True, one_sided=2.55)
    x = torch.linspace(0, 2.55, 256)
    set_target(q, "ort-x86")
    _, zp, qmin, qmax = q.encoding()
    assert int(zp) == 0 and (qmin, qmax) == (0, 255)
    x86 = q(x)
    set_target(q, "ort-arm")
    assert int(q.encoding()[1]) == -128
    assert torch.equal(q(x), x86)  # same 256-level grid, other storage
    set_target(q, "trt")
    scale, zp, qmin, qmax = q.encoding()
    assert int(zp) == 0 and (qmin, qmax) == (-128, 127)
    assert len(torch.unique(q(x))) == 128  # symmetric: half the levels for a one-sided tensor


def test_placement_quantizes_residual_and_shares_concat_scale():
    model, report = quantize_model(make(), QuantConfig(), calib(), progress=False)
    assert report.summary["graph_quantizers"] == 2
    modules = dict(model.named_modules(remove_duplicate=False))
    # The concat's consumer reads through the concat's own quantizer (one scale).
    shared = [m for n, m in modules.items() if n.startswith("graph_quantizers.concat")]
    assert len(shared) == 1 and modules["head"].input_quantizer is shared[0]
    # The residual Add reuses the quantizer of the conv reading the same tensor.
    assert "body.input_quantizer" in model.code


def test_untraceable_model_still_quantizes_layers():
    class Dynamic(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3)

        def forward(self, x):
            if x.sum() > 0:  # data-dependent control flow: fx cannot trace it
                return self.conv(x)
            return self.conv(-x)

    model, report = quantize_model(Dynamic().eval(), QuantConfig(), calib(), progress=False)
    assert isinstance(model.conv, QuantConv2d)
    assert "not fx-traceable" in report.summary["placement_warning"]


def test_int8_is_close_to_float():
    model = make()
    x = calib(seed=3)[0]
    ref = model(x)
    qmodel, _ = quantize_model(model, QuantConfig(bits=8, calibrator="max"), calib(), progress=False)
    out = qmodel(x)
    assert ((out - ref).norm() / ref.norm()) < 0.05


@pytest.mark.parametrize(
    "raw, needle",
    [
        ({"bits": 5}, "'bits': Input should be 4, 6, 7 or 8"),
        ({"activation_bits": 6}, "activation_bits"),
        ({"calibrator": "kl"}, "calibrator"),
        ({"bitz": 8}, "bitz"),
    ],
)
def test_bad_configs_are_one_line_errors(raw, needle):
    with pytest.raises(UserError) as err:
        get_pass("quantize").make_config(raw)
    assert needle in str(err.value) and "\n" not in str(err.value)


def test_unknown_layer_names_and_missing_data_are_one_line_errors():
    with pytest.raises(UserError, match="matches no layer") as err:
        run_pass("quantize", make(), {"include": ["features.*"]}, PassContext(calib_batches=calib()))
    assert "\n" not in str(err.value)
    with pytest.raises(UserError, match="calibration") as err:
        run_pass("quantize", make(), {}, PassContext())
    assert "\n" not in str(err.value)


def test_pass_reports_rows_and_respects_excludes():
    ctx = PassContext(calib_batches=calib(), progress=False)
    model = run_pass("quantize", make(), {"bits": 6, "depthwise_bits": 6, "exclude": ["fc"], "skip_first_last": False}, ctx)
    report = ctx.reports[-1]
    assert report.name == "quantize"
    assert not isinstance(model.fc, TensorQuantizer) and "fc" not in {r["name"] for r in report.rows}
    row = next(r for r in report.rows if r["name"] == "right")
    assert row["kind"] == "depthwise" and row["weight_bits"] == 6 and row["act_scale"] > 0
    assert 0 < row["weight_levels"] <= 63


def test_sensitivity_keeps_the_worst_layers_at_8_bit():
    config = QuantConfig(bits=4, depthwise_bits=4, sensitivity={"keep_top_k": 2, "batches": 1})
    model, report = quantize_model(make(), config, calib(), progress=False)
    kept = [r for r in report.rows if r["kept"]]
    assert len(kept) == 2 and all(r["weight_bits"] == 8 for r in kept)
    others = [r for r in report.rows if not r["kept"]]
    assert all(r["weight_bits"] == 4 for r in others)
    assert min(r["sensitivity"] for r in kept) >= max(r["sensitivity"] for r in others)


def _four_bit_conv(seed=0):
    torch.manual_seed(seed)
    conv = QuantConv2d(8, 8, 3, padding=1, bits=4)
    conv.weight_quantizer.set_amax(conv.weight.detach().abs().amax((1, 2, 3)))
    conv.input_quantizer.enabled = False
    return conv


def test_learned_rounding_beats_nearest_on_the_layer_output():
    conv = _four_bit_conv()
    # Smooth, correlated inputs: for white noise nearest rounding is already optimal.
    x = F.interpolate(torch.randn(8, 8, 4, 4, generator=torch.Generator().manual_seed(3)), size=12, mode="bilinear") + 0.5
    with torch.no_grad():
        target = F.conv2d(x, conv.weight, conv.bias, padding=1)
        nearest_error = float((conv(x) - target).pow(2).mean())
    changed = adaround_layer(conv, x, x, iters=60, batch=8)
    assert changed > 0
    assert weight_levels_used(conv) <= 15  # still on the 4-bit grid
    with torch.no_grad():
        learned_error = float((conv(x) - target).pow(2).mean())
    assert learned_error < 0.9 * nearest_error


def test_bias_correction_removes_the_mean_output_shift():
    conv = _four_bit_conv(seed=1)
    float_weight = conv.weight.detach().clone()
    x = torch.randn(8, 8, 12, 12, generator=torch.Generator().manual_seed(4)) + 0.5  # non-zero mean input
    def shift():
        with torch.no_grad():
            return (conv(x) - F.conv2d(x, float_weight, original_bias, padding=1)).mean((0, 2, 3)).abs().max()
    original_bias = conv.bias.detach().clone()
    before = shift()
    bias_correction(conv, [x])
    assert shift() < 0.1 * before


def test_qat_steps_train_through_the_quantizers():
    teacher = make()
    model, report = quantize_model(make(), QuantConfig(bits=6, mode="qat", qat_steps=3, qat_lr=1e-3), calib(), teacher=teacher, progress=False)
    assert report.summary["mode"] == "qat"
    assert not torch.equal(model.stem.weight, teacher.stem.weight)
    x = calib(seed=5)[0]
    x.requires_grad_(True)
    model(x).sum().backward()  # straight-through: gradients reach the input
    assert x.grad is not None and x.grad.abs().sum() > 0
