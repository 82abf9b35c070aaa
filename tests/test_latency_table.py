"""The latency table's arithmetic (edgecnn.search.probes.calibrate, LatencyTable.predict), on
fake probe times: what a uniform setting is calibrated to, what a precision change costs."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from edgecnn.search.probes import calibrate, net_times
from edgecnn.search.space import PRECISIONS, build_space

CALL, QUANTIZE = 0.02, 0.03  # ms: a bare session call, and one that also quantizes the input


def depthwise_model() -> nn.Module:
    """Full conv -> depthwise conv -> pointwise conv: W7A8 keeps the depthwise one at W8A8."""
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1, groups=8), nn.ReLU(),
                         nn.Conv2d(8, 16, 1))


def fake_raw(space) -> dict:
    """Raw probe ms per layer: net layer times (1, 2, 3 ms at fp32, faster at lower precision)
    plus what every probe pays (the call) and every int8 probe pays (quantizing its input)."""
    speed = {"fp32": 1.0, "w8a8": 0.6, "w7a8": 0.5, "w6a8": 0.5}
    raw = {}
    for i, layer in enumerate(space.layers, start=1):
        probes = {p: i * speed[p] + CALL + (QUANTIZE if p != "fp32" else 0.0) for p in PRECISIONS}
        probes["w7a8-to-fp32"] = i * 0.8 + CALL + QUANTIZE
        raw[layer] = {"call": CALL, "quantize": CALL + QUANTIZE, **probes}
    return raw


@pytest.fixture(scope="module")
def space():
    space = build_space(depthwise_model().eval(), torch.zeros(1, 3, 8, 8))
    assert space.layer_kinds[space.layers[1]] == "depthwise"
    assert space.precision_of(space.uniform("w7a8"), space.layers[1]) == "w8a8"
    return space


def test_net_times_remove_the_call_from_every_probe_and_the_input_quantization_from_int8_ones():
    net = net_times({"call": 0.1, "quantize": 0.15, "fp32": 1.1, "w8a8": 0.75, "w7a8-to-fp32": 0.95, "pruned-int8": 0.45})
    assert net == pytest.approx({"fp32": 1.0, "w8a8": 0.6, "w7a8-to-fp32": 0.8, "pruned-int8": 0.3})


def test_every_uniform_setting_predicts_its_measured_time_with_depthwise_at_w8a8(space):
    whole = {"fp32": 9.0, "w8a8": 5.0, "w7a8": 4.0, "w6a8": 3.9}
    table = calibrate(space, fake_raw(space), PRECISIONS, whole)
    for precision, ms in whole.items():
        assert table.predict(space, space.uniform(precision)) == pytest.approx(ms), precision


def test_w7a8_calibration_scales_only_its_own_layers(space):
    whole = {"fp32": 9.0, "w8a8": 5.0, "w7a8": 4.0}
    table = calibrate(space, fake_raw(space), ["fp32", "w8a8", "w7a8"], whole)
    depthwise = space.layers[1]
    # The depthwise conv runs at W8A8 in uniform W7A8: its time is W8A8's calibrated one.
    assert table.layer_ms[depthwise]["w8a8"] == pytest.approx(2 * 0.6 * table.scale["w8a8"])
    own = table.layer_ms[space.layers[0]]["w7a8"] + table.layer_ms[space.layers[2]]["w7a8"]
    expected = whole["w7a8"] - CALL - QUANTIZE - table.layer_ms[depthwise]["w8a8"]
    assert own == pytest.approx(expected)


def test_a_change_from_float_to_int8_costs_its_measured_quantization(space):
    table = calibrate(space, fake_raw(space), ["fp32", "w8a8"], {"fp32": 9.0, "w8a8": 5.0})
    first, middle, last = space.layers
    mixed = {**space.uniform("w8a8"), f"q:{first}": "fp32"}  # fp32 -> int8 at the middle layer
    ms = table.layer_ms
    assert table.boundary_ms[middle] == pytest.approx(QUANTIZE)
    expected = CALL + ms[first]["fp32"] + QUANTIZE + ms[middle]["w8a8"] + ms[last]["w8a8"]
    assert table.predict(space, mixed) == pytest.approx(expected)
    # int8 -> fp32 is paid through the float-consumer factor, not as a second boundary
    back = {**space.uniform("w8a8"), f"q:{last}": "fp32"}
    factor = table.float_consumer_factor[middle]
    assert factor == pytest.approx(1.6 / 1.0)
    expected = CALL + QUANTIZE + ms[first]["w8a8"] + ms[middle]["w8a8"] * factor + ms[last]["fp32"]
    assert table.predict(space, back) == pytest.approx(expected)
