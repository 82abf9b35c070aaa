"""The same recipe gives byte-identical artifacts: a guard for refactors of the glue.

The golden SHA-256 values below were produced by the pipeline as it was before the glue
redesign (edgecnn/pipeline.py + edgecnn/stages.py, the commit before edgecnn/pipeline/
became a package). A change to them means a change in what users ship: update them only
with a reason in the commit message.

Updated once since: the recipe schema gained ``export.fp16_rest``, so the resolved recipe in
the ``edgecnn.recipe`` metadata entry now lists ``"fp16_rest": false``. Graph, initializers
and every other metadata entry were compared with the pre-redesign files: identical.
"""

from __future__ import annotations

import hashlib

import numpy as np
import pytest

NET = '''
import torch
import torch.nn as nn

PREPROCESS = {"input_size": 16, "resize": 16, "crop": 16}


class Net(nn.Module):
    def __init__(self, num_classes=10):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU6())
        self.dw = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1, groups=8, bias=False), nn.BatchNorm2d(8), nn.ReLU6())
        self.pw = nn.Sequential(nn.Conv2d(8, 8, 1, bias=False), nn.BatchNorm2d(8))
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(8, num_classes)

    def forward(self, x):
        x = self.stem(x)
        x = x + self.pw(self.dw(x))
        return self.fc(torch.flatten(self.pool(x), 1))


def build(num_classes=10):
    return Net(num_classes)
'''

RECIPE = """
model: {name: net.py:build, weights: weights.pth}
data: {calib: calib, calib_images: 8, batch_size: 4}
stages: [fold_bn, {quantize: {bits: 8}}, {export: {parity: false}}]
targets: [ort-x86, trt]
"""

# Produced by the pre-redesign pipeline (see the module docstring).
GOLDEN = {
    "ort-x86/model.onnx": "cb5c4eb9a3480dfcc802061833ce65e040feb91f1dc4f53582a10f75940b208e",
    "trt/model.onnx": "508940fbe1af4494b7cb216976a0b6355f9d2e67bc459a70a58a6b54e23de4e0",
}


def _inputs(folder):
    """A seeded model file, its weights (non-trivial BN statistics) and 8 calibration images."""
    import torch
    from PIL import Image

    (folder / "net.py").write_text(NET)
    torch.manual_seed(0)
    import importlib.util

    spec = importlib.util.spec_from_file_location("golden_net", folder / "net.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    model = mod.build()
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.2, 0.2)
    torch.save(model.state_dict(), folder / "weights.pth")
    rng = np.random.default_rng(0)
    (folder / "calib").mkdir()
    for i in range(8):
        Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(folder / "calib" / f"{i}.png")
    (folder / "recipe.yaml").write_text(RECIPE)


def run_golden_recipe(folder, monkeypatch) -> dict[str, str]:
    """SHA-256 of every ONNX artifact of the recipe run in ``folder`` (relative paths, fixed version)."""
    import edgecnn
    from rich.console import Console

    from edgecnn.pipeline import run_recipe
    from edgecnn.recipe import load_recipe

    _inputs(folder)
    monkeypatch.chdir(folder)
    monkeypatch.setenv("EDGECNN_TORCH_THREADS", "1")
    monkeypatch.setattr(edgecnn, "__version__", "golden")  # the version is in the metadata
    run_recipe(load_recipe("recipe.yaml"), output=folder / "out", console=Console(record=True, quiet=True), progress=False)
    return {rel: hashlib.sha256((folder / "out" / rel).read_bytes()).hexdigest() for rel in GOLDEN}


def test_same_recipe_same_artifact_bytes(tmp_path, monkeypatch):
    assert run_golden_recipe(tmp_path, monkeypatch) == GOLDEN
