"""Shift convolutions + distillation on real weights; writes bench/results/shift_distill.md.

1. Deploy forms of one shift (1x144x56x56, 3x3 taps) in ONNX Runtime CPU: the numbers behind
   the ``shift_deploy`` field of ``edgecnn.targets.TARGETS``.
2. squeezenet1_1 (torchvision preset, shift in every Fire expand3x3) and mobilenet_v2 (tf
   preset, tf_padding, shift in every depthwise conv): params, MACs, ORT latency, top-1 before
   substitution, right after, and after distillation from the original.

Split of ../shared/data/imagenet-sample (manifest order): every third image (index % 3 == 0,
384 images) is held out for evaluation, the other 766 train. Training uses random 224 crops
(and flips) of images resized to 256, the evaluation resolution: training at 128 px was 3x
faster per epoch but recovered less (8.6 vs 11.2 % top-1 after 3 epochs on SqueezeNet).
Usage: python bench/shift_distill.py [--epochs N] [--models squeezenet1_1,mobilenet_v2]
"""

from __future__ import annotations

import argparse
import csv
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("EDGECNN_SHARED_DATA", REPO.parent / "shared" / "data"))
RESULTS = REPO / "bench" / "results" / "shift_distill.md"

MODELS = [
    # name, options, preprocess, distillation hyper-parameters; features are matched at the
    # block outputs (edgecnn.models.layer_select.block_outputs: Fire modules, inverted residuals).
    # Feature matching alone (logit_weight 0) recovered more than logit KD on these few
    # hundred images (see the findings in bench/results/shift_distill.md).
    ("squeezenet1_1", {}, None,
     {"lr": 1e-3, "epochs": 16, "logit_weight": 0.0, "feature_weight": 1.0}),
    ("mobilenet_v2", {"tf_padding": True}, "tf",
     {"lr": 1e-3, "epochs": 2, "logit_weight": 0.0, "feature_weight": 1.0, "freeze_bn": True}),
]
SHIFT_CONFIG = {"kind": "grouped", "assign": "dominant", "calib_images": 16}


def ort_median_ms(onnx_path: Path, shape, runs: int = 200) -> float:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    for _ in range(10):
        session.run(None, {name: x})
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        session.run(None, {name: x})
        times.append(time.perf_counter() - start)
    return 1000 * float(np.median(times))


def export(module, path: Path, shape) -> None:
    module.eval()
    torch.onnx.export(module, torch.zeros(shape), str(path), opset_version=17, input_names=["input"],
                      output_names=["output"], dynamo=False)


def deploy_forms(tmp: Path) -> list[dict]:
    """Latency of each exact shift form vs a real depthwise conv, ORT CPU, 1 thread."""
    from edgecnn.passes.shift import Shift, balanced_taps, even_taps

    channels, shape = 144, (1, 144, 56, 56)
    energy = torch.rand(channels, 9, generator=torch.Generator().manual_seed(0))
    cases = [
        ("depthwise 3x3 conv (what is replaced)", torch.nn.Conv2d(channels, channels, 3, 1, 1, groups=channels, bias=False)),
        ("onehot_dwconv", Shift(channels, 3, even_taps(channels, 3), deploy="onehot_dwconv")),
        ("pad_slice, contiguous groups (assign=even)", Shift(channels, 3, even_taps(channels, 3), deploy="pad_slice")),
        ("pad_slice, scattered groups (assign=balanced)", Shift(channels, 3, balanced_taps(energy, 3), deploy="pad_slice")),
    ]
    rows = []
    x = torch.randn(shape)
    for label, module in cases:
        path = tmp / f"form{len(rows)}.onnx"
        export(module, path, shape)
        exact = None
        if "conv (what" not in label:
            import onnxruntime as ort

            session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
            exact = bool(np.array_equal(session.run(None, {"input": x.numpy()})[0], module(x).detach().numpy()))
        rows.append({"form": label, "ms": ort_median_ms(path, shape), "exact": exact})
        print(f"  {label}: {rows[-1]['ms']:.3f} ms exact={exact}", flush=True)
    return rows


class CachedCrops(torch.utils.data.Dataset):
    """Images decoded once (shorter side ``resize``, centre ``resize`` square, uint8); random
    ``crop`` windows + flips per (seed, epoch, index), normalised on the fly."""

    def __init__(self, paths, labels, preprocess, resize: int, crop: int, seed: int = 0):
        from edgecnn.data.images import open_image

        square = preprocess.replace(input_size=resize, resize=resize, crop=resize)
        self.preprocess = square
        self.images = []
        for path in paths:
            image = open_image(path)
            width, height = image.size
            scale = resize / min(width, height)
            image = image.resize((max(resize, round(width * scale)), max(resize, round(height * scale))))
            left, top = (image.size[0] - resize) // 2, (image.size[1] - resize) // 2
            self.images.append(np.asarray(image.crop((left, top, left + resize, top + resize)), dtype=np.uint8))
        self.labels = labels
        self.crop, self.seed, self.epoch = crop, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self):
        return len(self.images)

    def __getitem__(self, index):
        rng = np.random.default_rng((self.seed, self.epoch, index))
        image = self.images[index]
        top, left = rng.integers(0, image.shape[0] - self.crop + 1, size=2)
        window = image[top: top + self.crop, left: left + self.crop]
        if rng.random() < 0.5:
            window = window[:, ::-1]
        return torch.from_numpy(self.preprocess.normalize(np.ascontiguousarray(window))), int(self.labels[index])


class Eval(torch.utils.data.Dataset):
    def __init__(self, paths, labels, preprocess):
        from edgecnn.data.images import load_image

        self.x = torch.from_numpy(np.stack([load_image(p, preprocess) for p in paths]))
        self.y = torch.as_tensor(labels)

    def __len__(self):
        return len(self.y)

    def __getitem__(self, i):
        return self.x[i], self.y[i]


def run_model(name, options, preset, hparams, epochs, train_items, eval_items, tmp: Path) -> dict:
    from edgecnn.measure.profile import profile_model
    from edgecnn.models import load_model
    from edgecnn.models.layer_select import block_outputs
    from edgecnn.passes.registry import PassContext, run_pass
    from edgecnn.passes.hooks import after_step_hooks, regularizers
    from edgecnn.train import DistillConfig, distill, evaluate_top1

    weights = DATA / "weights" / f"{name}.pth"
    teacher = load_model(name, weights=str(weights), preprocess=preset, **options)
    student = load_model(name, weights=str(weights), preprocess=preset, **options).module
    feature_layers = block_outputs(teacher.module)
    evalset = Eval([p for p, _ in eval_items], [y for _, y in eval_items], teacher.preprocess)
    result = {"model": name}
    prof = profile_model(teacher.module, 224)
    result["params_before"], result["macs_before"] = prof.params, prof.macs
    result["top1_before"] = evaluate_top1(teacher.module, evalset)
    export(teacher.module, tmp / f"{name}.onnx", (1, 3, 224, 224))
    result["ms_before"] = ort_median_ms(tmp / f"{name}.onnx", (1, 3, 224, 224), runs=50)

    trainset = CachedCrops([p for p, _ in train_items], [y for _, y in train_items], teacher.preprocess, 256, 224)
    # Least-squares initialisation of the kept weights on 16 training images (never eval ones).
    from edgecnn.data.images import load_image

    calib = torch.from_numpy(np.stack([load_image(p, teacher.preprocess) for p, _ in train_items[::48][:16]]))
    ctx = PassContext(example_input=torch.zeros(1, 3, 224, 224), calib_batches=[calib])
    student = run_pass("shift", student, SHIFT_CONFIG, ctx)
    summary = ctx.reports[-1].summary
    prof = profile_model(student, 224)
    result["params_after"], result["macs_after"] = prof.params, prof.macs
    result["layers"] = summary["layers_replaced"]
    result["top1_right_after"] = evaluate_top1(student, evalset)
    print(f"  {name}: top-1 {result['top1_before']:.1f} -> {result['top1_right_after']:.1f} right after", flush=True)

    hparams = dict(hparams)
    if epochs:
        hparams["epochs"] = epochs
    config = DistillConfig(batch_size=32, lr_schedule="cosine", optimizer="adamw", warmup_steps=10, seed=0,
                           feature_layers=feature_layers, **hparams)
    started = time.perf_counter()
    run = distill(student, teacher.module, trainset, config, after_step=after_step_hooks(student),
                  regularizers=regularizers(student, config.shift_l1))
    result["train_s"] = time.perf_counter() - started
    result["history"] = run.history
    result["top1_after"] = evaluate_top1(student, evalset)
    export(student, tmp / f"{name}_shift.onnx", (1, 3, 224, 224))
    result["ms_after"] = ort_median_ms(tmp / f"{name}_shift.onnx", (1, 3, 224, 224), runs=50)
    result["config"] = config.model_dump(exclude={"progress", "device", "num_workers", "feature_layers"})
    result["feature_layers"] = f"{feature_layers[0]} .. {feature_layers[-1]} ({len(feature_layers)} block outputs)"
    print(f"  {name}: top-1 after distillation {result['top1_after']:.1f} ({result['train_s']:.0f} s)", flush=True)
    return result


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--epochs", type=int, default=0, help="epochs for every model (default: per model)")
    parser.add_argument("--models", default="squeezenet1_1,mobilenet_v2")
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args(argv)
    if not (DATA / "weights").is_dir():
        print(f"shared data not found at {DATA}; nothing to do")
        return 0
    torch.set_num_threads(2)
    rows = list(csv.DictReader(open(DATA / "imagenet-sample-manifest.csv")))
    items = [(DATA / "imagenet-sample" / r["relpath"], int(r["class_index"])) for r in rows]
    eval_items = [it for i, it in enumerate(items) if i % 3 == 0]
    train_items = [it for i, it in enumerate(items) if i % 3 != 0]
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        print("deploy forms (ORT CPU, 1 thread, 1x144x56x56):", flush=True)
        forms = deploy_forms(tmp)
        results = [run_model(n, o, p, h, args.epochs, train_items, eval_items, tmp)
                   for n, o, p, h in MODELS if n in args.models.split(",")]
    total = time.perf_counter() - started
    text = render(forms, results, len(train_items), len(eval_items), args.epochs, total)
    print(text)
    if not args.no_write:
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        fd, tmpname = tempfile.mkstemp(dir=RESULTS.parent, suffix=".part")
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmpname, RESULTS)
    return 0


def render(forms, results, n_train, n_eval, epochs, total_s) -> str:
    import platform

    lines = ["# Shift convolutions + knowledge distillation (real weights)", "",
             f"Produced by `python bench/shift_distill.py{f' --epochs {epochs}' if epochs else ''}` in {total_s / 60:.1f} min on "
             f"{platform.machine()} CPU ({os.cpu_count()} cores, shared; torch threads 2, ORT 1 thread).", "",
             "## Deploy forms of one shift (ORT CPU, 1x144x56x56, median of 200 runs)", "",
             "| form | ms | bit-exact vs PyTorch |", "| --- | --- | --- |"]
    for f in forms:
        lines.append(f"| {f['form']} | {f['ms']:.3f} | {'' if f['exact'] is None else ('yes' if f['exact'] else 'NO')} |")
    lines += ["", "## Models", "",
              f"Evaluation: every third image of the shared sample in manifest order (index % 3 == 0, "
              f"n={n_eval}); distillation trains on the other {n_train} (never on evaluation images). "
              "Top-1 on this easy sample is not comparable with published ImageNet numbers; "
              f"standard error at n={n_eval} is about 2 points.", "",
              "| model | shifted layers | params | MACs | ORT ms (b1, 224) | top-1 before | right after | after distillation | recovered | train time |",
              "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in results:
        lost = r["top1_before"] - r["top1_right_after"]
        recovered = (r["top1_after"] - r["top1_right_after"]) / lost * 100 if lost > 0 else float("nan")
        lines.append(
            f"| {r['model']} | {r['layers']} | {r['params_before'] / 1e6:.3f} M -> {r['params_after'] / 1e6:.3f} M | "
            f"{r['macs_before'] / 1e6:.0f} M -> {r['macs_after'] / 1e6:.0f} M | {r['ms_before']:.2f} -> {r['ms_after']:.2f} | "
            f"{r['top1_before']:.1f} | {r['top1_right_after']:.1f} | {r['top1_after']:.1f} | {recovered:.0f} % of the loss | "
            f"{r['train_s'] / 60:.1f} min |")
    lines += ["", "Distillation history (train loss per epoch, eval top-1 at the end):", ""]
    for r in results:
        losses = ", ".join(f"{h['loss']:.3f}" for h in r["history"])
        lines.append(f"- {r['model']}: loss {losses}; shift {SHIFT_CONFIG}; feature layers {r['feature_layers']}; "
                     f"distill {r['config']}")
    lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
