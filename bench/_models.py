"""The models the bench measures with real weights: one table, so every script loads them alike.

Each entry names the weights file under the shared data's ``weights/``, the preprocessing
preset the weights were trained with, and the zoo options that reproduce their graph
(MobileNetV2 from TFLite needs TensorFlow's padding). Scripts that also time ShuffleNet, which
has no published weights here, add it with a seeded random init themselves.
"""

from __future__ import annotations

from pathlib import Path

WITH_WEIGHTS = {
    "squeezenet1_1": {"weights": "squeezenet1_1.pth", "preprocess": "torchvision", "options": {}},
    "mobilenet_v2": {"weights": "mobilenet_v2.pth", "preprocess": "tf", "options": {"tf_padding": True}},
}


def weights_path(name: str, data: Path) -> Path:
    """The published weights of ``name`` under ``data`` (the shared data folder)."""
    return Path(data) / "weights" / WITH_WEIGHTS[name]["weights"]


def load(name: str, data: Path, fold_bn: bool = False):
    """``name`` with its published weights (an edgecnn LoadedModel), BN folded when asked (as the
    pipeline's fold_bn stage leaves it)."""
    from edgecnn.models import load_model

    spec = WITH_WEIGHTS[name]
    loaded = load_model(name, weights=str(weights_path(name, data)), preprocess=spec["preprocess"], **spec["options"])
    if fold_bn:
        from edgecnn.passes.registry import run_pass

        loaded.module = run_pass("fold_bn", loaded.module)
    return loaded
