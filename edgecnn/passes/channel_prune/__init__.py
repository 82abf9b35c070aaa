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

Modules: ``graph`` (steps 1-3), ``shuffle`` (grouped conv -> shuffle -> grouped conv, as in
ShuffleNetV1), ``pruner`` (step 4, the pass, the MAC-budget search).
"""

from edgecnn.passes.channel_prune.graph import Analysis
from edgecnn.passes.channel_prune.pruner import ChannelPruneConfig, channel_prune, channel_prune_model, count_macs, make_importance
from edgecnn.passes.channel_prune.shuffle import ShuffleSpan

__all__ = ["Analysis", "ChannelPruneConfig", "ShuffleSpan", "channel_prune", "channel_prune_model", "count_macs",
           "make_importance"]
