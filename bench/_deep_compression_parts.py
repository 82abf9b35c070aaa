"""What the Deep Compression bench sections share: the shipped size (export, pack, decode),
the data subsets of the shared sample, ONNX evaluation and the distillation loop.

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
import torch.nn.functional as F

from edgecnn.data.images import ImageFolder, iter_batches
from edgecnn.export.onnx_export import export_onnx
from edgecnn.pack import decode_model, pack_model
from edgecnn.preprocess import get_preset


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


def evaluate(decoded: onnx.ModelProto, batches: list[tuple[np.ndarray, np.ndarray]]) -> tuple[float, float]:
    """Top-1/top-5 (%) of an ONNX model in ONNX Runtime on preprocessed batches."""
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = torch.get_num_threads()  # --threads
    session = ort.InferenceSession(decoded.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    top1 = top5 = total = 0
    for images, labels in batches:
        logits = session.run(None, {name: images})[0]
        top = np.argsort(-logits, axis=1)[:, :5]
        top1 += int((top[:, 0] == labels).sum())
        top5 += int((top == labels[:, None]).any(1).sum())
        total += len(labels)
    return 100 * top1 / total, 100 * top5 / total


def load_batches(dataset: ImageFolder, preset: str, limit=None) -> list:
    return list(iter_batches(dataset, get_preset(preset), batch_size=50, limit=limit, workers=2))


# --------------------------------------------------------------------------- fine-tuning


def distill(student, teacher, images: np.ndarray, epochs: int, lr: float, after_step, log, temperature: float = 2.0, size: int = 160, lrs=None):
    """Knowledge distillation on preprocessed images (random horizontal flips), SGD + momentum.

    Trains at ``size`` px (the 224 crops downscaled) to fit the CPU budget; SqueezeNet is
    fully convolutional, evaluation stays at 224. ``lrs``: one learning rate per epoch (else ``lr``).
    """
    student.train()
    teacher.eval()
    params = [p for p in student.parameters() if p.requires_grad]
    opt = torch.optim.SGD(params, lr=lr, momentum=0.9)
    x_all = torch.from_numpy(images)
    if x_all.shape[-2:] != (size, size):
        x_all = F.interpolate(x_all, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    with torch.no_grad():
        soft = torch.cat([teacher(x_all[i : i + 64]) for i in range(0, len(x_all), 64)])
        soft_flip = torch.cat([teacher(x_all[i : i + 64].flip(3)) for i in range(0, len(x_all), 64)])
    gen = torch.Generator().manual_seed(0)
    steps = 0
    for epoch in range(epochs):
        for group in opt.param_groups:
            group["lr"] = lrs[epoch] if lrs else lr
        order = torch.randperm(len(x_all), generator=gen)
        total = 0.0
        for i in range(0, len(order), 32):
            idx = order[i : i + 32]
            flip = torch.rand(1, generator=gen).item() < 0.5
            x = x_all[idx].flip(3) if flip else x_all[idx]
            target = (soft_flip if flip else soft)[idx]
            logits = student(x)
            loss = F.kl_div(
                F.log_softmax(logits / temperature, 1), F.softmax(target / temperature, 1), reduction="batchmean"
            ) * temperature**2
            opt.zero_grad()
            loss.backward()
            opt.step()
            after_step(student)
            total += loss.item() * len(idx)
            steps += 1
        log(f"    epoch {epoch + 1}/{epochs}: distillation loss {total / len(x_all):.4f}")
    student.eval()
    return steps
