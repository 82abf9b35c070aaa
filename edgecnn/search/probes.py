"""Every layer timed in isolation in ONNX Runtime, at each precision and kept-channel shape.

A probe graph is the layer followed by a per-channel 1x1 (depthwise) conv, so that in the
Q/DQ form the layer's output is quantized as it is inside a network (ORT fuses a conv into
QLinearConv only then); the FP32 probe has the same follower. Its input is the layer's
real input shape, its quantizer is calibrated on the layer's real inputs. Probes of one
layer are timed together through the one timer (:mod:`edgecnn.measure.interleave`), with two
bare probes: an Identity graph (the cost of a session call, which every probe pays and a layer
inside a network does not) and a QuantizeLinear of the layer's input (the cost of a float ->
int8 change of precision there, which an int8 layer inside an int8 chain does not pay).

Isolation misses what the whole graph shares (ORT's layout changes, pools, adds, concats), so
each precision's layer times are scaled so that the uniform configuration predicts its
measured whole-model latency (:func:`calibrate`); ``bench/latency_check.py`` measures the
table's error on configurations it was not calibrated on.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Optional

import torch
import torch.nn as nn

from edgecnn.models.layer_select import visit_layer_inputs
from edgecnn.search import latency as lat
from edgecnn.search.space import BITS, Space, quantize_per_layer
from edgecnn.targets import DEFAULT_TARGET


class _Probe(nn.Module):
    def __init__(self, layer: nn.Module):
        super().__init__()
        self.layer = layer
        channels = layer.out_channels if isinstance(layer, nn.Conv2d) else layer.out_features
        self.follower = nn.Conv2d(channels, channels, 1, groups=channels)
        nn.init.ones_(self.follower.weight)
        nn.init.zeros_(self.follower.bias)

    def forward(self, x):
        if isinstance(self.layer, nn.Linear):
            return self.follower(self.layer(x.flatten(1))[:, :, None, None])
        return self.follower(torch.relu(self.layer(x)))


def layer_inputs(model: nn.Module, layers: list[str], images: torch.Tensor) -> dict[str, torch.Tensor]:
    """Each layer's input on ``images`` (4-D; a linear layer's input as N x C x 1 x 1)."""
    captured = {}

    def keep(name: str, _layer: nn.Module, x: torch.Tensor) -> None:
        captured[name] = x if x.dim() == 4 else x.reshape(x.shape[0], -1, 1, 1)

    modules = dict(model.named_modules())
    visit_layer_inputs(model, [(name, modules[name]) for name in layers], [images], keep)
    return captured


def _resized(layer: nn.Module, fin: float, fout: float) -> nn.Module:
    """A layer of the same kind with round(fraction x channels) in / out (timing only)."""
    if isinstance(layer, nn.Linear):
        return nn.Linear(max(1, round(layer.in_features * fin)), max(1, round(layer.out_features * fout)))
    cin, cout = max(1, round(layer.in_channels * fin)), max(1, round(layer.out_channels * fout))
    groups = cin if layer.groups > 1 else 1
    cout = cin if layer.groups > 1 else cout
    new = copy.deepcopy(layer)
    new.in_channels, new.out_channels, new.groups = cin, cout, groups
    new.weight = nn.Parameter(torch.randn(cout, cin // groups, *layer.kernel_size) * 0.1)
    if layer.bias is not None:
        new.bias = nn.Parameter(torch.zeros(cout))
    return new


def export(model: nn.Module, path: Path, size: int, target: str, channels: int = 3, height: Optional[int] = None) -> Path:
    """Q/DQ ONNX when ``model`` has quantized layers, else FP32; dynamic batch."""
    from edgecnn.export.onnx_export import export_onnx
    from edgecnn.export.qdq import export_qdq_report
    from edgecnn.passes.quant.quantizers import quant_layers

    shape = (1, channels, height or size, size)
    if quant_layers(model):
        return export_qdq_report(model, path, target=target, input_shape=shape, batch="dynamic", parity=False).path
    return export_onnx(model, path, input_shape=shape, batch="dynamic", parity=False)


def _export_probe(layer: nn.Module, x: torch.Tensor, precision: str, path: Path, target: str, float_follower: bool = False) -> Path:
    """``float_follower``: the consumer stays float, so the layer's output is not quantized (in
    ORT an int8 conv then runs as DequantizeLinear + float conv: what an int8 layer costs
    before an FP32 one)."""
    probe = _Probe(copy.deepcopy(layer)).eval()
    bits = BITS[precision]
    if bits:
        probe = quantize_per_layer(probe, {"layer": bits} if float_follower else {"layer": bits, "follower": 8}, [x], target)
    return export(probe, path, x.shape[-1], target, channels=x.shape[1], height=x.shape[-2])


def _variants(space: Space, layer: str, precisions, pruned: dict) -> dict[str, tuple]:
    """name -> (precision, in fraction, out fraction, shifted, float consumer) of the probes of one layer."""
    out = {p: (p, 1.0, 1.0, False, False) for p in precisions}
    if "w7a8" in precisions:
        out["w7a8-to-fp32"] = ("w7a8", 1.0, 1.0, False, True)
    fin, fout = space.channel_factors(pruned, layer) if pruned else (1.0, 1.0)
    if (fin, fout) != (1.0, 1.0):
        out["pruned-fp32"] = ("fp32", fin, fout, False, False)
        out["pruned-int8"] = ("w7a8", fin, fout, False, False)
    if any(u.kind == "shift" and u.layer == layer for u in space.units):
        out["shifted-fp32"] = ("fp32", 1.0, 1.0, True, False)
        out["shifted-int8"] = ("w7a8", 1.0, 1.0, True, False)
    return out


def _shift_stand_in(layer: nn.Module) -> nn.Module:
    """What remains of a shifted conv in compute: a 1x1 conv (full conv) or a per-channel copy (depthwise)."""
    if layer.groups > 1:
        return nn.Conv2d(layer.in_channels, layer.in_channels, 1, stride=layer.stride, groups=layer.in_channels)
    return nn.Conv2d(layer.in_channels, layer.out_channels, 1, stride=layer.stride)


def _bare_probe(x: torch.Tensor, quantize: bool, path: Path) -> Path:
    """A graph with no layer: Identity (what one session call costs) or a QuantizeLinear of the
    layer's input (what a float -> int8 change of precision costs at its input)."""
    import onnx
    from onnx import TensorProto, helper

    shape = [1, *x.shape[1:]]
    if quantize:
        nodes = [helper.make_node("QuantizeLinear", ["x", "scale", "zero"], ["y"])]
        inits = [helper.make_tensor("scale", TensorProto.FLOAT, [], [0.05]), helper.make_tensor("zero", TensorProto.UINT8, [], [128])]
        out = helper.make_tensor_value_info("y", TensorProto.UINT8, shape)
    else:
        nodes, inits = [helper.make_node("Identity", ["x"], ["y"])], []
        out = helper.make_tensor_value_info("y", TensorProto.FLOAT, shape)
    graph = helper.make_graph(nodes, "probe", [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)], [out], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


def time_layer(name: str, layer: nn.Module, x: torch.Tensor, variants: dict, work: Path, target: str, timer) -> dict[str, float]:
    """Median ms of every probe variant of one layer, and of the two bare probes ("call": one
    session call, "quantize": quantizing its input), timed together in one interleaved run."""
    safe = name.replace("/", "_")
    paths = {"call": str(_bare_probe(x, False, work / f"probe-{safe}-call.onnx")),
             "quantize": str(_bare_probe(x, True, work / f"probe-{safe}-quantize.onnx"))}
    for key, (precision, fin, fout, shifted, float_follower) in variants.items():
        module = _shift_stand_in(layer) if shifted else (_resized(layer, fin, fout) if (fin, fout) != (1.0, 1.0) else layer)
        xin = x if fin == 1.0 else torch.randn(x.shape[0], module.in_channels if isinstance(module, nn.Conv2d) else module.in_features, *x.shape[2:]).abs()
        paths[key] = str(_export_probe(module, xin, precision, work / f"probe-{safe}-{key}.onnx", target, float_follower))
    return {k: v.median_ms for k, v in timer.time(paths).items()}


def build_table(model: nn.Module, space: Space, images: torch.Tensor, precisions, whole_ms: dict[str, float],
                work: Path, timer, target: str = DEFAULT_TARGET, progress: bool = False, budget=None) -> lat.LatencyTable:
    """Probe every layer (through ``timer``, an :class:`edgecnn.measure.interleave.Timer`), then
    calibrate the table on the measured whole-model ``whole_ms`` (:func:`calibrate`).

    Past the time ``budget`` (:class:`edgecnn.search.budget.Budget`) no further layer is probed:
    the rest are estimated from their MACs (ms per MAC of the probed layers, else the
    whole-model time shared by MACs) and listed in ``table.estimated``."""
    work.mkdir(parents=True, exist_ok=True)
    inputs = layer_inputs(model, space.layers, images)
    modules = dict(model.named_modules())
    pruned = {u.name: u.options[-1] for u in space.units if u.kind == "prune"}
    raw: dict[str, dict[str, float]] = {}
    layers = space.layers
    if progress:
        from rich.progress import track

        layers = track(layers, description="latency probes", transient=True)
    for index, name in enumerate(layers):
        if budget is not None:
            if budget.spent():
                break
            budget.phase = f"latency probes, layer {index + 1} of {len(space.layers)}"
        raw[name] = time_layer(name, modules[name], inputs[name], _variants(space, name, precisions, pruned), work, target, timer)
    estimated = [n for n in space.layers if n not in raw]
    if estimated:
        _estimate_by_macs(raw, estimated, space, precisions, whole_ms)
        budget.skip(f"latency probes of {len(estimated)} of {len(space.layers)} layers (estimated from MACs)")
    table = calibrate(space, raw, precisions, whole_ms)
    for name in estimated:  # no shift probe: a shifted layer is assumed to cost what it did
        if any(u.kind == "shift" and u.layer == name for u in space.units):
            table.shift_ms[name] = {"fp32": table.layer_ms[name]["fp32"], "int8": table.layer_ms[name].get("w7a8", table.layer_ms[name]["fp32"])}
    table.estimated = estimated
    table.probes = {n: v for n, v in raw.items() if n not in estimated}
    return table


def net_times(raw: dict[str, float]) -> dict[str, float]:
    """One layer's probe times less what a layer inside a network does not pay: the session call
    (every probe), and quantizing its float input (every int8 probe: inside an int8 chain the
    input arrives quantized; at a float -> int8 change the model pays it as ``boundary_ms``)."""
    call = raw.get("call", 0.0)
    quantize = max(0.0, raw.get("quantize", call) - call)
    out = {}
    for key, ms in raw.items():
        if key in ("call", "quantize"):
            continue
        int8 = lat.precision_class(key) == "int8" or key.endswith("int8") or key == "w7a8-to-fp32"
        floor = 0.05 * ms  # a probe never costs less than a twentieth of what it measured
        out[key] = max(floor, ms - call - (quantize if int8 else 0.0))
    return out


def _calibration_order(space: Space, precisions) -> list[str]:
    """Precisions whose uniform configuration is made of that precision alone come first: the
    others (W7A8 keeps depthwise convs at W8A8) are calibrated on top of them."""
    pure = [p for p in precisions if all(space.precision_of(space.uniform(p), n) == p for n in space.layers)]
    return pure + [p for p in precisions if p not in pure]


def calibrate(space: Space, raw: dict[str, dict[str, float]], precisions, whole_ms: dict[str, float]) -> lat.LatencyTable:
    """The table from raw probe times: net layer times, boundary costs, the session call as the
    cost outside layers, then each precision's layer times scaled so that its uniform
    configuration predicts its measured whole-model time (what isolation misses: layout changes,
    pools, adds, concats). Only the layers that run at that precision in the uniform
    configuration are scaled, so W7A8 (depthwise at W8A8) is calibrated on its own layers."""
    net = {n: net_times(raw[n]) for n in space.layers}
    table = lat.LatencyTable({n: {p: net[n][p] for p in precisions} for n in space.layers})
    for name in space.layers:
        call = raw[name].get("call", 0.0)
        table.boundary_ms[name] = max(0.0, raw[name].get("quantize", call) - call)
    first = space.layers[0]
    call = raw[first].get("call", 0.0)  # the whole model pays one session call
    table.other_ms = {"fp32": call, "int8": call}
    for precision in _calibration_order(space, precisions):
        if precision not in whole_ms:
            continue
        config = space.uniform(precision)
        own = [n for n in space.layers if space.precision_of(config, n) == precision]
        part = sum(table.layer_cost(space, config, n) for n in own)
        rest = table.predict(space, config) - part
        if part > 0 and whole_ms[precision] > rest:
            scale = (whole_ms[precision] - rest) / part
            for n in own:
                table.layer_ms[n][precision] *= scale
            table.scale[precision] = scale
    pruned = {u.name: u.options[-1] for u in space.units if u.kind == "prune"}
    for name in space.layers:
        if "w7a8-to-fp32" in net[name]:
            table.float_consumer_factor[name] = net[name]["w7a8-to-fp32"] / net[name]["w7a8"]
        fin, fout = space.channel_factors(pruned, name) if pruned else (1.0, 1.0)
        mac = fout if space.layer_kinds[name] == "depthwise" else fin * fout
        for cls, precision in (("fp32", "fp32"), ("int8", "w7a8")):
            if f"pruned-{cls}" in net[name] and mac < 1:
                table.prune_efficiency.setdefault(name, {})[cls] = net[name][f"pruned-{cls}"] / net[name][precision] / mac
            if f"shifted-{cls}" in net[name]:
                table.shift_ms.setdefault(name, {})[cls] = net[name][f"shifted-{cls}"] * table.layer_ms[name][precision] / net[name][precision]
    table.measured = dict(whole_ms)
    table.probes = raw
    return table


def _estimate_by_macs(raw: dict, layers: list[str], space: Space, precisions, whole_ms: dict[str, float]) -> None:
    probed = [n for n in raw]
    for precision in precisions:
        probed_macs = sum(space.layer_macs[n] for n in probed)
        if probed and probed_macs > 0:
            per_mac = sum(raw[n][precision] for n in probed) / probed_macs
        else:
            per_mac = whole_ms.get(precision, whole_ms.get("fp32", 1.0)) / max(1, sum(space.layer_macs.values()))
        for name in layers:
            raw.setdefault(name, {})[precision] = per_mac * max(1, space.layer_macs[name])
