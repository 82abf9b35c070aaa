"""Deep Compression for shipping: pruning + weight sharing + the entropy-coded .ecnn format.

Reproduces the SqueezeNet headline of Deep Compression (Han et al. 2016: 4.8 MB -> 0.47 MB
at 6 bit, 0.66 MB at 8 bit, same accuracy) with edgecnn's passes and shipped format:

A. squeezenet1_0 zoo init pruned to the Deep Compression densities, shared at 6 and 8 bit:
   shipped size (size depends on the weight distribution; random-init weights are not
   trained weights, so this is a sanity figure).
B. The real Deep-Compression SqueezeNet 1.0 (already pruned and 8-bit shared): its size in our
   format at 8 bit and re-shared at 6 bit; top-1/top-5 of FP32 export, 8 bit and 6 bit, each
   through the DECODED ONNX in ONNX Runtime (Caffe preprocessing).
C. squeezenet1_1 (dense, real weights): pruned to the same per-layer densities, 6-bit shared,
   fine-tuned with distillation on sample half A (498 images), evaluated on the held-out
   half B (652 genuine ILSVRC2012 val images).

Sizes: bytes, and MiB (2**20 B) -- the paper's "MB" (4.8 MB = 1,248,424 x 4 B = 4.76 MiB).
Run: python bench/deep_compression.py [--data ../shared/data] [--quick]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from edgecnn.data.images import ImageFolder
from edgecnn.models import create
from edgecnn.passes import PassContext, run_pass
from edgecnn.passes.prune import remove_masks
from edgecnn.stats import describe, drop_verdict

from _deep_compression_parts import distill_subset, evaluate, load_batches, mib, recipe_stages, run_stage, ship, stage_config, subset

# The shipped recipes each section follows (edgecnn/recipes/): densities, bits, distillation.
DENSE_1_0 = "squeezenet-deep-compression"  # A: prune + share
DENSE_1_1 = "squeezenet1_1-deep-compression"  # C: prune, distill, share, distill
PUBLISHED_6BIT = "squeezenet-deep-compression-6bit-retrain"  # B's 6-bit row, D: share, distill

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results" / "deep_compression.md"
PAPER = {"dense_mb": 4.8, "6bit_mb": 0.47, "8bit_mb": 0.66, "nonzeros": 421_098, "params": 1_248_424}


def conv_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    return [(n, m) for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))]


def count_nonzeros(model: nn.Module) -> tuple[int, int]:
    """(kept parameters, all parameters): non-zero weights plus every bias (biases stay dense)."""
    params = sum(p.numel() for p in model.parameters())
    kept = sum(p.numel() if name.endswith("bias") else int((p != 0).sum()) for name, p in model.named_parameters())
    return kept, params


# --------------------------------------------------------------------------- sections


def section_a(data: Path, log) -> list[str]:
    torch.manual_seed(0)
    base = create("squeezenet1_0").eval()
    with torch.no_grad():  # zoo biases start at 0; give them the cost of trained biases
        for name, p in base.named_parameters():
            if name.endswith("bias"):
                p.normal_(0, 0.05)
    run_pass("prune", base, stage_config(DENSE_1_0, "prune"), PassContext(progress=False))
    remove_masks(base)
    nonzeros, params = count_nonzeros(base)
    rows = []
    for bits in (6, 8):
        for init in ("linear", "linear_nonzero"):
            model = create("squeezenet1_0").eval()
            model.load_state_dict(base.state_dict())
            ctx = PassContext(progress=False)
            share = stage_config(DENSE_1_0, "weight_share").model_copy(update={"bits": bits, "init": init})
            run_pass("weight_share", model, share, ctx)
            used = sum(r["distinct"] for r in ctx.reports[-1].rows) / len(ctx.reports[-1].rows)
            result = ship(model, 227)
            rows.append((bits, init, used, result, result["stats"].alternatives))
            log(f"  A {bits} bit {init}: {result['shipped']:,} B")
    lines = [
        "## A. squeezenet1_0, zoo initialisation, Deep Compression densities",
        "",
        f"Per-layer magnitude pruning with the `prune` pass and the Deep Compression densities of the "
        f"shipped recipe `{DENSE_1_0}`: "
        f"{nonzeros:,} of {params:,} parameters kept (paper: {PAPER['nonzeros']:,}, "
        f"{100 * (nonzeros - PAPER['nonzeros']) / PAPER['nonzeros']:+.3f} %; biases are kept dense and drawn from N(0, 0.05) "
        "so that they cost what trained float biases cost). "
        "Weights are kaiming-uniform initialisation, not trained: after pruning, uniform weights "
        "leave a gap of 2/3 of the range around zero, so Deep Compression's linear centroid "
        "initialisation leaves most centroids unused there (column 'used'); `linear_nonzero` "
        "spreads them over the non-zero intervals and uses all 2^bits (near-uniform usage: the "
        "worst case for the entropy coder).",
        "",
        "| bits | init | used centroids / layer | ONNX B | shipped B | shipped MiB | paper MB | rANS B | Huffman B | encode s | decode s |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for bits, init, used, r, alt in rows:
        lines.append(
            f"| {bits} | {init} | {used:.0f} | {r['onnx']:,} | {r['shipped']:,} | {mib(r['shipped'])} | {PAPER[f'{bits}bit_mb']} | "
            f"{alt.get('rans', 0):,} | {alt.get('huffman', 0):,} | {r['encode_s']:.1f} | {r['decode_s']:.2f} |"
        )
    return lines + [""]


def section_b(data: Path, log, limit) -> list[str]:
    sd = torch.load(data / "weights" / "squeezenet1_0.pth", map_location="cpu")
    batches = load_batches(ImageFolder(data / "imagenet-sample"), "caffe", limit)
    n = sum(len(b[1]) for b in batches)
    rows = []
    for label, bits in (("FP32 export (as loaded)", None), ("8 bit (its own codebooks)", 8), ("6 bit (re-shared)", 6)):
        model = create("squeezenet1_0").eval()
        model.load_state_dict(sd)
        if bits == 6:
            run_pass("weight_share", model, stage_config(PUBLISHED_6BIT, "weight_share"), PassContext(progress=False))
        result = ship(model, 227)
        top1, top5 = evaluate(result["decoded"], batches)
        nonzeros, params = count_nonzeros(model)
        shipped = result["shipped"] if bits else None
        rows.append((label, result, shipped, top1, top5, nonzeros))
        log(f"  B {label}: {result['shipped']:,} B, top-1 {top1:.1f}")
    lines = [
        "## B. The published Deep Compression SqueezeNet 1.0 (real ImageNet weights)",
        "",
        f"Already pruned (33 %) and 8-bit shared by its authors. Accuracy on all {n} sample images, "
        "Caffe preprocessing (BGR, warp 256, crop 227, mean subtraction), each model run from the "
        "ONNX decoded out of its .ecnn file in ONNX Runtime (initializers checked bit-identical).",
        "",
        "| model | non-zeros | ONNX B | .ecnn B | .ecnn MiB | paper MB | top-1 % | top-5 % |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for label, r, shipped, top1, top5, nz in rows:
        paper = {"8 bit (its own codebooks)": PAPER["8bit_mb"], "6 bit (re-shared)": PAPER["6bit_mb"]}.get(label, PAPER["dense_mb"])
        lines.append(f"| {label} | {nz:,} | {r['onnx']:,} | {r['shipped']:,} | {mib(r['shipped'])} | {paper} | {top1:.1f} | {top5:.1f} |")
    lines.append("")
    stats = rows[2][1]["stats"]
    lines += [
        f"6-bit file by section (B): graph {stats.sections['G']:,}, directory+models {stats.sections['D']:,}, "
        f"raw floats (biases, codebooks) {stats.sections['R']:,}, entropy-coded indices and zero runs "
        f"{stats.sections['S']:,}. Codec comparison (whole file): " + ", ".join(f"{k} {v:,} B" for k, v in stats.alternatives.items()) + ".",
        "",
    ]
    return lines


def section_c(data: Path, log, limit, workdir: Path) -> list[str]:
    """The recipe ``squeezenet1_1-deep-compression`` stage by stage, a row after each."""
    sd = torch.load(data / "weights" / "squeezenet1_1.pth", map_location="cpu")
    teacher = create("squeezenet1_1").eval()
    teacher.load_state_dict(sd)
    train_set = subset(data, "EliSchwartz", workdir / "train.txt")
    heldout = subset(data, "VeriSilicon", workdir / "heldout.txt")
    log("  C: loading images")
    train_images = np.concatenate([b[0] for b in load_batches(train_set, "torchvision", limit)])
    test_batches = load_batches(heldout, "torchvision", limit)
    quick = {"epochs": 1} if limit else {}

    rows = []

    def record(label, model):
        result = ship(model, 224)
        top1, top5 = evaluate(result["decoded"], test_batches)
        nonzeros, params = count_nonzeros(model)
        rows.append((label, nonzeros, result, top1, top5))
        log(f"  C {label}: {result['shipped']:,} B, top-1 {top1:.1f} top-5 {top5:.1f}")

    record("dense FP32", teacher)
    student = create("squeezenet1_1")
    student.load_state_dict(sd)
    labels = iter(["pruned (DC densities)", "pruned + distilled", "pruned + distilled + 6-bit shared",
                   "+ centroid fine-tuning (distilled)"])
    stages = recipe_stages(DENSE_1_1)
    epochs = [(quick or s.config.model_dump()).get("epochs") for s in stages if s.name == "distill"]
    t0 = time.perf_counter()
    for stage in stages:
        student = run_stage(stage, student, teacher, train_images, log, **(quick if stage.name == "distill" else {}))
        record(next(labels), student)
        if stage.name == "prune":
            t0 = time.perf_counter()
    minutes = (time.perf_counter() - t0) / 60
    train = stage_config(DENSE_1_1, "distill")
    lines = [
        "## C. squeezenet1_1 (dense real weights) -> pruned, 6-bit shared, distilled",
        "",
        f"The shipped recipe `{DENSE_1_1}`, stage by stage: the Deep Compression SqueezeNet 1.0 densities "
        "mapped onto 1.1 by role (conv1, fire2..fire9, conv10; schedule `deep_compression_squeezenet1_1`), one-shot "
        "magnitude pruning with the `prune` pass. Distillation from the dense model by `edgecnn.train.distill` "
        f"(T={train.temperature:g}, SGD momentum {train.momentum:g}, lr {train.lr:g}, "
        f"batch {train.batch_size}, random flips, trained at {train.train_size} px to fit the CPU budget) on sample half A "
        f"({len(train_images)} images, possibly ImageNet training images): {epochs[0]} epochs after pruning (masks re-applied "
        f"every step), {epochs[1]} epochs of centroid fine-tuning after sharing (cluster-mean gradients, weights "
        f"re-tied every step); {minutes:.1f} min on the shared CPU. Evaluated on held-out half B "
        f"({sum(len(b[1]) for b in test_batches)} genuine ILSVRC2012 val images, torchvision "
        "preprocessing), each through the decoded ONNX in ONNX Runtime. Standard error ~1.8 points.",
        "",
        "| model | non-zeros | ONNX B | .ecnn B | .ecnn MiB | top-1 % | top-5 % |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for label, nz, r, top1, top5 in rows:
        lines.append(f"| {label} | {nz:,} | {r['onnx']:,} | {r['shipped']:,} | {mib(r['shipped'])} | {top1:.1f} | {top5:.1f} |")
    return lines + [""]


def section_d(data: Path, log, limit, workdir: Path, distill_images: int = 0, epochs: int = 2) -> list[str]:
    """The recipe ``squeezenet-deep-compression-6bit-retrain`` on the published model.

    ``distill_images`` > 0 trains on that many photos of ``distill/`` instead of sample half A.
    """
    sd = torch.load(data / "weights" / "squeezenet1_0.pth", map_location="cpu")
    teacher = create("squeezenet1_0").eval()
    teacher.load_state_dict(sd)
    if distill_images:
        train_set = distill_subset(data, limit or distill_images, workdir / "distill.txt")
        train_what = "photos of distill/ (Caltech-101 + Imagenette, none in the sample, evenly spaced over its manifest)"
    else:
        train_set = subset(data, "EliSchwartz", workdir / "a.txt")
        train_what = "sample half A"
    train_images = np.concatenate([b[0] for b in load_batches(train_set, "caffe", limit)])
    test_batches = load_batches(subset(data, "VeriSilicon", workdir / "b.txt"), "caffe", limit)
    epochs = 1 if limit else epochs
    rows, corrects = [], []
    student = create("squeezenet1_0")
    student.load_state_dict(sd)
    minutes = 0.0
    stages = recipe_stages(PUBLISHED_6BIT)
    for label, stage in zip(("8 bit (published)", "6 bit re-shared", "6 bit + centroid fine-tuning"), [None, *stages]):
        t0 = time.perf_counter()
        if stage is not None:
            student = run_stage(stage, student, teacher, train_images, log,
                                **({"epochs": epochs} if stage.name == "distill" else {}))
        if stage is not None and stage.name == "distill":
            minutes = (time.perf_counter() - t0) / 60
        result = ship(student.eval(), 227)
        top1, top5, correct = evaluate(result["decoded"], test_batches, per_image=True)
        rows.append((label, result, top1, top5))
        corrects.append(correct)
        log(f"  D {label}: {result['shipped']:,} B, top-1 {top1:.1f} top-5 {top5:.1f}")
    train = stage_config(PUBLISHED_6BIT, "distill")
    lines = [
        "## D. Deep Compression SqueezeNet 1.0 at 6 bit with centroid fine-tuning",
        "",
        f"Re-sharing B's weights to 6 bit without retraining costs accuracy; the paper retrains the "
        f"centroids. Here the shipped recipe `{PUBLISHED_6BIT}`: distillation from the published 8-bit model by "
        f"`edgecnn.train.distill` (T={train.temperature:g}, SGD momentum {train.momentum:g}, "
        f"lr {train.lr:g}, {epochs} epochs, cluster-mean gradients, weights re-tied every step, crops "
        f"downscaled to {train.train_size} px for the CPU budget; {minutes:.1f} min) on {train_what} "
        f"({len(train_images)} images); evaluated on held-out half B "
        f"({sum(len(b[1]) for b in test_batches)} genuine val images), decoded ONNX in ORT.",
        "",
        "| model | .ecnn B | .ecnn MiB | top-1 % (half B) | top-5 % (half B) |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for label, r, top1, top5 in rows:
        lines.append(f"| {label} | {r['shipped']:,} | {mib(r['shipped'])} | {top1:.1f} | {top5:.1f} |")
    lines.append("")
    for (label, *_), correct in zip(rows[1:], corrects[1:]):
        drop = drop_verdict(corrects[0], correct, 1.0)
        lines.append(f"- {label}: top-1 drop against the published 8-bit model {describe(drop)} "
                     "(one-sided 95 % bound, paired per image on half B).")
    return lines + [""]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, default=Path(os.environ.get("EDGECNN_SHARED_DATA", REPO.parent / "shared" / "data")))
    parser.add_argument("--quick", action="store_true", help="64 images and 1 epoch: a smoke run, not results")
    parser.add_argument("--limit", type=int, default=0, help="with --quick: this many images instead of 64")
    parser.add_argument("--sections", default="ABCD", help="E: Fisher-weighted re-sharing and bit allocation (deep_compression_fisher.py)")
    parser.add_argument("--threads", type=int, default=2, help="torch and ONNX Runtime threads")
    parser.add_argument("--append", action="store_true", help="append the sections to the existing results file")
    parser.add_argument("--output", type=Path, default=RESULTS)
    parser.add_argument("--distill-images", type=int, default=0,
                        help="section D: fine-tune the centroids on this many photos of distill/ instead of sample half A")
    parser.add_argument("--epochs", type=int, default=2, help="section D: epochs of centroid fine-tuning")
    args = parser.parse_args(argv)
    if not (args.data / "weights").is_dir():
        print(f"shared data not found at {args.data}; pass --data", file=sys.stderr)
        return 2
    torch.set_num_threads(args.threads)
    limit = (args.limit or 64) if args.quick else None
    start = time.perf_counter()
    log = lambda msg: print(f"[{time.perf_counter() - start:6.0f}s] {msg}", flush=True)  # noqa: E731
    lines = [
        "# Deep Compression for shipping: SqueezeNet in the .ecnn format",
        "",
        "Generated by `python bench/deep_compression.py`" + (" --quick (smoke run, not results)" if args.quick else "") + ".",
        f"Paper (Han et al. 2016, SqueezeNet): {PAPER['dense_mb']} MB dense -> {PAPER['6bit_mb']} MB "
        f"(6 bit) / {PAPER['8bit_mb']} MB (8 bit), {PAPER['nonzeros']:,} of {PAPER['params']:,} parameters kept. "
        "Their MB is 2**20 B (1,248,424 x 4 B = 4.76 MiB). The .ecnn file is everything an app needs: "
        "graph, every weight and bias, header and checksum.",
        "",
    ]
    with tempfile.TemporaryDirectory() as tmp:
        if "A" in args.sections:
            lines += section_a(args.data, log)
        if "B" in args.sections:
            lines += section_b(args.data, log, (args.limit or 100) if args.quick else None)
        if "C" in args.sections:
            lines += section_c(args.data, log, limit, Path(tmp))
        if "D" in args.sections:
            lines += section_d(args.data, log, limit, Path(tmp), args.distill_images, args.epochs)
        if "E" in args.sections:
            from deep_compression_fisher import section_e

            lines += section_e(args.data, log, limit, Path(tmp), args.distill_images or 4000, args.epochs)
    lines.append(f"Total bench time {(time.perf_counter() - start) / 60:.1f} min ({args.threads} thread(s) on 2 shared CPU cores).")
    if args.append and args.output.exists():
        lines = [args.output.read_text().rstrip("\n"), ""] + lines[5:]
    from edgecnn.measure.sysinfo import environment_markdown

    text = "\n".join(lines) + "\n\n" + environment_markdown(threads=args.threads)
    print(text)
    from edgecnn.fileio import write_text_atomic

    args.output.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(args.output, text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
