"""Quantizers outside conv/linear layers, where TensorRT's explicit-quantization rules want them.

TensorRT fuses an elementwise Add into the convolution that produces one of its inputs; the
*other* (residual) input must arrive quantized (Q/DQ) for the fused kernel to stay int8.
A Concat runs in int8 only when all its inputs share one scale. Both are graph facts that
module hooks cannot see, so the model is traced with torch.fx and quantizer calls are
inserted into the graph:

* Add: the residual input (the one not produced by a conv, or produced by the earlier conv
  when both are) is quantized with the input quantizer of a conv that also reads it, when
  there is one (one scale, one Q/DQ after export de-duplication), else with a new one.
* Siblings: layers reading the same tensor share one input quantizer.
* Concat: one new quantizer is applied to every input; convs reading the Concat's output
  (through max-pooling, ReLU, reshapes, shuffles, splits) use that same quantizer.

ONNX Runtime's QDQ fusion wants more: a conv becomes QLinearConv only when its output is
quantized too, and an Add becomes QLinearAdd only when both inputs are. So, in the same
calibration, quantizers with a *role* are added that only some targets enable
(``QuantTarget.extra_quantizers`` in :mod:`edgecnn.targets`):

* ``add_weighted_input``: the Add input(s) TensorRT leaves unquantized (conv outputs);
* ``pool_input``: the input of a global average pool (QLinearGlobalAveragePool lets the
  last conv fuse; the classifier input is quantized by the linear layer already).

A model that fx cannot trace is left as is (its conv/linear layers are still quantized) and
the reason is reported.
"""

from __future__ import annotations

import operator
from dataclasses import dataclass, field

import torch
import torch.fx as fx
import torch.nn as nn

from edgecnn.passes.quant.quantizers import QUANT_LAYERS, TensorQuantizer

_PASS_THROUGH_MODULES = (nn.BatchNorm2d, nn.Identity, nn.Dropout)
_TRANSPARENT_MODULES = (nn.MaxPool2d, nn.ReLU, nn.ReLU6, nn.Identity, nn.Dropout, nn.Flatten)
_TRANSPARENT_FUNCTIONS = {
    operator.getitem,
    torch.flatten,
    torch.chunk,
    torch.split,
    torch.transpose,
    torch.reshape,
    torch.nn.functional.relu,
    torch.nn.functional.relu6,
    torch.nn.functional.max_pool2d,
}
_TRANSPARENT_METHODS = {"view", "reshape", "flatten", "transpose", "contiguous", "chunk", "split", "relu", "permute"}
_ADD_FUNCTIONS = {operator.add, operator.iadd, torch.add}
_CAT_FUNCTIONS = {torch.cat, torch.concat}
_POOL_FUNCTIONS = {torch.nn.functional.adaptive_avg_pool2d}
_POOL_MODULES = (nn.AdaptiveAvgPool2d,)


class _RoleAlias(nn.Module):
    """Applies ``quantizer`` (same range) only for targets enabling ``role``."""

    def __init__(self, quantizer: TensorQuantizer, role: str):
        super().__init__()
        self.quantizer = quantizer
        self.role = role

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.quantizer.calibrating or self.role not in self.quantizer.target.extra_quantizers:
            return x
        return self.quantizer(x)


def _is_global_pool(gm: fx.GraphModule, node: fx.Node) -> bool:
    if node.op == "call_module":
        module = _module(gm, node)
        return isinstance(module, _POOL_MODULES) and module.output_size in (1, (1, 1))
    if node.op == "call_function" and node.target in _POOL_FUNCTIONS:
        size = node.args[1] if len(node.args) > 1 else node.kwargs.get("output_size")
        return size in (1, (1, 1), [1, 1])
    if node.op == "call_method" and node.target == "mean":
        dims = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim")
        return isinstance(dims, (list, tuple)) and sorted(dims) in ([2, 3], [-2, -1])
    return False


def _is_quantizer_call(gm: fx.GraphModule, node: fx.Node) -> bool:
    return isinstance(_module(gm, node), TensorQuantizer)


@dataclass
class PlacementInfo:
    traced: bool
    reason: str = ""
    adds: list[str] = field(default_factory=list)  # add nodes given a residual quantizer
    concats: list[str] = field(default_factory=list)
    role_quantizers: dict[str, int] = field(default_factory=dict)  # role -> count added


class _Tracer(fx.Tracer):
    """Treats every conv/linear (including Quant* and TF-SAME convs) and quantizer as a leaf."""

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        if isinstance(m, (nn.Conv2d, nn.Linear, TensorQuantizer)):
            return True
        return super().is_leaf_module(m, qualname)


def _autowrap_functions() -> tuple:
    try:
        from edgecnn.models.layers import channel_shuffle

        return (channel_shuffle,)
    except ImportError:  # pragma: no cover - the zoo is part of the package
        return ()


def trace(model: nn.Module) -> fx.GraphModule:
    tracer = _Tracer(autowrap_functions=_autowrap_functions())
    graph = tracer.trace(model)
    return fx.GraphModule(tracer.root, graph, model.__class__.__name__)


def _module(gm: fx.GraphModule, node: fx.Node):
    return gm.get_submodule(node.target) if node.op == "call_module" else None


def _producer(gm: fx.GraphModule, node: fx.Node) -> fx.Node:
    """Walk back through BatchNorm / Identity / Dropout to the node that computed ``node``."""
    while node.op == "call_module" and isinstance(_module(gm, node), _PASS_THROUGH_MODULES):
        node = node.args[0]
    return node


def _is_weighted(gm: fx.GraphModule, node: fx.Node) -> bool:
    return isinstance(_module(gm, node), (nn.Conv2d, nn.Linear))


def _quantized_readers(gm: fx.GraphModule, node: fx.Node, through: bool) -> list[nn.Module]:
    """Quantized layers that read ``node`` (directly, or through value-preserving ops)."""
    found, stack, seen = [], [node], set()
    while stack:
        current = stack.pop()
        for user in current.users:
            if user in seen:
                continue
            seen.add(user)
            module = _module(gm, user)
            if isinstance(module, QUANT_LAYERS):
                found.append(module)
            elif through and _is_transparent(gm, user):
                stack.append(user)
    return found


def _is_transparent(gm: fx.GraphModule, node: fx.Node) -> bool:
    if node.op == "call_module":
        return isinstance(_module(gm, node), _TRANSPARENT_MODULES)
    if node.op == "call_function":
        return node.target in _TRANSPARENT_FUNCTIONS or getattr(node.target, "__name__", "") == "channel_shuffle"
    if node.op == "call_method":
        return node.target in _TRANSPARENT_METHODS
    return False


def _insert_call(gm: fx.GraphModule, target: str, before: fx.Node, value: fx.Node) -> fx.Node:
    with gm.graph.inserting_before(before):
        return gm.graph.call_module(target, (value,))


def _qualified_name(gm: fx.GraphModule, module: nn.Module) -> str:
    for name, m in gm.named_modules(remove_duplicate=False):
        if m is module:
            return name
    raise KeyError("module not in graph")


def insert_graph_quantizers(model: nn.Module, act_bits: int = 8) -> tuple[nn.Module, PlacementInfo]:
    """Trace ``model`` and add quantizers at Add inputs, Concat inputs and global pool inputs.

    Returns the (possibly new) model and what was done. Conv/linear layers must already be
    Quant* layers; those reading an Add residual or a Concat output get tied quantizers.
    """
    try:
        gm = trace(model)
    except Exception as exc:  # fx raises many kinds of errors on untraceable code
        return model, PlacementInfo(False, f"{type(exc).__name__}: {str(exc).splitlines()[0][:160]}")
    info = PlacementInfo(True)
    # Layers reading the same tensor share one input quantizer: one Q/DQ, one scale.
    for node in list(gm.graph.nodes):
        readers = _quantized_readers(gm, node, through=False)
        for reader in readers[1:]:
            reader.input_quantizer = readers[0].input_quantizer
    order = {node: i for i, node in enumerate(gm.graph.nodes)}
    counter = 0
    for node in list(gm.graph.nodes):
        if node.op == "call_function" and node.target in _ADD_FUNCTIONS:
            inputs = [a for a in node.args[:2] if isinstance(a, fx.Node)]
            if len(inputs) != 2:
                continue
            weighted = [_is_weighted(gm, _producer(gm, a)) for a in inputs]
            if all(weighted):
                # Both from convs: TensorRT fuses the add into the later one; quantize the other.
                residuals = [min(inputs, key=lambda a: order[_producer(gm, a)])]
            else:
                residuals = [a for a, w in zip(inputs, weighted) if not w]
            for residual in residuals:
                readers = _quantized_readers(gm, residual, through=False)
                if readers:
                    target = _qualified_name(gm, readers[0].input_quantizer)
                else:
                    counter += 1
                    target = f"graph_quantizers.add_{counter}"
                    gm.add_submodule(target, TensorQuantizer(act_bits))
                quantized = _insert_call(gm, target, node, residual)
                node.replace_input_with(residual, quantized)
            for other in inputs:
                if other in residuals or _is_quantizer_call(gm, other):
                    continue
                counter += 1
                target = f"graph_quantizers.add_input_{counter}"
                gm.add_submodule(target, TensorQuantizer(act_bits, role="add_weighted_input"))
                node.replace_input_with(other, _insert_call(gm, target, node, other))
                info.role_quantizers["add_weighted_input"] = info.role_quantizers.get("add_weighted_input", 0) + 1
            info.adds.append(node.name)
        elif _is_global_pool(gm, node) and isinstance(node.args[0], fx.Node) and not _is_quantizer_call(gm, node.args[0]):
            counter += 1
            target = f"graph_quantizers.pool_input_{counter}"
            gm.add_submodule(target, TensorQuantizer(act_bits, role="pool_input"))
            node.replace_input_with(node.args[0], _insert_call(gm, target, node, node.args[0]))
            info.role_quantizers["pool_input"] = info.role_quantizers.get("pool_input", 0) + 1
            # Quantize the pool output with the classifier's own input quantizer (same scale),
            # so DQ -> GlobalAveragePool -> Q is complete and Flatten between Q/DQ pairs of one
            # scale is dropped by ONNX Runtime.
            readers = _quantized_readers(gm, node, through=True)
            if readers and all(not _is_quantizer_call(gm, user) for user in node.users):
                shared = readers[0].input_quantizer
                if shared.role is None:
                    counter += 1
                    target = f"graph_quantizers.pool_output_{counter}"
                    gm.add_submodule(target, _RoleAlias(shared, "pool_input"))
                    with gm.graph.inserting_after(node):
                        quantized = gm.graph.call_module(target, (node,))
                    node.replace_all_uses_with(quantized, delete_user_cb=lambda user: user is not quantized)
        elif node.op == "call_function" and node.target in _CAT_FUNCTIONS:
            tensors = node.args[0]
            if not isinstance(tensors, (list, tuple)) or not all(isinstance(t, fx.Node) for t in tensors):
                continue
            counter += 1
            target = f"graph_quantizers.concat_{counter}"
            shared = TensorQuantizer(act_bits)
            gm.add_submodule(target, shared)
            new_inputs = [_insert_call(gm, target, node, t) for t in tensors]
            node.args = (type(tensors)(new_inputs),) + tuple(node.args[1:])
            for reader in _quantized_readers(gm, node, through=True):
                reader.input_quantizer = shared
            info.concats.append(node.name)
    gm.graph.lint()
    gm.recompile()
    return gm, info
