"""Pruning schedules as data: per-layer densities of published results, and density ramps.

A schedule maps module-name globs to the fraction of weights kept (density). The ``prune``
pass accepts such a dict, or the name of one registered in :data:`SCHEDULES`.
"""

from __future__ import annotations

# Deep Compression (Han et al. 2016), SqueezeNet 1.0 column of the per-layer table, in
# torchvision module names: features.0 = conv1, features.3/4/5/7/8/9/10/12 = fire2..fire9
# (features.6 and .11 are pools), classifier.1 = conv10. Biases are kept dense.
# The table gives 421,098 non-zero parameters of 1,248,424 (weights + biases); this
# schedule reproduces it exactly with k = round(density * n) weights kept per layer.
_FIRE_DENSITIES = {
    # fire name: (module index in features, squeeze, expand1x1, expand3x3)
    "fire2": (3, 1.0, 1.0, 0.33),
    "fire3": (4, 1.0, 1.0, 0.33),
    "fire4": (5, 1.0, 1.0, 0.33),
    "fire5": (7, 1.0, 1.0, 0.33),
    "fire6": (8, 1.0, 0.5, 0.33),
    "fire7": (9, 0.5, 1.0, 0.33),
    # The printed table says 33 % for fire8 expand3x3, but its own parameter count for fire8
    # (77,581 after pruning) and its total (421,098) are what 30 % gives; 33 % would give
    # 82,004 and a total of 425,517 (1 % off). We follow the counts.
    "fire8": (10, 1.0, 0.5, 0.30),
    "fire9": (12, 0.5, 1.0, 0.30),
}

DEEP_COMPRESSION_SQUEEZENET1_0: dict[str, float] = {"features.0": 1.0}
for _index, _squeeze, _expand1x1, _expand3x3 in _FIRE_DENSITIES.values():
    DEEP_COMPRESSION_SQUEEZENET1_0[f"features.{_index}.squeeze"] = _squeeze
    DEEP_COMPRESSION_SQUEEZENET1_0[f"features.{_index}.expand1x1"] = _expand1x1
    DEEP_COMPRESSION_SQUEEZENET1_0[f"features.{_index}.expand3x3"] = _expand3x3
DEEP_COMPRESSION_SQUEEZENET1_0["classifier.1"] = 0.2

# Published non-zero parameter count of the schedule above (weights kept + all biases).
DEEP_COMPRESSION_SQUEEZENET1_0_NONZERO = 421_098

# The same densities on SqueezeNet 1.1 by role (conv1, fire2..fire9, conv10): 1.1 keeps the
# Fire modules but moves the pools, so fireN sits at another index of ``features``.
_FIRE_INDEX_1_1 = dict(zip(_FIRE_DENSITIES, (3, 4, 6, 7, 9, 10, 11, 12)))
DEEP_COMPRESSION_SQUEEZENET1_1: dict[str, float] = {"features.0": 1.0}
for _fire, (_index, _squeeze, _expand1x1, _expand3x3) in _FIRE_DENSITIES.items():
    _at = _FIRE_INDEX_1_1[_fire]
    DEEP_COMPRESSION_SQUEEZENET1_1[f"features.{_at}.squeeze"] = _squeeze
    DEEP_COMPRESSION_SQUEEZENET1_1[f"features.{_at}.expand1x1"] = _expand1x1
    DEEP_COMPRESSION_SQUEEZENET1_1[f"features.{_at}.expand3x3"] = _expand3x3
DEEP_COMPRESSION_SQUEEZENET1_1["classifier.1"] = 0.2

SCHEDULES: dict[str, dict[str, float]] = {
    "deep_compression_squeezenet1_0": DEEP_COMPRESSION_SQUEEZENET1_0,
    "deep_compression_squeezenet1_1": DEEP_COMPRESSION_SQUEEZENET1_1,
}


def polynomial_density(step: int, total_steps: int, final_density: float, initial_density: float = 1.0, power: int = 3) -> float:
    """Density at ``step`` of gradual pruning (Zhu & Gupta 2017): fast early, slow near the end.

    Prune a little at a time while fine-tuning: call the ``prune`` pass with this density
    every few hundred steps, then ``reapply_masks`` after each optimizer step.
    """
    if total_steps <= 0 or step >= total_steps:
        return final_density
    progress = max(step, 0) / total_steps
    return final_density + (initial_density - final_density) * (1.0 - progress) ** power
