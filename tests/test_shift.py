"""Shift pass: exact forward, exact ONNX export of every deploy form, zoo models substituted."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn as nn

from edgecnn.errors import UserError
from edgecnn.passes.registry import PassContext, run_pass
from edgecnn.passes.shift import (ActiveShift, Shift, balanced_taps, choose_taps, even_taps, freeze_shifts, l1_penalty,
                                  reference_shift)


def _offsets(taps, kernel):
    return [(ty - kernel // 2, tx - kernel // 2) for ty, tx in taps.tolist()]


@pytest.mark.parametrize("kernel,stride", [(3, 1), (3, 2), (5, 1)])
@pytest.mark.parametrize("deploy", ["onehot_dwconv", "pad_slice"])
def test_shift_equals_roll_and_zero_pad(kernel, stride, deploy):
    torch.manual_seed(0)
    x = torch.randn(2, 23, 9, 10)
    taps = torch.randint(0, kernel, (23, 2))
    expected = reference_shift(x, _offsets(taps, kernel), stride)
    assert torch.equal(Shift(23, kernel, taps, stride, deploy=deploy)(x), expected)
    active = ActiveShift(23, kernel, taps, stride).train()
    assert torch.equal(active(x), expected)  # STE forward = integer shift
    assert torch.equal(active.eval()(x), expected)


def test_even_and_balanced_split_channels_evenly():
    taps = even_taps(20, 3)
    counts = torch.bincount(taps[:, 0] * 3 + taps[:, 1], minlength=9)
    assert counts.tolist() == [2, 2, 2, 2, 4, 2, 2, 2, 2]  # remainder on the centre tap
    energy = torch.zeros(20, 9)
    energy[7, 0] = 5.0  # channel 7 lives at the top-left tap
    balanced = balanced_taps(energy, 3)
    assert torch.equal(torch.bincount(balanced[:, 0] * 3 + balanced[:, 1], minlength=9), counts)
    assert balanced[7].tolist() == [0, 0]


def test_active_shift_gets_offset_gradients_and_l1():
    torch.manual_seed(0)
    model = nn.Sequential(ActiveShift(4, 3, torch.full((4, 2), 1), ste=False))
    model.train()
    model[0].offset.data += 0.3
    x = torch.randn(1, 4, 8, 8)
    model(x).square().sum().backward()
    assert model[0].offset.grad.abs().sum() > 0
    assert float(l1_penalty(model)) == pytest.approx(8 * 0.3, rel=1e-5)
    frozen = freeze_shifts(model)
    assert isinstance(frozen[0], Shift)


def _export_and_run(module, x, path):
    import onnxruntime as ort

    torch.onnx.export(module.eval(), x, str(path), opset_version=17, input_names=["x"], dynamo=False)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {"x": x.numpy()})[0]


@pytest.mark.parametrize("deploy,assign,padding", [
    ("onehot_dwconv", "balanced", 1), ("onehot_dwconv", "even", "same"),
    ("pad_slice", "even", 1), ("pad_slice", "balanced", "same"), ("pad_slice", "dominant", 1),
])
def test_every_deploy_form_exports_bit_exact(tmp_path, deploy, assign, padding):
    torch.manual_seed(1)
    channels = 30
    taps = choose_taps(assign, torch.rand(channels, 9), 3)
    shift = Shift(channels, 3, taps, stride=2, padding=padding, deploy=deploy)
    x = torch.randn(1, channels, 15, 16) * 1e3
    out = _export_and_run(shift, x, tmp_path / "s.onnx")
    assert np.array_equal(out, shift(x).numpy())


def test_dominant_taps_keep_each_channels_strongest_tap():
    energy = torch.zeros(5, 9)
    energy[torch.arange(5), torch.tensor([4, 4, 0, 8, 5])] = 1.0
    assert choose_taps("dominant", energy, 3).tolist() == [[1, 1], [1, 1], [0, 0], [2, 2], [1, 2]]
    assert choose_taps("even", energy, 3).shape == (5, 2)


def test_onehot_form_survives_8bit_per_channel_weight_quantization():
    conv = Shift(16, 3, even_taps(16, 3)).to_conv()
    w = conv.weight.detach()
    scale = w.abs().amax(dim=(1, 2, 3)) / 127
    q = torch.fake_quantize_per_channel_affine(w, scale, torch.zeros(16, dtype=torch.int32), 0, -127, 127)
    assert torch.equal(q, w)
    x = torch.randn(1, 16, 7, 7)
    assert torch.equal(conv(x), Shift(16, 3, even_taps(16, 3))(x))


@pytest.mark.slow
@pytest.mark.parametrize("name,options,expected_kind", [
    ("squeezenet1_1", {}, "conv"),
    ("mobilenet_v2", {"width_mult": 0.35, "tf_padding": True}, "depthwise"),
    ("shufflenet_v2_x0_5", {}, "depthwise"),
])
def test_zoo_models_shift_run_export_and_profile(tmp_path, name, options, expected_kind):
    from edgecnn.measure.profile import profile_model
    from edgecnn.models import create

    torch.manual_seed(0)
    model = create(name, num_classes=10, **options).eval()
    before = profile_model(model, 64)
    x = torch.randn(2, 3, 64, 64)
    ctx = PassContext(example_input=x[:1])
    shifted = run_pass("shift", model, {}, ctx)
    report = ctx.reports[-1]
    assert report.summary["layers_replaced"] > 0
    assert {r["kind"] for r in report.rows if "params_before" in r} == {expected_kind}
    after = profile_model(shifted, 64)
    assert after.macs < before.macs and after.params < before.params
    assert not any(isinstance(m, nn.Conv2d) and m.groups == m.in_channels > 4 and m.kernel_size[0] > 1
                   for m in shifted.modules())
    out = _export_and_run(shifted, x[:1], tmp_path / "m.onnx")
    np.testing.assert_allclose(out, shifted(x[:1]).detach().numpy(), rtol=1e-4, atol=1e-4)


def test_squeezenet_fire_expand_gets_nine_times_fewer_params():
    from edgecnn.models import create

    model = create("squeezenet1_1")
    ctx = PassContext()
    run_pass("shift", model, {"include": ["features.3.expand3x3"]}, ctx)
    row = ctx.reports[-1].rows[0]
    assert row["params_before"] == 16 * 64 * 9 + 64 and row["params_after"] == 16 * 64 + 64


def test_least_squares_init_beats_plain_init():
    """With calibration data the kept 1x1 weights fit the replaced conv better."""
    torch.manual_seed(0)
    conv = nn.Conv2d(8, 16, 3, padding=1)
    x = torch.randn(4, 8, 12, 12).cumsum(-1) / 4  # spatially correlated input
    target = conv(x).detach()
    errors = []
    for calib in (None, [x]):
        model = nn.Sequential(nn.Conv2d(8, 8, 1), nn.Identity())
        model[0] = conv
        import copy

        shifted = run_pass("shift", copy.deepcopy(model), {}, PassContext(calib_batches=calib))
        errors.append(float((shifted(x) - target).norm()))
    assert errors[1] < 0.9 * errors[0]


def test_bad_layer_pattern_is_a_user_error():
    from edgecnn.models import create

    with pytest.raises(UserError, match="matches no layer"):
        run_pass("shift", create("squeezenet1_1"), {"include": ["nope.*"]}, PassContext())
