"""What the Deep Compression bench sections share: the shipped size (export, pack, decode),
the data subsets of the shared sample, ONNX evaluation, and the stages of the shipped Deep
Compression recipes (passes through the pass registry, distillation through
``edgecnn.train.distill``).

Imported by bench/deep_compression.py (sections A-D) and bench/deep_compression_fisher.py
(section E), so neither imports the other.
"""

from __future__ import annotations

import csv
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
import torch.nn as nn
from torch.utils.data import TensorDataset

from edgecnn.data.images import ImageFolder, iter_batches
from edgecnn.export.onnx_export import export_onnx
from edgecnn.pack import decode_model, pack_model
from edgecnn.passes import PassContext, run_pass
from edgecnn.passes.hooks import after_step_hooks
from edgecnn.passes.weight_share import centroid_gradient_hook, shared_layers, tie_to_centroids
from edgecnn.preprocess import get_preset
from edgecnn.recipe import load_recipe
from edgecnn.train import distill


def mib(n: int) -> str:
    return f"{n / 2**20:.3f}"


def export_proto(model: nn.Module, size: int) -> onnx.ModelProto:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "m.onnx"
        export_onnx(model.eval(), path, input_shape=(1, 3, size, size), batch="dynamic")
        return onnx.load(str(path))


def ship(model: nn.Module, size: int) -> dict:
    """Export, pack, decode; the decoded ONNX is what gets evaluated."""
    proto = export_proto(model, size)
    t0 = time.perf_counter()
    data, stats = pack_model(proto)
    t1 = time.perf_counter()
    decoded = decode_model(data)
    t2 = time.perf_counter()
    for a, b in zip(proto.graph.initializer, decoded.graph.initializer):
        assert onnx.numpy_helper.to_array(a).tobytes() == onnx.numpy_helper.to_array(b).tobytes(), a.name
    return {
        "onnx": proto.ByteSize(),
        "shipped": len(data),
        "stats": stats,
        "decoded": decoded,
        "encode_s": t1 - t0,
        "decode_s": t2 - t1,
    }


def distill_subset(data: Path, count: int, out: Path, offset: int = 0) -> ImageFolder:
    """``count`` photos of distill/ (unlabelled; none is in imagenet-sample/), evenly spaced over its manifest
    starting at row ``offset``."""
    with open(data / "distill-manifest.csv") as f:
        rows = [row["relpath"] for row in csv.DictReader(f)]
    step = max(1, len(rows) // count)
    out.write_text("\n".join(str(data / "distill" / r) for r in rows[offset::step][:count]) + "\n")
    return ImageFolder(out)


def subset(data: Path, source_prefix: str, out: Path) -> ImageFolder:
    """A list-file dataset of the sample images from one source (A: EliSchwartz, B: VeriSilicon)."""
    lines = []
    with open(data / "imagenet-sample-manifest.csv") as f:
        for row in csv.DictReader(f):
            if row["source"].startswith(source_prefix):
                lines.append(f"{data / 'imagenet-sample' / row['relpath']} {row['class_index']}")
    out.write_text("\n".join(lines) + "\n")
    return ImageFolder(out)


def evaluate(decoded: onnx.ModelProto, batches: list[tuple[np.ndarray, np.ndarray]], per_image: bool = False):
    """Top-1/top-5 (%) of an ONNX model in ONNX Runtime on preprocessed batches (and, with
    ``per_image``, whether each image's top-1 is right: what a paired bound needs)."""
    from edgecnn.measure.accuracy import ranked_classes  # ties: edgecnn's one rule

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = torch.get_num_threads()  # --threads
    session = ort.InferenceSession(decoded.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    top1 = top5 = total = 0
    correct = []
    for images, labels in batches:
        logits = session.run(None, {name: images})[0]
        top = ranked_classes(logits)
        correct.append(top[:, 0] == labels)
        top1 += int((top[:, 0] == labels).sum())
        top5 += int((top == labels[:, None]).any(1).sum())
        total += len(labels)
    if per_image:
        return 100 * top1 / total, 100 * top5 / total, np.concatenate(correct)
    return 100 * top1 / total, 100 * top5 / total


def load_batches(dataset: ImageFolder, preset: str, limit=None) -> list:
    return list(iter_batches(dataset, get_preset(preset), batch_size=50, limit=limit, workers=2))


# --------------------------------------------------------------------------- the recipes


def recipe_stages(name: str) -> list:
    """The model-changing stages of a shipped recipe (export and measure are the bench's own)."""
    return [stage for stage in load_recipe(name).stages if stage.name not in ("export", "measure")]


def stage_config(recipe: str, kind: str, index: int = 0):
    """The config of the ``index``-th ``kind`` stage of a shipped recipe."""
    return [stage.config for stage in recipe_stages(recipe) if stage.name == kind][index]


def run_stage(stage, model: nn.Module, teacher: nn.Module, train_images, log, ctx=None, **overrides) -> nn.Module:
    """One recipe stage on ``model``: a pass through the pass registry, or ``distill`` through
    the library's trainer (``retrain``); ``overrides`` replace config fields (epochs, ...)."""
    config = stage.config.model_copy(update=overrides) if overrides else stage.config
    if stage.name == "distill":
        retrain(model, teacher, train_images, config, log)
        return model
    return run_pass(stage.name, model, config, ctx or PassContext(progress=False))


def retrain(student: nn.Module, teacher: nn.Module, images: np.ndarray, config, log) -> int:
    """Distil ``teacher`` into ``student`` with ``edgecnn.train.distill`` on preprocessed,
    unlabelled images: pruning masks re-applied and shared weights re-tied after every step
    (``edgecnn.passes.after_step_hooks``); with shared weights each weight's gradient is its
    cluster's mean (the paper's centroid update). Returns the optimizer steps taken."""
    handles = centroid_gradient_hook(student)
    try:
        run = distill(student, teacher, TensorDataset(torch.from_numpy(images)),
                      config.model_copy(update={"progress": False, "device": "cpu"}),
                      after_step=after_step_hooks(student))
    finally:
        for handle in handles:
            handle.remove()
    if shared_layers(student):
        tie_to_centroids(student)
    for entry in run.history:
        log(f"    epoch {entry['epoch']:.0f}/{config.epochs}: distillation loss {entry['loss']:.4f}")
    return run.steps
