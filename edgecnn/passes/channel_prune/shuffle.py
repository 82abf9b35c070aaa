"""Pruning through a channel shuffle between grouped convs (ShuffleNetV1), which
Torch-Pruning cannot follow: a :class:`ShuffleSpan` keeps every group and shuffle block equal.
"""

from __future__ import annotations

import fnmatch
import math
from typing import Optional

import torch
import torch.fx as fx
import torch.nn as nn
from torch.nn.modules.batchnorm import _BatchNorm

from edgecnn.models.layer_select import layer_kind
from edgecnn.passes.channel_prune.graph import (
    MIXING_OPS,
    PASS_THROUGH_OPS,
    Analysis,
    is_mixing,
    is_root,
    op_name,
    tensor_rank,
    tensor_inputs,
)


def _shape(node) -> tuple:
    meta = node.meta.get("tensor_meta") if isinstance(node, fx.Node) else None
    return tuple(meta.shape) if meta is not None and hasattr(meta, "shape") else ()


def _tensor_users(node: fx.Node) -> list[fx.Node]:
    return [u for u in node.users if tensor_rank(u) >= 0]


def _elementwise(node: fx.Node, module: Optional[nn.Module]) -> bool:
    """A same-shape op on one tensor with no per-channel state besides BN (ReLU, hardswish...)."""
    if len(tensor_inputs(node)) != 1 or _shape(node) != _shape(tensor_inputs(node)[0]):
        return False
    if module is not None:
        return isinstance(module, _BatchNorm) or not any(True for _ in module.parameters())
    return node.op in ("call_function", "call_method") and op_name(node) not in MIXING_OPS


class ShuffleSpan:
    """``conv_a -> [BN/act] -> channel_shuffle(g) -> [depthwise/BN/act] -> conv_b`` (ShuffleNetV1).

    The channels between ``conv_a`` and ``conv_b`` can be pruned if every conv group and
    every shuffle block keeps the same count and each kept channel stays in its conv_b group
    after the (smaller) shuffle. With ``b`` channels kept per (shuffle block, conv_b group)
    pair, both hold: ``g * groups_b * b`` channels remain. Hand-written: Torch-Pruning has no
    index mapping for a shuffle.
    """

    def __init__(self, model, conv_a, pre, groups, post, conv_b):
        self.model = model
        self.conv_a, self.conv_b = conv_a, conv_b  # module names
        self.pre, self.post = pre, post  # names of BN/depthwise modules before / after the shuffle
        self.groups = groups

    @classmethod
    def find(cls, analysis: "Analysis", start: fx.Node) -> Optional["ShuffleSpan"]:
        shape_in, shape_view = _shape(start.args[0]), _shape(start)
        if len(shape_in) != 4 or len(shape_view) != 5 or shape_view[1] * shape_view[2] != shape_in[1]:
            return None
        groups = shape_view[1]
        end = start
        while len(_tensor_users(end)) == 1 and (is_mixing(_tensor_users(end)[0]) or op_name(_tensor_users(end)[0]) in PASS_THROUGH_OPS):
            end = _tensor_users(end)[0]
        if _shape(end) != shape_in:
            return None
        pre, node = [], start.args[0]
        while True:  # walk back to the producing conv; every tensor on the way has one consumer
            if len(_tensor_users(node)) != 1:
                return None
            module = analysis._module(node)
            if module is not None and is_root(module):
                conv_a = node.target
                break
            if not _elementwise(node, module):
                return None
            if isinstance(module, _BatchNorm):
                pre.append(node.target)
            node = tensor_inputs(node)[0]
        post, node = [], end
        while True:  # walk forward to the consuming conv
            users = _tensor_users(node)
            if len(users) != 1:
                return None
            node = users[0]
            module = analysis._module(node)
            if module is not None and is_root(module):
                conv_b = node.target
                break
            if module is not None and layer_kind(module) == "depthwise" and module.out_channels == module.in_channels:
                post.append(node.target)
            elif _elementwise(node, module):
                if isinstance(module, _BatchNorm):
                    post.append(node.target)
            else:
                return None
        model = analysis.model
        a, b = model.get_submodule(conv_a), model.get_submodule(conv_b)
        if not isinstance(a, nn.Conv2d) or not isinstance(b, nn.Conv2d) or a.groups not in (1, groups):
            return None
        if a.out_channels != shape_in[1] or b.in_channels != shape_in[1]:
            return None
        return cls(model, conv_a, pre, groups, post, conv_b)

    def plan(self, density: float, round_to: int) -> Optional[list[int]]:
        """Kept channel indices before the shuffle (sorted), or None when nothing fits."""
        a, b = self.model.get_submodule(self.conv_a), self.model.get_submodule(self.conv_b)
        mid, g, gb = a.out_channels, self.groups, b.groups
        block, b_group = mid // g, mid // gb
        # Importance of a channel: L1 of conv_a's filter + L1 of conv_b's weights reading it.
        score_pre = a.weight.detach().abs().flatten(1).sum(1)
        score_post = torch.zeros(mid)
        for position in range(mid):
            group = position // b_group
            rows = b.weight[group * (b.out_channels // gb) : (group + 1) * (b.out_channels // gb), position % b_group]
            score_post[position] = rows.detach().abs().sum()
        candidates: dict[tuple[int, int], list[int]] = {}
        for i in range(g):
            for j in range(block):
                candidates.setdefault((i, (j * g + i) // b_group), []).append(j)
        if len(candidates) != g * gb:
            return None
        capacity = min(len(v) for v in candidates.values())
        step = math.lcm(g * gb, round_to) // (g * gb)
        per_pair = int(round(density * mid / (g * gb) / step)) * step
        per_pair = min(max(per_pair, step), capacity // step * step)
        if per_pair <= 0 or per_pair * g * gb >= mid:
            return None
        kept = []
        for (i, _), js in candidates.items():
            scores = [score_pre[i * block + j] / score_pre.mean() + score_post[j * g + i] / score_post.mean() for j in js]
            best = sorted(range(len(js)), key=lambda k: (-float(scores[k]), k))[:per_pair]
            kept.extend(i * block + js[k] for k in best)
        return sorted(kept)

    @torch.no_grad()
    def apply(self, kept_pre: list[int]) -> None:
        model, g = self.model, self.groups
        a, b = model.get_submodule(self.conv_a), model.get_submodule(self.conv_b)
        mid, new_mid = a.out_channels, len(kept_pre)
        block, new_block = mid // g, new_mid // g
        # New shuffle: new pre index q = i * new_block + r goes to post r * g + i.
        post_of = [0] * new_mid
        for q, c in enumerate(kept_pre):
            i, j = divmod(c, block)
            r = q - i * new_block
            post_of[r * g + i] = j * g + i
        pre_idx = torch.tensor(kept_pre)
        post_idx = torch.tensor(post_of)
        a.weight = nn.Parameter(a.weight[pre_idx].clone())
        if a.bias is not None:
            a.bias = nn.Parameter(a.bias[pre_idx].clone())
        a.out_channels = new_mid
        for name in self.pre:
            _slice_bn(model.get_submodule(name), pre_idx)
        for name in self.post:
            module = model.get_submodule(name)
            if isinstance(module, _BatchNorm):
                _slice_bn(module, post_idx)
            else:
                module.weight = nn.Parameter(module.weight[post_idx].clone())
                if module.bias is not None:
                    module.bias = nn.Parameter(module.bias[post_idx].clone())
                module.in_channels = module.out_channels = module.groups = new_mid
        gb, b_group, new_b_group = b.groups, mid // b.groups, new_mid // b.groups
        out_per_group = b.out_channels // gb
        weight = torch.empty(b.out_channels, new_b_group, *b.weight.shape[2:], dtype=b.weight.dtype)
        for o in range(b.out_channels):
            group = o // out_per_group
            columns = [post_of[group * new_b_group + t] - group * b_group for t in range(new_b_group)]
            weight[o] = b.weight[o, columns]
        b.weight = nn.Parameter(weight)
        b.in_channels = new_mid


def _slice_bn(bn: _BatchNorm, idx: torch.Tensor) -> None:
    if bn.weight is not None:
        bn.weight = nn.Parameter(bn.weight[idx].clone())
        bn.bias = nn.Parameter(bn.bias[idx].clone())
    if bn.running_mean is not None:
        bn.running_mean = bn.running_mean[idx].clone()
        bn.running_var = bn.running_var[idx].clone()
    bn.num_features = len(idx)


def prune_shuffle_spans(model, analysis, config, density, ignored) -> int:
    units = [u for u in (ShuffleSpan.find(analysis, s) for s in analysis.chain_starts) if u is not None]
    done = 0
    for unit in units:
        if model.get_submodule(unit.conv_a) in ignored:
            continue
        own = density
        for pattern, value in config.overrides.items():
            if fnmatch.fnmatchcase(unit.conv_a, pattern):
                own = value
        kept = unit.plan(own, config.round_to)
        if kept is not None:
            unit.apply(kept)
            done += 1
    return done
