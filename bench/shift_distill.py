"""Shift convolutions + distillation on real weights; writes bench/results/shift_distill.md.

1. Deploy forms of one shift (1x144x56x56, 3x3 taps) in ONNX Runtime CPU: the numbers behind
   the ``shift_deploy`` field of ``edgecnn.targets.TARGETS``.
2. squeezenet1_1 (torchvision preset, shift in every Fire expand3x3) and mobilenet_v2 (tf
   preset, tf_padding, shift in every depthwise conv): params, MACs, ORT latency, top-1 before
   substitution, right after, and after feature distillation from the original (evaluated
   after every epoch of the loop).
3. ``--partial N`` (SqueezeNet): the N shift units that ``edgecnn.search.sensitivity`` finds
   least sensitive, shifted alone and distilled the same way.

Evaluation: every third image of ../shared/data/imagenet-sample in manifest order (index % 3
== 0, 384 images, 224 px), never trained on. Training images: the other 766 sample images
(random 224 crops of 256 px + flips), or with ``--distill-images N`` that many photos of
distill/ (none of them in the sample; teacher outputs only, no labels), decoded once into a
uint8 cache and cropped at ``--train-size``. ``--epoch-images`` cuts a long pass into short
epochs so that the history shows the curve; ``--deadline`` sizes the all-layers row to the
time left after the partial one.
Usage: python bench/shift_distill.py [--epochs N] [--models squeezenet1_1,mobilenet_v2]
       [--distill-images N --train-size 144 --epoch-images 4096] [--partial 4 --partial-epochs 2]
       [--deadline HH:MM] [--threads 1] [--lr X]
"""

from __future__ import annotations

import argparse
import copy
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
if str(REPO) not in sys.path:  # this checkout's edgecnn, not an installed one
    sys.path.insert(0, str(REPO))

from _shift_data import Eval, spread, train_data, training_data  # noqa: E402
from _shift_report import render  # noqa: E402

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


def interleaved_ms(paths: dict, shape=None) -> dict:
    """Median ms of each ONNX file through edgecnn's one timer (edgecnn.measure.interleave: a
    process per model, interleaved rounds), ORT CPU, 1 thread."""
    from edgecnn.measure.interleave import time_interleaved

    return {k: t.median_ms for k, t in time_interleaved({str(k): p for k, p in paths.items()}, threads=1).items()}


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
    rows, paths = [], {}
    x = torch.randn(shape)
    for label, module in cases:
        path = tmp / f"form{len(rows)}.onnx"
        export(module, path, shape)
        exact = None
        if "conv (what" not in label:
            import onnxruntime as ort

            session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
            exact = bool(np.array_equal(session.run(None, {"input": x.numpy()})[0], module(x).detach().numpy()))
        rows.append({"form": label, "exact": exact})
        paths[str(len(paths))] = path
    times = interleaved_ms(paths)
    for i, row in enumerate(rows):
        row["ms"] = times[str(i)]
        print(f"  {row['form']}: {row['ms']:.3f} ms exact={row['exact']}", flush=True)
    return rows


def baseline(name, options, preset, eval_items, tmp: Path) -> tuple:
    """Teacher, evaluation set and the FP32 row: params, MACs, ORT ms, top-1."""
    from edgecnn.measure.profile import profile_model
    from edgecnn.models import load_model
    from edgecnn.train import evaluate_top1

    teacher = load_model(name, weights=str(DATA / "weights" / f"{name}.pth"), preprocess=preset, **options)
    evalset = Eval([p for p, _ in eval_items], [y for _, y in eval_items], teacher.preprocess)
    prof = profile_model(teacher.module, 224)
    base = {"model": name, "params_before": prof.params, "macs_before": prof.macs,
            "top1_before": evaluate_top1(teacher.module, evalset)}
    export(teacher.module, tmp / f"{name}.onnx", (1, 3, 224, 224))
    base["onnx"] = tmp / f"{name}.onnx"
    return teacher, evalset, base


def rank_shift_layers(teacher, data, images: int = 64) -> list[dict]:
    """The search's shift units of ``teacher`` with their measured sensitivity (KL of the final
    softmax and top-1 agreement with FP32, each unit applied alone), least sensitive first.
    Measured on training images (evenly spread, offset from the calibration ones), never on
    evaluation images."""
    from edgecnn.data.images import load_image
    from edgecnn.search import sensitivity
    from edgecnn.search.space import build_space

    paths = spread(data.paths[len(data.paths) // (2 * images):], images)
    x = torch.from_numpy(np.stack([load_image(p, teacher.preprocess) for p in paths]))
    calib = [x[i:i + 16] for i in range(0, 32, 16)]
    model = copy.deepcopy(teacher.module).requires_grad_(True)  # the gradient pass needs them
    space = build_space(model, x[:1], precisions=("fp32",), shift=True)
    scores = sensitivity.measure(model, space, x, calib)
    ranked = [{"layer": u.layer, "kl": scores[(u.name, True)].kl, "agreement": scores[(u.name, True)].agreement}
              for u in space.units if u.kind == "shift"]
    return sorted(ranked, key=lambda r: r["kl"])


def shift_row(teacher, evalset, base, feature_layers, hparams, data, include, epochs, tmp: Path) -> dict:
    """Shift (all spatial convs, or ``include``), distil from ``teacher``, measure."""
    from edgecnn.measure.profile import profile_model
    from edgecnn.models import load_model
    from edgecnn.passes.hooks import after_step_hooks, regularizers
    from edgecnn.passes.registry import PassContext, run_pass
    from edgecnn.train import DistillConfig, distill, evaluate_top1

    name = base["model"]
    student = load_model(name, weights=str(DATA / "weights" / f"{name}.pth"), preprocess=base["preset"],
                         **dict(base["options"])).module
    trainset, calib = train_data(teacher, data)
    ctx = PassContext(example_input=torch.zeros(1, 3, 224, 224), calib_batches=[calib])
    shift_config = {**SHIFT_CONFIG, **({"include": include} if include else {})}
    student = run_pass("shift", student, shift_config, ctx)
    result = {**base, "include": include, "shift": shift_config, "layers": ctx.reports[-1].summary["layers_replaced"]}
    prof = profile_model(student, 224)
    result["params_after"], result["macs_after"] = prof.params, prof.macs
    result["top1_right_after"] = evaluate_top1(student, evalset)
    print(f"  {name} ({result['layers']} shifted): top-1 {result['top1_before']:.1f} -> "
          f"{result['top1_right_after']:.1f} right after", flush=True)
    hparams = {**hparams, **({"epochs": epochs} if epochs else {}), **({"lr": data.lr} if data.lr else {})}
    config = DistillConfig(batch_size=32, lr_schedule="cosine", optimizer="adamw", warmup_steps=10, seed=0,
                           feature_layers=feature_layers, progress=False, **hparams)
    started = time.perf_counter()
    run = distill(student, teacher.module, trainset, config, eval_data=evalset, after_step=after_step_hooks(student),
                  regularizers=regularizers(student, config.shift_l1))
    result["train_s"] = time.perf_counter() - started
    result["history"] = run.history
    result["images_seen"] = run.steps * config.batch_size
    result["epoch_images"] = len(trainset)
    result["top1_after"] = evaluate_top1(student, evalset)
    result["onnx_after"] = tmp / f"{name}_shift{result['layers']}.onnx"
    export(student, result["onnx_after"], (1, 3, 224, 224))
    result["config"] = config.model_dump(exclude={"progress", "device", "num_workers", "feature_layers"})
    result["feature_layers"] = f"{feature_layers[0]} .. {feature_layers[-1]} ({len(feature_layers)} block outputs)"
    print(f"  {name}: top-1 after distillation {result['top1_after']:.1f} ({result['train_s']:.0f} s); "
          f"per epoch {[round(h['top1'], 1) for h in run.history]}", flush=True)
    return result


def run_model(name, options, preset, hparams, args, data, eval_items, tmp: Path, on_row) -> None:
    """SqueezeNet with ``--partial``: first the searched partial row (its N least sensitive
    shift units); then the all-layers row, which with ``--deadline`` gets the epochs that fit
    before it (at the partial row's measured time per epoch). Each row goes to ``on_row`` as
    soon as it is measured."""
    from edgecnn.models.layer_select import block_outputs

    teacher, evalset, base = baseline(name, options, preset, eval_items, tmp)
    base["options"], base["preset"] = tuple(sorted(options.items())), preset
    feature_layers = block_outputs(teacher.module)
    epochs = args.epochs or hparams["epochs"]
    if args.partial and name == "squeezenet1_1":
        started = time.perf_counter()
        ranked = rank_shift_layers(teacher, data)
        chosen = [r["layer"] for r in ranked[:args.partial]]
        print(f"  sensitivity ({time.perf_counter() - started:.0f} s): "
              + ", ".join(f"{r['layer']} {r['kl']:.3f}" for r in ranked), flush=True)
        row = shift_row(teacher, evalset, base, feature_layers, hparams, data, chosen, args.partial_epochs or epochs, tmp)
        on_row({**row, "ranking": ranked})
        if args.deadline:  # a step costs ~ teacher forward + 3 x student forward: 0.8x with every Fire shifted
            epochs = epochs_until(args.deadline, 0.85 * row["train_s"] / len(row["history"]), epochs)
    on_row(shift_row(teacher, evalset, base, feature_layers, hparams, data, None, epochs, tmp))
    on_row(None)  # every row of this model measured: time their ONNX models together


def epochs_until(deadline: str, epoch_s: float, at_most: int) -> int:
    """Epochs (at least 1, at most ``at_most``) of ``epoch_s`` each that end before ``deadline``
    (HH:MM UTC today), keeping 3 minutes for the measurements after training."""
    import datetime

    now = datetime.datetime.now(datetime.timezone.utc)
    hour, minute = map(int, deadline.split(":"))
    left = (now.replace(hour=hour, minute=minute, second=0, microsecond=0) - now).total_seconds() - 180
    return max(1, min(at_most, int(left // epoch_s)))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--epochs", type=int, default=0, help="epochs for every model (default: per model)")
    parser.add_argument("--models", default="squeezenet1_1,mobilenet_v2")
    parser.add_argument("--distill-images", type=int, default=0,
                        help="train on this many distill/ photos (evenly spread over its manifest); 0: the 766 sample images")
    parser.add_argument("--train-size", type=int, default=144, help="training crop with --distill-images (px)")
    parser.add_argument("--epoch-images", type=int, default=0,
                        help="images per epoch (each ends with an evaluation), walking through the training set; 0: all")
    parser.add_argument("--lr", type=float, default=0.0, help="peak learning rate (default: per model)")
    parser.add_argument("--partial", type=int, default=0,
                        help="first shift only the N least sensitive SqueezeNet Fires (search sensitivity) and distil")
    parser.add_argument("--partial-epochs", type=int, default=0, help="epochs of the partial row (default: --epochs)")
    parser.add_argument("--deadline", default="",
                        help="HH:MM UTC: the all-layers row (after the partial one) gets the epochs (at most --epochs) that end before it")
    parser.add_argument("--threads", type=int, default=2, help="torch threads")
    parser.add_argument("--cache-dir", default=str(Path(tempfile.gettempdir()) / "edgecnn-bench-cache"))
    parser.add_argument("--no-write", action="store_true")
    parser.add_argument("--out", type=Path, default=RESULTS, help="the results file")
    parser.add_argument("--limit", type=int, default=0,
                        help="a smoke run: this many evaluation and training images, 1 epoch (not results)")
    args = parser.parse_args(argv)
    if not (DATA / "weights").is_dir():
        print(f"shared data not found at {DATA}; nothing to do")
        return 0
    torch.set_num_threads(args.threads)
    rows = list(csv.DictReader(open(DATA / "imagenet-sample-manifest.csv")))
    items = [(DATA / "imagenet-sample" / r["relpath"], int(r["class_index"])) for r in rows]
    eval_items = [it for i, it in enumerate(items) if i % 3 == 0]
    if args.limit:
        eval_items, args.epochs, args.partial_epochs = eval_items[:args.limit], 1, 1
    data = training_data(args, items, DATA)
    started = time.perf_counter()
    argv = argv if argv is not None else sys.argv[1:]
    results = []

    def on_row(row):  # the file is rewritten after every row: a run stopped early keeps what it measured
        if row is None:
            rows = [r for r in results if "ms_after" not in r]
            times = interleaved_ms({"fp32": rows[0]["onnx"], **{i: r["onnx_after"] for i, r in enumerate(rows)}})
            for i, r in enumerate(rows):
                r["ms_before"], r["ms_after"] = times["fp32"], times[str(i)]
        else:
            results.append(row)
        text = render(forms, results, data.label, len(eval_items), argv, args.threads, time.perf_counter() - started)
        if not args.no_write:
            write(text, args.out)

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        print("deploy forms (ORT CPU, 1 thread, 1x144x56x56):", flush=True)
        forms = deploy_forms(tmp)
        for n, o, p, h in MODELS:
            if n in args.models.split(","):
                run_model(n, o, p, h, args, data, eval_items, tmp, on_row)
    print(render(forms, results, data.label, len(eval_items), argv, args.threads, time.perf_counter() - started))
    return 0


def write(text: str, path: Path) -> None:
    from edgecnn.fileio import write_text_atomic

    path.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(path, text)


if __name__ == "__main__":
    sys.exit(main())
