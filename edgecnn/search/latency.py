"""Cost from measurement: a per-layer latency table and whole-model timing on the target.

The table (built by :mod:`edgecnn.search.probes`: every layer timed in isolation in ORT at
each precision, less the session call and the input quantization every probe pays, then
scaled so that each uniform configuration matches its whole-model timing) predicts a mixed
configuration as one session call plus the sum of its layers' times at their precision, plus
the measured cost of quantizing a layer's input where the precision changes from float to int8,
scaled for kept channels by MACs times the efficiency measured on pruned shapes; an int8
layer followed by an FP32 one costs what its probe with a float consumer measured (ORT
fuses a conv into QLinearConv only when its output is quantized).
:func:`check` compares predictions with whole-model timings (the table's own error).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

INT8 = ("w8a8", "w7a8", "w6a8")


def precision_class(precision: str) -> str:
    return "int8" if precision in INT8 else "fp32"


@dataclass
class LatencyTable:
    """Measured per-layer milliseconds; ``predict`` combines them for any configuration."""

    layer_ms: dict[str, dict[str, float]]  # layer -> precision -> ms
    other_ms: dict[str, float] = field(default_factory=dict)  # precision class -> ms outside layers
    boundary_ms: dict[str, float] = field(default_factory=dict)  # layer -> cost of a float -> int8 change at its input
    prune_efficiency: dict[str, dict[str, float]] = field(default_factory=dict)  # layer -> class -> measured/MAC ratio
    shift_ms: dict[str, dict[str, float]] = field(default_factory=dict)  # layer -> class -> ms once shifted
    measured: dict[str, float] = field(default_factory=dict)  # uniform configuration -> whole-model ms
    probes: dict[str, dict[str, float]] = field(default_factory=dict)  # layer -> probe variant -> raw isolated ms
    # layer -> its int8 time when the next layer is FP32 / when it is int8 (no quantized output, no fused int8 conv)
    float_consumer_factor: dict[str, float] = field(default_factory=dict)
    estimated: list[str] = field(default_factory=list)  # layers not probed (time budget): estimated from MACs
    scale: dict[str, float] = field(default_factory=dict)  # precision -> factor fitting its uniform config to its whole-model time

    def layer_cost(self, space, config: dict, layer: str) -> float:
        precision = space.precision_of(config, layer)
        cls = precision_class(precision)
        if space.shifted(config, layer):
            return self.shift_ms.get(layer, {}).get(cls, 0.0)
        ms = self.layer_ms[layer].get(precision, self.layer_ms[layer].get("fp32", 0.0))
        fin, fout = space.channel_factors(config, layer)
        if (fin, fout) != (1.0, 1.0):
            ratio = fout if space.layer_kinds[layer] == "depthwise" else fin * fout
            ms *= ratio * self.prune_efficiency.get(layer, {}).get(cls, 1.0)
        return ms

    def predict(self, space, config: dict) -> float:
        """Predicted batch-1 ms of ``config`` (a Space configuration)."""
        total, previous = 0.0, "fp32"
        classes = [precision_class(space.precision_of(config, layer)) for layer in space.layers]
        for i, (layer, cls) in enumerate(zip(space.layers, classes)):
            if cls == "int8" and previous == "fp32":  # int8 -> fp32 is in float_consumer_factor
                total += self.boundary_ms.get(layer, 0.0)
            previous = cls
            cost = self.layer_cost(space, config, layer)
            if cls == "int8" and i + 1 < len(classes) and classes[i + 1] == "fp32":
                cost *= self.float_consumer_factor.get(layer, 1.0)
            total += cost
        majority = "int8" if classes.count("int8") * 2 > len(classes) else "fp32"
        return total + self.other_ms.get(majority, 0.0)

    def to_dict(self) -> dict:
        return {k: getattr(self, k) for k in ("layer_ms", "other_ms", "boundary_ms", "prune_efficiency", "shift_ms", "measured", "probes",
                                             "float_consumer_factor", "estimated", "scale")}


def check(table: LatencyTable, space, configs: dict[str, dict], measured_ms: dict[str, float]) -> list[dict]:
    """Predicted vs measured whole-model ms, per configuration name (the table's own error)."""
    rows = []
    for name, config in configs.items():
        if name in measured_ms:
            predicted = table.predict(space, config)
            rows.append({"config": name, "predicted_ms": round(predicted, 3), "measured_ms": round(measured_ms[name], 3),
                         "error_pct": round(100 * (predicted - measured_ms[name]) / measured_ms[name], 1)})
    return rows




def execution_signature(path: str) -> str:
    """What decides an ONNX graph's speed, hashed: nodes (operator, attributes, wiring), every
    initializer's type and shape, and the values of zero points and int64 constants (shapes, axes).

    Two artifacts that differ only in weight, bias and scale *values* (W7A8 vs W6A8 of one
    graph: int8 weights, the same kernels) share a signature, so their latency is one quantity:
    a measured difference between them is timing noise, and the choice is made on accuracy.
    """
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(path))
    zero_points = {n.input[2] for n in model.graph.node if n.op_type in ("QuantizeLinear", "DequantizeLinear") and len(n.input) > 2}
    digest = hashlib.sha256()
    for init in sorted(model.graph.initializer, key=lambda t: t.name):
        digest.update(f"{init.name}:{init.data_type}:{tuple(init.dims)}".encode())
        if init.name in zero_points or init.data_type == onnx.TensorProto.INT64:
            digest.update(numpy_helper.to_array(init).tobytes())
    for node in model.graph.node:
        digest.update(f"{node.domain}:{node.op_type}:{list(node.input)}:{list(node.output)}".encode())
        for attr in sorted(node.attribute, key=lambda a: a.name):
            digest.update(attr.SerializeToString())
    for value in list(model.graph.input) + list(model.graph.output):
        digest.update(value.SerializeToString())
    return digest.hexdigest()[:16]
