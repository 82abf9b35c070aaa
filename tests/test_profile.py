"""The profiler reproduces the papers' params and MACs (multiply-adds) at their rounding."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from edgecnn.measure.profile import kind_shares, profile_model
from edgecnn.models import create


def zoo_profile(name, input_size=224, **options):
    return profile_model(create(name, **options), input_size)


def conv_linear_params(prof) -> int:
    return sum(entry["params"] for entry in prof.by_kind.values())


def within_rounding(value: float, paper: float, unit: float) -> bool:
    """The paper's figure is ``value`` rounded or truncated to ``unit`` (one unit of slack)."""
    return abs(value - paper) <= unit


# (model, options, input size, paper M MACs, paper M params or None)
PAPER_FIGURES = [
    # MobileNetV1 (Howard et al. 2017), Tables 6 and 7.
    ("mobilenet_v1", {}, 224, 569, 4.2),
    ("mobilenet_v1", {"width_mult": 0.75}, 224, 325, 2.6),
    ("mobilenet_v1", {"width_mult": 0.5}, 224, 149, 1.3),
    ("mobilenet_v1", {"width_mult": 0.25}, 224, 41, 0.5),
    ("mobilenet_v1", {}, 192, 418, None),
    ("mobilenet_v1", {}, 160, 290, None),
    ("mobilenet_v1", {}, 128, 186, None),
    ("mobilenet_v1", {"width_mult": 0.5}, 160, 76, 1.32),
    # MobileNetV2 (Sandler et al. 2018), Table 4; params checked separately below.
    ("mobilenet_v2", {}, 224, 300, None),
    # MobileNetV3 (Howard et al. 2019), Table 3; Large MACs checked separately below.
    ("mobilenet_v3_large", {}, 224, None, 5.4),
    ("mobilenet_v3_small", {}, 224, 56, 2.5),
    # ShuffleNetV2 (Ma et al. 2018), Table 5; MACs checked separately below.
    ("shufflenet_v2_x1_5", {}, 224, None, 3.5),
    ("shufflenet_v2_x2_0", {}, 224, None, 7.4),
    # ShuffleNetV1 (Zhang et al. 2017), Tables 1, 2 and 8 / the authors' released models.
    ("shufflenet_v1", {"groups": 3, "width_mult": 1.5}, 224, 292, 3.4),
    ("shufflenet_v1", {"groups": 3, "width_mult": 2.0}, 224, 524, 5.4),
    ("shufflenet_v1", {"groups": 4, "width_mult": 0.5}, 224, 38, None),
    ("shufflenet_v1", {"groups": 1}, 224, 143, None),
    ("shufflenet_v1", {"groups": 3}, 224, 137, None),
]


@pytest.mark.parametrize("name,options,size,paper_macs,paper_params", PAPER_FIGURES)
def test_paper_figures(name, options, size, paper_macs, paper_params):
    prof = zoo_profile(name, size, **options)
    if paper_macs is not None:
        # MobileNetV1 0.5 at 224 is 149.5 M and 1.0 at 160 is 290.7 M: the paper truncates.
        assert within_rounding(prof.macs / 1e6, paper_macs, 1.0), (prof.macs / 1e6, paper_macs)
    if paper_params is not None:
        # The papers count conv and linear weights and biases, not BatchNorm scale/shift.
        params = conv_linear_params(prof)
        unit = 0.01 if paper_params == 1.32 else 0.1
        assert within_rounding(params / 1e6, paper_params, unit), (params / 1e6, paper_params)


def test_squeezenet1_0_has_exactly_the_papers_params():
    assert zoo_profile("squeezenet1_0").params == 1_248_424


def test_mobilenet_v1_resources_per_layer_type_match_table2():
    """MobileNet paper, Table 2: 1x1 convs hold 94.86 % of mult-adds and 74.59 % of params.

    Its first-conv MAC share (1.19 %) is not reproducible: the paper's four MAC shares add up
    to 99.29 %, while the 3x3 stem of the described network is 10.8 M MACs = 1.91 %.
    """
    shares = kind_shares(zoo_profile("mobilenet_v1"))
    assert shares["pointwise"][0] == pytest.approx(94.86, abs=0.01)
    assert shares["depthwise"][0] == pytest.approx(3.06, abs=0.01)
    assert shares["linear"][0] == pytest.approx(0.18, abs=0.01)
    # Params: the paper's classifier has 1001 outputs (background class), ours 1000.
    assert shares["pointwise"][1] == pytest.approx(74.59, abs=0.05)
    assert shares["depthwise"][1] == pytest.approx(1.06, abs=0.01)
    assert shares["conv"][1] == pytest.approx(0.02, abs=0.01)
    assert shares["linear"][1] == pytest.approx(24.33, abs=0.05)


def test_mobilenet_v2_params():
    """The paper's 3.4 M excludes BatchNorm (3.47 M conv/linear params, truncated); the
    torchvision-compatible model has 3,504,872 with BatchNorm.

    The 1.4 model (every layer x1.4, last conv 1792) has 6.1 M params and 582 M MACs, as the
    authors' released TF-slim checkpoint table lists (6.06 M, 582 M); the paper's Table 4
    says 6.9 M and 585 M, which the architecture it describes does not reach.
    """
    prof = zoo_profile("mobilenet_v2")
    assert prof.params == 3_504_872
    assert within_rounding(conv_linear_params(prof) / 1e6, 3.4, 0.1)
    wide = zoo_profile("mobilenet_v2", width_mult=1.4)
    assert within_rounding(wide.params / 1e6, 6.1, 0.05)
    assert round(wide.macs / 1e6) == 582
    assert abs(wide.macs / 1e6 - 585) < 0.005 * 585


def test_mobilenet_v3_large_macs():
    """Counting conv + linear MACs gives 216.6 M for Large (paper: 219 M) and 56.5 M for Small
    (paper: 56 M). Large's 219 M is reached (218.7 M) only by also counting one multiply per
    h-swish output and per SE channel scaling, but that rule makes Small 57.6 M, not 56 M: the
    paper did not count both alike. We keep the conv + linear convention for every model.
    """
    from edgecnn.models.mobilenet_v3 import SqueezeExcitation

    model = create("mobilenet_v3_large")
    elementwise = []
    for m in model.modules():
        if isinstance(m, (nn.Hardswish, SqueezeExcitation)):
            m.register_forward_hook(lambda mod, inp, out: elementwise.append(out[0].numel()))
    prof = profile_model(model, 224)
    assert prof.macs / 1e6 == pytest.approx(216.6, abs=0.05)
    assert round((prof.macs + sum(elementwise)) / 1e6) == 219


@pytest.mark.parametrize("name,paper", [("shufflenet_v2_x1_5", 299), ("shufflenet_v2_x2_0", 591)])
def test_shufflenet_v2_macs(name, paper):
    """torchvision's ShuffleNetV2 (which our layout must equal) splits the first stride-2 unit
    of stage 2 evenly: shortcut branch 1x1 conv 24 -> c/2, main branch last 1x1 c/2 -> c/2.
    The authors' released model gives the shortcut 24 -> 24 and the main branch c/2 -> c - 24.
    Adding exactly that difference to our count reproduces the paper's figure.
    """
    prof = zoo_profile(name)
    c = {"shufflenet_v2_x1_5": 176, "shufflenet_v2_x2_0": 244}[name]
    pixels = 28 * 28  # output of stage 2's first unit at 224
    ours = 24 * (c // 2) + (c // 2) * (c // 2)
    authors = 24 * 24 + (c // 2) * (c - 24)
    assert round((prof.macs + (authors - ours) * pixels) / 1e6) == paper
    assert abs(prof.macs / 1e6 - paper) < 0.015 * paper


def test_shufflenet_v1_1x_g8():
    """The paper gives ShuffleNet 1x (g=8) as 137 M (Table 1) and 140 M (Tables 2 and 5); the
    network it describes has 138.4 M MACs."""
    macs = zoo_profile("shufflenet_v1", groups=8).macs / 1e6
    assert 137 <= macs <= 140


def test_profile_rows_and_kinds_on_a_real_model():
    model = create("shufflenet_v1", groups=3, width_mult=0.5, num_classes=10)
    prof = profile_model(model, 64)
    assert prof.macs == sum(r.macs for r in prof.rows)
    assert prof.params == sum(p.numel() for p in model.parameters())
    assert set(prof.by_kind) == {"conv", "pointwise", "group", "depthwise", "linear"}
    first = prof.rows[0]
    assert first.name == "conv1.0" and first.kind == "conv" and first.out_shape == (12, 32, 32)
    assert first.macs == 12 * 32 * 32 * 3 * 9 and first.params == 12 * 3 * 9
    assert prof.rows[-1].name == "fc" and prof.rows[-1].macs == prof.rows[-1].params - 10
    assert model.training  # the profiler restores the mode it found
    as_dict = prof.to_dict()
    assert as_dict["macs"] == prof.macs and as_dict["rows"][0]["out_shape"] == [12, 32, 32]


def test_profile_counts_nonzero_params():
    model = create("mobilenet_v1", width_mult=0.25, num_classes=10)
    with torch.no_grad():
        model.features[1][3].weight.zero_()
    prof = profile_model(model, 32)
    assert prof.nonzero_params <= prof.params - model.features[1][3].weight.numel()


def test_profile_of_a_meta_model_matches_the_real_one():
    with torch.device("meta"):
        meta_model = create("squeezenet1_1")
    meta = profile_model(meta_model, 96)
    real = profile_model(create("squeezenet1_1"), 96)
    assert (meta.params, meta.macs, len(meta.rows)) == (real.params, real.macs, len(real.rows))
