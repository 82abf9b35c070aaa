"""The real ImageNet weights in ../shared load strictly and reach their reference accuracy.

Reference top-1 values are those of ../shared/data/README.md for the ILSVRC2012 validation
half of the sample ("B val-only", 652 images): evaluating the seven configurations on all
1150 images costs several CPU minutes, the 652 genuine validation images a third of that.
The models run through ONNX Runtime after a logits parity check against PyTorch on the
first batch (ORT is about twice as fast as eager PyTorch on CPU); every model is evaluated
once, all models of one preprocessing preset on the same decoded batches.
"""

from __future__ import annotations

import csv
import os
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from edgecnn.data.images import ImageFolder, iter_batches
from edgecnn.models import load_model
from edgecnn.preprocess import get_preset

# preset -> [(weights file, architecture, options, README top-1 on the 652 val images)]
REFERENCE = {
    "torchvision": [("squeezenet1_1", "squeezenet1_1", {}, 71.5)],
    "caffe": [
        ("squeezenet1_1_caffe", "squeezenet1_1", {}, 70.9),
        ("squeezenet1_0", "squeezenet1_0", {}, 69.8),
    ],
    "tf": [
        ("mobilenet_v1", "mobilenet_v1", {"tf_padding": True}, 78.5),
        ("mobilenet_v1", "mobilenet_v1", {}, 73.9),
        ("mobilenet_v2", "mobilenet_v2", {"tf_padding": True}, 79.0),
        ("mobilenet_v2", "mobilenet_v2", {}, 76.8),
    ],
}
LAYOUTS = {
    "squeezenet1_1": ("squeezenet1_1", {}),
    "squeezenet1_1_caffe": ("squeezenet1_1", {}),
    "squeezenet1_0": ("squeezenet1_0", {}),
    "mobilenet_v1": ("mobilenet_v1", {}),
    "mobilenet_v2": ("mobilenet_v2", {}),
}


@pytest.fixture(scope="module")
def val_list(shared_data, tmp_path_factory) -> Path:
    """A list file of the genuine ILSVRC2012 validation images of the sample, with labels."""
    lines = []
    with open(shared_data / "imagenet-sample-manifest.csv", newline="") as f:
        for row in csv.DictReader(f):
            if "ILSVRC2012_VAL" in row["source"]:
                lines.append(f"{shared_data / 'imagenet-sample' / row['relpath']} {row['class_index']}")
    path = tmp_path_factory.mktemp("val") / "val.txt"
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.mark.parametrize("weights_name", sorted(LAYOUTS))
def test_shared_weights_load_strictly(shared_data, weights_name):
    arch, options = LAYOUTS[weights_name]
    state = torch.load(shared_data / "weights" / f"{weights_name}.pth", map_location="cpu", weights_only=True)
    loaded = load_model(arch, **options)
    loaded.module.load_state_dict(state, strict=True)
    assert set(state) == set(loaded.module.state_dict())


def _onnx_session(module, size, tmp_path):
    ort = pytest.importorskip("onnxruntime")
    path = tmp_path / "model.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module, (torch.zeros(1, 3, size, size),), str(path), opset_version=17, dynamo=False,
            input_names=["input"], output_names=["logits"], dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
        )
    options = ort.SessionOptions()
    options.intra_op_num_threads = min(2, os.cpu_count() or 1)
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")  # no busy-waiting on a shared CPU
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


@pytest.mark.slow
@pytest.mark.parametrize("preset", sorted(REFERENCE))
def test_shared_weights_reach_reference_top1(shared_data, val_list, preset, tmp_path):
    dataset = ImageFolder(val_list)
    assert len(dataset) == 652
    preprocess = get_preset(preset)
    runs = []
    for index, (weights_name, arch, options, reference) in enumerate(REFERENCE[preset]):
        loaded = load_model(arch, weights=str(shared_data / "weights" / f"{weights_name}.pth"), preprocess=preset, **options)
        assert loaded.preprocess == preprocess
        folder = tmp_path / str(index)
        folder.mkdir()
        session = _onnx_session(loaded.module, preprocess.input_size, folder)
        runs.append({"name": f"{weights_name} {options}", "module": loaded.module, "session": session, "reference": reference, "correct": 0})

    seen = 0
    for batch_index, (images, labels) in enumerate(iter_batches(dataset, preprocess, batch_size=64)):
        for run in runs:
            logits = run["session"].run(None, {"input": images})[0]
            if batch_index == 0:  # parity of the exported graph with the PyTorch module
                with torch.inference_mode():
                    expected = run["module"](torch.from_numpy(images[:8])).numpy()
                assert np.abs(logits[:8] - expected).max() < 1e-3 * max(1.0, np.abs(expected).max())
                assert (logits[:8].argmax(1) == expected.argmax(1)).all()
            run["correct"] += int((logits.argmax(1) == labels).sum())
        seen += len(labels)
    for run in runs:
        top1 = 100.0 * run["correct"] / seen
        assert abs(top1 - run["reference"]) <= 1.0, f"{run['name']}: top-1 {top1:.1f} vs reference {run['reference']}"
