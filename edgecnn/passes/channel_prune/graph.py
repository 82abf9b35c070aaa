"""Channel analysis on the fx graph: which tensors go through a channel-mixing chain
(``channel_shuffle``), the traced copy with a cut before each chain, and the channels
coupled to a cut (frozen for Torch-Pruning). Steps 1-3 of :mod:`edgecnn.passes.channel_prune`.
"""

from __future__ import annotations

import copy
from typing import Optional

import torch
import torch.fx as fx
import torch.nn as nn
from torch.fx.passes.shape_prop import ShapeProp

from edgecnn.models.layer_select import layer_kind
from edgecnn.passes.fold_bn import trace

MIXING_OPS = {"view", "reshape", "transpose", "permute", "flatten", "unflatten", "swapaxes", "movedim"}
PASS_THROUGH_OPS = {"contiguous", "clone"}


class _ChannelCut(nn.Module):
    """Hands on a detached tensor and keeps the original, so a tracer sees a graph boundary."""

    def __init__(self, store: list):
        super().__init__()
        self.store = store

    def forward(self, x):
        self.store.append(x)
        return x.detach()


def is_root(module: nn.Module) -> bool:
    """Layers whose input and output channels are independent (not depthwise)."""
    kind = layer_kind(module)
    return kind is not None and kind != "depthwise"


def op_name(node: fx.Node) -> str:
    return node.target if node.op == "call_method" else getattr(node.target, "__name__", "")


def tensor_rank(node) -> int:
    meta = node.meta.get("tensor_meta") if isinstance(node, fx.Node) else None
    return len(meta.shape) if meta is not None and hasattr(meta, "shape") else -1


def is_mixing(node: fx.Node) -> bool:
    if node.op not in ("call_method", "call_function") or op_name(node) not in MIXING_OPS:
        return False
    source = node.args[0] if node.args else None
    return tensor_rank(source) >= 3 and tensor_rank(node) >= 3


def tensor_inputs(node: fx.Node) -> list[fx.Node]:
    found = []
    fx.node.map_arg((node.args, node.kwargs), lambda n: found.append(n) if tensor_rank(n) >= 0 else None)
    return found


class Analysis:
    """Channel-mixing chains of a traced model and the channels they freeze."""

    def __init__(self, model: nn.Module, example: torch.Tensor):
        self.model = model
        self.gm = trace(model)
        ShapeProp(self.gm).propagate(example)
        self.chain_starts = [
            n for n in self.gm.graph.nodes if is_mixing(n) and not (is_mixing(n.args[0]) or op_name(n.args[0]) in PASS_THROUGH_OPS)
        ]
        self.out_frozen: set[nn.Module] = set()
        self.in_frozen: set[nn.Module] = set()
        self.frozen: set[nn.Module] = set()  # frozen in and out (BN, depthwise, grouped convs)
        seeds = []
        for start in self.chain_starts:
            seeds.append(start.args[0])
            end = start
            while True:
                nxt = [u for u in end.users if is_mixing(u) or op_name(u) in PASS_THROUGH_OPS]
                if len(nxt) != 1:
                    break
                end = nxt[0]
            seeds.append(end)
        self._flood(seeds)
        for module in model.modules():
            if layer_kind(module) == "group":
                self.frozen.add(module)

    def _module(self, node: fx.Node) -> Optional[nn.Module]:
        return self.gm.get_submodule(node.target) if node.op == "call_module" else None

    def _flood(self, seeds: list[fx.Node]) -> None:
        stack, seen = list(seeds), set()
        while stack:
            node = stack.pop()
            if node in seen or tensor_rank(node) < 0:
                continue
            seen.add(node)
            module = self._module(node)
            if module is not None and is_root(module):
                self.out_frozen.add(module)
            elif node.op not in ("placeholder", "get_attr"):
                if module is not None:
                    self.frozen.add(module)
                stack.extend(tensor_inputs(node))
            for user in node.users:
                user_module = self._module(user)
                if user_module is not None and is_root(user_module):
                    self.in_frozen.add(user_module)
                else:
                    stack.append(user)

    def output_layers(self) -> set[nn.Module]:
        """Conv/linear layers whose output channels reach the model output (the classifier)."""
        output = next(n for n in self.gm.graph.nodes if n.op == "output")
        found, stack, seen = set(), tensor_inputs(output), set()
        while stack:
            node = stack.pop()
            if node in seen:
                continue
            seen.add(node)
            module = self._module(node)
            if module is not None and is_root(module):
                found.add(module)
            elif node.op != "placeholder":
                stack.extend(tensor_inputs(node))
        return found

    def cut_copy(self) -> tuple[fx.GraphModule, list]:
        """A GraphModule sharing the model's layers, with a cut before every mixing chain."""
        store: list = []
        gm = fx.GraphModule(self.gm, copy.deepcopy(self.gm.graph))
        starts = [n for n in gm.graph.nodes if n.name in {s.name for s in self.chain_starts}]
        for index, start in enumerate(starts):
            name = f"_edgecnn_cut{index}"
            gm.add_submodule(name, _ChannelCut(store))
            with gm.graph.inserting_before(start):
                cut = gm.graph.call_module(name, (start.args[0],))
            start.replace_input_with(start.args[0], cut)
        gm.recompile()
        return gm, store


def fallback_output_layers(model: nn.Module) -> set[nn.Module]:
    layers = [m for m in model.modules() if layer_kind(m) is not None]
    return {layers[-1]} if layers else set()
