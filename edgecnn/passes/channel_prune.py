"""Structured channel pruning: physically remove conv channels, giving a smaller dense model.

Built on Torch-Pruning's DependencyGraph, which knows which channels are coupled through
residual adds, concats, splits and depthwise convs. What it cannot follow is a channel
shuffle (view -> transpose -> view): its index mapping breaks on the 5-D reshape. edgecnn
handles that itself (hand-written because no library does it):

1. trace the model with torch.fx and find *channel-mixing chains* (view/reshape/transpose/
   permute between tensors of rank >= 3, e.g. ``channel_shuffle``);
2. build the dependency graph on a traced copy whose chains start with a *cut* that hands on
   a detached tensor, so Torch-Pruning sees two unrelated halves instead of a shuffle (the
   tensor before the cut is returned as an extra output so that layers feeding it are traced);
3. freeze every channel coupled to a cut, found by flooding the fx graph through
   channel-preserving ops (BN, activations, depthwise convs, adds, concats, splits) up to the
   convs that produce (output channels frozen) or consume (input channels frozen) them;
4. prune every other coupled group with Torch-Pruning, skipping groups that touch frozen
   channels. Grouped (non-depthwise) convs are frozen too: their per-group channel counts
   must stay equal.

ShuffleNetV2 thus keeps the channels that travel through the shuffle and prunes each
branch's inner channels (1x1 -> depthwise -> 1x1) and the last 1x1 conv. The modules are
pruned in place, so the returned model is the original object (same class, names, forward).
"""

from __future__ import annotations

import copy
import fnmatch
import math
from typing import Literal, Optional

import torch
import torch.fx as fx
import torch.nn as nn
from pydantic import Field, field_validator
from torch.fx.passes.shape_prop import ShapeProp
from torch.nn.modules.batchnorm import _BatchNorm

from edgecnn.errors import UserError, require
from edgecnn.passes.fold_bn import trace
from edgecnn.passes.prune import reapply_masks
from edgecnn.passes.registry import PassConfig, PassReport, register_pass
from edgecnn.passes.targets import layer_kind

MIXING_OPS = {"view", "reshape", "transpose", "permute", "flatten", "unflatten", "swapaxes", "movedim"}
PASS_THROUGH_OPS = {"contiguous", "clone"}


class ChannelPruneConfig(PassConfig):
    """``density``: fraction of channels kept per prunable group (``target: channels``) or of
    the model's conv/linear MACs kept (``target: macs``, found by bisection on a uniform
    channel density). ``overrides``: ``{layer glob: channel density}`` for groups rooted at
    matching layers. ``ignored_layers``: globs whose output channels are kept (the final
    classifier always is). ``round_to``: kept channel counts are multiples of it.
    ``input_size``: tracing/MAC-counting size when the pass context gives no example input.
    """

    target: Literal["channels", "macs"] = "channels"
    density: float = 0.5
    overrides: dict[str, float] = Field(default_factory=dict)
    importance: Literal["l1", "l2", "bn_scale", "fpgm", "lamp", "random"] = "l1"
    round_to: int = Field(default=8, ge=1)
    ignored_layers: list[str] = Field(default_factory=list)
    input_size: int = Field(default=224, ge=16)

    @field_validator("density")
    @classmethod
    def _density_range(cls, value):
        if not 0.0 < value <= 1.0:
            raise ValueError(f"density {value} is out of range; use the fraction kept, above 0 and at most 1")
        return value

    @field_validator("overrides")
    @classmethod
    def _override_range(cls, value):
        for pattern, density in value.items():
            if not 0.0 < density <= 1.0:
                raise ValueError(f"density {density} of '{pattern}' is out of range; use the fraction kept, above 0 and at most 1")
        return value


# ------------------------------------------------------------------ importance criteria


def make_importance(name: str):
    """The Torch-Pruning importance class for a criterion name (each is its own class there)."""
    tp = require("torch_pruning", "compress")
    imp = tp.importance
    criteria = {
        "l1": lambda: imp.GroupMagnitudeImportance(p=1),
        "l2": lambda: imp.GroupMagnitudeImportance(p=2),
        "bn_scale": lambda: imp.BNScaleImportance(),
        "fpgm": lambda: imp.FPGMImportance(),
        "lamp": lambda: imp.LAMPImportance(),
        "random": lambda: imp.RandomImportance(),
    }
    return criteria[name]()


# ------------------------------------------------------------------ graph analysis


class _ChannelCut(nn.Module):
    """Hands on a detached tensor and keeps the original, so a tracer sees a graph boundary."""

    def __init__(self, store: list):
        super().__init__()
        self.store = store

    def forward(self, x):
        self.store.append(x)
        return x.detach()


def _is_root(module: nn.Module) -> bool:
    """Layers whose input and output channels are independent (not depthwise)."""
    kind = layer_kind(module)
    return kind is not None and kind != "depthwise"


def _op_name(node: fx.Node) -> str:
    return node.target if node.op == "call_method" else getattr(node.target, "__name__", "")


def _rank(node) -> int:
    meta = node.meta.get("tensor_meta") if isinstance(node, fx.Node) else None
    return len(meta.shape) if meta is not None and hasattr(meta, "shape") else -1


def _is_mixing(node: fx.Node) -> bool:
    if node.op not in ("call_method", "call_function") or _op_name(node) not in MIXING_OPS:
        return False
    source = node.args[0] if node.args else None
    return _rank(source) >= 3 and _rank(node) >= 3


def _tensor_inputs(node: fx.Node) -> list[fx.Node]:
    found = []
    fx.node.map_arg((node.args, node.kwargs), lambda n: found.append(n) if _rank(n) >= 0 else None)
    return found


class Analysis:
    """Channel-mixing chains of a traced model and the channels they freeze."""

    def __init__(self, model: nn.Module, example: torch.Tensor):
        self.model = model
        self.gm = trace(model)
        ShapeProp(self.gm).propagate(example)
        self.chain_starts = [
            n for n in self.gm.graph.nodes if _is_mixing(n) and not (_is_mixing(n.args[0]) or _op_name(n.args[0]) in PASS_THROUGH_OPS)
        ]
        self.out_frozen: set[nn.Module] = set()
        self.in_frozen: set[nn.Module] = set()
        self.frozen: set[nn.Module] = set()  # frozen in and out (BN, depthwise, grouped convs)
        seeds = []
        for start in self.chain_starts:
            seeds.append(start.args[0])
            end = start
            while True:
                nxt = [u for u in end.users if _is_mixing(u) or _op_name(u) in PASS_THROUGH_OPS]
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
            if node in seen or _rank(node) < 0:
                continue
            seen.add(node)
            module = self._module(node)
            if module is not None and _is_root(module):
                self.out_frozen.add(module)
            elif node.op not in ("placeholder", "get_attr"):
                if module is not None:
                    self.frozen.add(module)
                stack.extend(_tensor_inputs(node))
            for user in node.users:
                user_module = self._module(user)
                if user_module is not None and _is_root(user_module):
                    self.in_frozen.add(user_module)
                else:
                    stack.append(user)

    def output_layers(self) -> set[nn.Module]:
        """Conv/linear layers whose output channels reach the model output (the classifier)."""
        output = next(n for n in self.gm.graph.nodes if n.op == "output")
        found, stack, seen = set(), _tensor_inputs(output), set()
        while stack:
            node = stack.pop()
            if node in seen:
                continue
            seen.add(node)
            module = self._module(node)
            if module is not None and _is_root(module):
                found.add(module)
            elif node.op != "placeholder":
                stack.extend(_tensor_inputs(node))
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


def _fallback_output_layers(model: nn.Module) -> set[nn.Module]:
    layers = [m for m in model.modules() if layer_kind(m) is not None]
    return {layers[-1]} if layers else set()


# ------------------------------------------------------------------ grouped conv -> shuffle -> grouped conv


def _shape(node) -> tuple:
    meta = node.meta.get("tensor_meta") if isinstance(node, fx.Node) else None
    return tuple(meta.shape) if meta is not None and hasattr(meta, "shape") else ()


def _tensor_users(node: fx.Node) -> list[fx.Node]:
    return [u for u in node.users if _rank(u) >= 0]


def _elementwise(node: fx.Node, module: Optional[nn.Module]) -> bool:
    """A same-shape op on one tensor with no per-channel state besides BN (ReLU, hardswish...)."""
    if len(_tensor_inputs(node)) != 1 or _shape(node) != _shape(_tensor_inputs(node)[0]):
        return False
    if module is not None:
        return isinstance(module, _BatchNorm) or not any(True for _ in module.parameters())
    return node.op in ("call_function", "call_method") and _op_name(node) not in MIXING_OPS


class ShuffleUnit:
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
    def find(cls, analysis: "Analysis", start: fx.Node) -> Optional["ShuffleUnit"]:
        shape_in, shape_view = _shape(start.args[0]), _shape(start)
        if len(shape_in) != 4 or len(shape_view) != 5 or shape_view[1] * shape_view[2] != shape_in[1]:
            return None
        groups = shape_view[1]
        end = start
        while len(_tensor_users(end)) == 1 and (_is_mixing(_tensor_users(end)[0]) or _op_name(_tensor_users(end)[0]) in PASS_THROUGH_OPS):
            end = _tensor_users(end)[0]
        if _shape(end) != shape_in:
            return None
        pre, node = [], start.args[0]
        while True:  # walk back to the producing conv; every tensor on the way has one consumer
            if len(_tensor_users(node)) != 1:
                return None
            module = analysis._module(node)
            if module is not None and _is_root(module):
                conv_a = node.target
                break
            if not _elementwise(node, module):
                return None
            if isinstance(module, _BatchNorm):
                pre.append(node.target)
            node = _tensor_inputs(node)[0]
        post, node = [], end
        while True:  # walk forward to the consuming conv
            users = _tensor_users(node)
            if len(users) != 1:
                return None
            node = users[0]
            module = analysis._module(node)
            if module is not None and _is_root(module):
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


def _prune_shuffle_units(model, analysis, config, density, ignored) -> int:
    units = [u for u in (ShuffleUnit.find(analysis, s) for s in analysis.chain_starts) if u is not None]
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


# ------------------------------------------------------------------ pruning


def _named(model: nn.Module, patterns: list[str], what: str) -> list[nn.Module]:
    names = [n for n, m in model.named_modules() if layer_kind(m) is not None]
    found = []
    for pattern in patterns:
        hits = [n for n in names if fnmatch.fnmatchcase(n, pattern)]
        if not hits:
            sample = ", ".join(names[:6]) + (", ..." if len(names) > 6 else "")
            raise UserError(f"channel_prune {what} '{pattern}' matches no layer; layer names look like: {sample}")
        found.extend(model.get_submodule(n) for n in hits)
    return found


def _group_allowed(group, dg, analysis: Optional[Analysis]) -> bool:
    if analysis is None:
        return True
    for dep, _ in group:
        module = dep.target.module
        if module in analysis.frozen:
            return False
        is_out = dg.is_out_channel_pruning_fn(dep.handler)
        if is_out and module in analysis.out_frozen:
            return False
        if not is_out and module in analysis.in_frozen:
            return False
    return True


def _prune_in_place(model: nn.Module, config: ChannelPruneConfig, density: float, example: torch.Tensor) -> dict:
    """Prune ``model``'s layers in place at a uniform channel ``density``; returns counts."""
    tp = require("torch_pruning", "compress")
    try:
        analysis: Optional[Analysis] = Analysis(model, example)
    except Exception:  # noqa: BLE001 - untraceable models go to Torch-Pruning as they are
        analysis = None
    if analysis is not None and analysis.chain_starts:
        traced, store = analysis.cut_copy()

        def forward_fn(module, inputs):
            store.clear()
            return (module(inputs), *store)

    else:
        traced, forward_fn = model, None
    ignored = set(_named(model, config.ignored_layers, "ignored layer"))
    ignored |= analysis.output_layers() if analysis is not None else _fallback_output_layers(model)
    if analysis is not None:
        ignored |= analysis.out_frozen | {m for m in analysis.frozen if layer_kind(m) is not None}
    ratio_dict = {}
    for pattern, value in config.overrides.items():
        for module in _named(model, [pattern], "override"):
            ratio_dict[module] = 1.0 - value
    pruner = tp.pruner.MetaPruner(
        traced,
        example,
        importance=make_importance(config.importance),
        pruning_ratio=1.0 - density,
        pruning_ratio_dict=ratio_dict or None,
        ignored_layers=list(ignored),
        round_to=config.round_to if config.round_to > 1 else None,
        forward_fn=forward_fn,
    )
    pruned = skipped = 0
    for group in pruner.step(interactive=True):
        if _group_allowed(group, pruner.DG, analysis):
            group.prune()
            pruned += 1
        else:
            skipped += 1
    user_ignored = set(_named(model, config.ignored_layers, "ignored layer"))
    shuffle_units = _prune_shuffle_units(model, analysis, config, density, user_ignored) if analysis is not None else 0
    return {
        "groups_pruned": pruned,
        "groups_frozen": skipped,
        "shuffle_chains": len(analysis.chain_starts) if analysis else 0,
        "shuffle_units_pruned": shuffle_units,
    }


def _channels(model: nn.Module) -> dict[str, tuple[int, int]]:
    out = {}
    for name, module in model.named_modules():
        if isinstance(module, nn.Conv2d):
            out[name] = (module.in_channels, module.out_channels)
        elif isinstance(module, nn.Linear):
            out[name] = (module.in_features, module.out_features)
    return out


def count_macs(model: nn.Module, size: tuple[int, int]) -> dict[str, int]:
    """Conv/linear MACs per layer at batch 1 (edgecnn.measure.profile's convention)."""
    from edgecnn.measure.profile import profile_model

    return {row.name: row.macs for row in profile_model(model, size).rows}


def channel_prune_model(
    model: nn.Module, config: ChannelPruneConfig, example: Optional[torch.Tensor] = None, progress: bool = False
) -> tuple[nn.Module, list[dict], dict]:
    """Prune ``model`` in place; returns (model, per-layer rows, summary)."""
    if example is None:
        example = torch.zeros(1, 3, config.input_size, config.input_size)
    example = example[:1]
    size = tuple(example.shape[-2:])
    was_training = model.training
    model.eval()
    reapply_masks(model)
    channels_before, macs_before = _channels(model), count_macs(model, size)
    total_before = sum(macs_before.values())
    density = config.density
    if config.target == "macs" and config.density < 1.0:
        density = _density_for_macs(model, config, example, size, total_before, progress)
    counts = _prune_in_place(model, config, density, example)
    try:
        with torch.no_grad():
            model(example)
    except Exception as exc:  # noqa: BLE001
        raise UserError(f"channel_prune: the pruned model no longer runs ({type(exc).__name__}: {exc}); add the layers involved to ignored_layers") from None
    reapply_masks(model)  # masks of pruned layers are rebuilt at their new shapes
    model.train(was_training)
    channels_after, macs_after = _channels(model), count_macs(model, size)
    rows = []
    for name, (cin, cout) in channels_before.items():
        new_in, new_out = channels_after.get(name, (0, 0))
        rows.append(
            {
                "layer": name,
                "kind": layer_kind(model.get_submodule(name)),
                "in_before": cin,
                "in_after": new_in,
                "out_before": cout,
                "out_after": new_out,
                "macs_before": macs_before.get(name, 0),
                "macs_after": macs_after.get(name, 0),
            }
        )
    total_after = sum(macs_after.values())
    summary = {
        "target": config.target,
        "density": config.density,
        "channel_density_used": round(density, 4),
        "round_to": config.round_to,
        "input_size": list(size),
        "macs_before": total_before,
        "macs_after": total_after,
        "macs_ratio": round(total_after / total_before, 4) if total_before else 1.0,
        "params_after": sum(p.numel() for p in model.parameters()),
        **counts,
    }
    return model, rows, summary


def _density_for_macs(model, config, example, size, total_before, progress: bool = False) -> float:
    """Uniform channel density whose pruned model keeps about ``config.density`` of the MACs."""
    from rich.progress import Progress

    low, high = 0.05, 1.0  # kept MACs at ``high`` exceed the target; at ``low`` they should not
    trials = 7
    with Progress(transient=True, disable=not progress) as bar:
        task = bar.add_task(f"channel_prune: searching {config.density:.0%} of MACs", total=trials)
        for _ in range(trials):
            mid = (low + high) / 2
            trial = copy.deepcopy(model)
            _prune_in_place(trial, config, mid, example)
            if sum(count_macs(trial, size).values()) / total_before > config.density:
                high = mid
            else:
                low = mid
            bar.advance(task)
    return low


@register_pass("channel_prune", config=ChannelPruneConfig, not_after=("quantize", "shift", "weight_share"))
def channel_prune(model: nn.Module, config: ChannelPruneConfig, ctx) -> nn.Module:
    """Remove whole channels (Torch-Pruning + shuffle-aware freezing); returns a smaller model."""
    example = getattr(ctx, "example_input", None)
    if isinstance(example, (list, tuple)):
        example = example[0]
    model, rows, summary = channel_prune_model(model, config, example, progress=getattr(ctx, "progress", False))
    ctx.report(PassReport("channel_prune", rows=rows, summary=summary))
    return model
