"""The same recipe gives the same artifacts: a guard for refactors of the glue.

What a refactor must not change is pinned on every machine; what the CPU legitimately changes
is not. Activation ranges come from running the float model on calibration images, and
PyTorch's CPU kernels differ by instruction set (AVX2 vs AVX-512), so calibrated scales (and
the int32 bias that depends on them) differ in their last bits between the CPU classes this
project runs on, and so do the files' SHA-256. Hence three checks, strongest first:

* every run: the file's *skeleton* is exact (graph, node names, attributes, initializer names,
  types and shapes, zero-points, every metadata entry): its SHA-256 is pinned;
* every run: initializer values agree with the reference arrays in ``tests/data/golden/``
  within what kernel rounding moves (floats 2 % relative; int8/uint8 codes at most one step on
  at most 5 % of elements; int32 biases 2 % relative);
* on a CPU class whose bytes were recorded (``torch.backends.cpu.get_cpu_capability()``), the
  whole file's SHA-256 is exact.

A change to any pinned value means a change in what users ship: update it only with a reason
in the commit message (``python tests/test_golden_artifacts.py --record DIR`` writes the
reference arrays and prints the hashes of this machine).

History: recorded first on the pipeline before the glue redesign; updated once when the recipe
schema gained ``export.fp16_rest`` (only the embedded recipe in the metadata changed). The
AVX-512 hashes were recorded on an AVX-512 VNNI host, the AVX2 ones on an AVX2-only AMD EPYC.
"""

from __future__ import annotations

import hashlib
import sys
from pathlib import Path

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

ARTIFACTS = ("ort-x86/model.onnx", "trt/model.onnx")
REFERENCE = Path(__file__).parent / "data" / "golden"

# SHA-256 of each file's skeleton (see the module docstring): the same on every CPU.
SKELETON = {
    "ort-x86/model.onnx": "aea488a2cc8e796958325ed699349b5e3025c4e3a5a0e1faa468d5291d5aeec9",
    "trt/model.onnx": "308d5dcae5af7b8bfcc4a95bc83adf5b490d139daa487a7252aaaa71f88d7fbf",
}

# Whole-file SHA-256 per CPU class (PyTorch's CPU capability), where they were recorded.
GOLDEN_BY_CPU = {
    "AVX512": {
        "ort-x86/model.onnx": "cb5c4eb9a3480dfcc802061833ce65e040feb91f1dc4f53582a10f75940b208e",
        "trt/model.onnx": "508940fbe1af4494b7cb216976a0b6355f9d2e67bc459a70a58a6b54e23de4e0",
    },
    "AVX2": {
        "ort-x86/model.onnx": "41fe71c16c02b4f5e56008390da6335ff5ad32ad288883f710fff6a590ea83e7",
        "trt/model.onnx": "1df85815c9bc3bb99fd21a0f3991d38483ed007f62893050d98a73f12cd4edfd",
    },
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


def run_golden_recipe(folder, monkeypatch) -> Path:
    """Run the recipe in ``folder`` (relative paths, fixed version); returns the output folder."""
    import edgecnn
    from rich.console import Console

    from edgecnn.pipeline import run_recipe
    from edgecnn.recipe import load_recipe

    _inputs(folder)
    monkeypatch.chdir(folder)
    monkeypatch.setenv("EDGECNN_TORCH_THREADS", "1")
    monkeypatch.setattr(edgecnn, "__version__", "golden")  # the version is in the metadata
    run_recipe(load_recipe("recipe.yaml"), output=folder / "out", console=Console(record=True, quiet=True), progress=False)
    return folder / "out"


def skeleton_sha256(path: Path) -> str:
    """SHA-256 of the model with every initializer's values removed (names, types, shapes kept)."""
    import onnx

    model = onnx.load(str(path))
    for tensor in model.graph.initializer:
        if _calibrated_values(tensor):
            for field in ("raw_data", "float_data", "int32_data", "int64_data"):
                tensor.ClearField(field)
    return hashlib.sha256(model.SerializeToString(deterministic=True)).hexdigest()


def _calibrated_values(tensor) -> bool:
    """Floats, int32 biases and weight codes move with calibration; zero-points do not."""
    import onnx

    if tensor.data_type in (onnx.TensorProto.FLOAT, onnx.TensorProto.INT32):
        return True
    return "weight_quantized" in tensor.name and not tensor.name.endswith("zero_point")


def initializer_arrays(path: Path) -> dict[str, np.ndarray]:
    import onnx
    from onnx import numpy_helper

    return {t.name: numpy_helper.to_array(t) for t in onnx.load(str(path)).graph.initializer}


def value_mismatches(arrays: dict[str, np.ndarray], reference: dict[str, np.ndarray]) -> list[str]:
    """Initializers that moved more than kernel rounding moves them (see the module docstring)."""
    bad = []
    for name, ref in reference.items():
        got = arrays.get(name)
        if got is None or got.dtype != ref.dtype or got.shape != ref.shape:
            bad.append(f"{name}: missing or another type/shape")
        elif ref.dtype.kind == "f" or ref.dtype == np.int32:
            if not np.allclose(got.astype(np.float64), ref.astype(np.float64), rtol=0.02, atol=2 * (ref.dtype == np.int32)):
                bad.append(f"{name}: values moved beyond 2 %")
        else:
            step = np.abs(got.astype(np.int64) - ref.astype(np.int64))
            if step.max(initial=0) > 1 or (step > 0).mean() > 0.05:
                bad.append(f"{name}: {int((step > 0).sum())} of {step.size} codes moved (max {int(step.max())})")
    return bad


def cpu_class() -> str:
    import torch

    return torch.backends.cpu.get_cpu_capability()


def test_same_recipe_same_artifacts(tmp_path, monkeypatch):
    out = run_golden_recipe(tmp_path, monkeypatch)
    for rel in ARTIFACTS:
        assert skeleton_sha256(out / rel) == SKELETON[rel], f"{rel}: graph, names, types or metadata changed"
        with np.load(REFERENCE / (rel.replace("/", "-") + ".npz")) as ref:
            assert value_mismatches(initializer_arrays(out / rel), dict(ref)) == [], rel
    pinned = GOLDEN_BY_CPU.get(cpu_class())
    if pinned is None:
        pytest.skip(f"no whole-file hashes recorded for CPU class {cpu_class()}; skeleton and values checked")
    assert {rel: hashlib.sha256((out / rel).read_bytes()).hexdigest() for rel in ARTIFACTS} == pinned


def test_value_check_catches_a_moved_weight():
    ref = {"w": np.array([10, -3, 7, 0], dtype=np.int8), "s": np.array([0.5], dtype=np.float32)}
    assert value_mismatches(dict(ref), ref) == []
    assert value_mismatches({"w": ref["w"], "s": np.array([0.52], np.float32)}, ref) == ["s: values moved beyond 2 %"]
    assert value_mismatches({"w": np.array([10, -3, 9, 0], np.int8), "s": ref["s"]}, ref)


if __name__ == "__main__" and sys.argv[1:2] == ["--record"]:
    class _Patch:  # the two monkeypatch calls the recipe run needs, outside pytest
        def chdir(self, path):
            import os

            os.chdir(path)

        def setenv(self, key, value):
            import os

            os.environ[key] = value

        def setattr(self, obj, name, value):
            setattr(obj, name, value)

    folder = Path(sys.argv[2]).resolve()
    folder.mkdir(parents=True, exist_ok=False)
    out = run_golden_recipe(folder, _Patch())
    REFERENCE.mkdir(parents=True, exist_ok=True)
    for rel in ARTIFACTS:
        np.savez(REFERENCE / (rel.replace("/", "-") + ".npz"), **initializer_arrays(out / rel))
        print(cpu_class(), rel, "skeleton", skeleton_sha256(out / rel),
              "file", hashlib.sha256((out / rel).read_bytes()).hexdigest())
