"""Which int8 encoding ONNX Runtime's ARM64 kernels compute correctly, measured on those kernels.

Builds ``ort-arm``-style artifacts of real models in four encodings (activations s8 or u8,
i.e. S8S8 or U8S8 kernels; weights on the full 8-bit grid or the 7-bit -63..63 grid), runs each
with the real aarch64 ONNX Runtime under qemu-user at every ARM level of ``qemu-arm``
(edgecnn.devices.qemu_env.ARM_LEVELS), and compares every logit with the same file computed in
reference Q/DQ semantics here (ORT graph optimizations off). Emulation gives numerics only:
no timing is taken. The result decides the ``ort-arm`` target's encoding (edgecnn/targets.py).

    python bench/arm_kernels.py [--images 48] [--levels rpi4,rpi5,orin,max] [--out bench/results/arm_kernels.md]

Needs ../shared/data (real weights, images), qemu-user and apt's arm64 architecture.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data"
# (activation dtype of the QuantConfig target, weights stored signed): the kernel pairs ORT runs.
ENCODINGS = {"S8S8": "ort-arm", "U8S8": "ort-x86"}
sys.path.insert(0, str(REPO / "bench"))
from _models import WITH_WEIGHTS, load  # noqa: E402


def build_artifact(model: str, encoding: str, bits: int, out: Path, calib_dir: Path, calib_images: int = 16,
                   input_size: int | None = None, shared: Path = SHARED) -> Path:
    """A Q/DQ ONNX file of ``model`` in ``encoding`` (S8S8 or U8S8, weights always s8) at ``bits``."""
    import torch

    from edgecnn.data.images import ImageFolder, iter_batches
    from edgecnn.export.qdq import export_qdq_report
    from edgecnn.measure.accuracy import subset
    from edgecnn.models import load_model
    from edgecnn.passes.fold_bn import fold_batchnorm
    from edgecnn.passes.quantize import QuantConfig, quantize_model
    from edgecnn.targets import TARGETS

    torch.manual_seed(0)
    # A model with no published weights in the shared data (ShuffleNet) is timed at a seeded random init.
    loaded = load(model, shared) if model in WITH_WEIGHTS else load_model(model)
    if input_size:
        loaded.preprocess = loaded.preprocess.replace(input_size=input_size)
    loaded.module, _ = fold_batchnorm(loaded.module)
    size = loaded.preprocess.input_size
    calib = [torch.from_numpy(x) for x, _ in iter_batches(subset(ImageFolder(calib_dir), calib_images),
                                                          loaded.preprocess, 16, workers=1)]
    config = QuantConfig(target=ENCODINGS[encoding], bits=bits, calibrator="max")
    loaded.module, _ = quantize_model(loaded.module, config, calib, progress=False)
    # Weights stay s8 in every encoding measured here (ort-x86's U8U8 storage is an x86 answer).
    target = dataclasses.replace(TARGETS[ENCODINGS[encoding]], weight_dtype="int8", signed_weights_max=0)
    return export_qdq_report(loaded, out, target, input_shape=(1, 3, size, size), parity=False).path


def check_on_levels(onnx_path: Path, data: Path, levels, images: int) -> dict:
    """{level: {agreement, max_abs_logit_diff, top1, samples}} against reference semantics here;
    ``host`` is this machine's own (x86) int8 kernels, for comparison."""
    from edgecnn.devices import parse_device
    from edgecnn.measure.accuracy import evaluate, evaluate_onnx, onnx_predictor, onnx_preprocess

    runtime, _ = onnx_predictor(onnx_path, opt_level="all")
    reference, _ = onnx_predictor(onnx_path, opt_level="disable")
    here = evaluate(runtime, data, onnx_preprocess(onnx_path), str(onnx_path), reference, "reference semantics",
                    images, 16, False, num_outputs=1000)
    rows = {"host": {"agreement": here.agreement, "max_abs_logit_diff": here.max_abs_logit_diff, "top1": here.top1,
                     "samples": here.samples}}
    for level in levels:
        report = evaluate_onnx(onnx_path, data, limit=images, batch_size=16, progress=False,
                               device=parse_device(f"qemu-arm:{level}"))
        rows[level] = {"agreement": report.agreement, "max_abs_logit_diff": report.max_abs_logit_diff,
                       "top1": report.top1, "samples": report.samples}
    return rows


def environment(levels) -> dict:
    from edgecnn.devices import parse_device
    from edgecnn.measure.sysinfo import environment as library_environment

    host = library_environment()
    emulated = {}
    for level in levels:
        probe = parse_device(f"qemu-arm:{level}").probe()
        emulated[level] = {"cpu_flags": probe["cpu_flags"], "runtimes": probe["runtimes"], "python": probe["python"]}
    import subprocess

    qemu = subprocess.run(["qemu-aarch64", "--version"], capture_output=True, text=True).stdout.splitlines()[0]
    return {"host": host, "qemu": qemu, "emulated": emulated}


def render(results: list[dict], env: dict, args) -> str:
    from edgecnn.devices.qemu_env import ARM_LEVELS

    levels = ["host", *args.levels]
    lines = ["# ONNX Runtime's ARM64 int8 kernels under emulation: which encoding they compute correctly", "",
             f"Generated by `python bench/arm_kernels.py --images {args.images} --levels {','.join(args.levels)}`. "
             "Each artifact ran with the real aarch64 ONNX Runtime under qemu-user at each CPU level, on "
             f"{args.images} images of ../shared/data/imagenet-sample spread over the classes; every logit is "
             "compared with the same file in reference Q/DQ semantics on the host (ORT graph optimizations off). "
             "Calibration: 16 images of distill/imagenette, max calibrator. Numerics only: emulated timings "
             "mean nothing and none were taken.", "",
             "Columns: `host` = this machine's own x86 int8 kernels (not emulated); " + "; ".join(
                 f"`{n}` = {ARM_LEVELS[n].board}, -cpu {ARM_LEVELS[n].qemu_cpu}" for n in args.levels), "",
             "| model | encoding | weight bits | " + " | ".join(f"{lv} agree % / max abs diff" for lv in levels) + " |",
             "| --- | --- | ---: | " + " | ".join("---:" for _ in levels) + " |"]
    for row in results:
        cells = [f"{row['levels'][lv]['agreement'] * 100:.1f} / {row['levels'][lv]['max_abs_logit_diff']:.3g}"
                 for lv in levels]
        lines.append(f"| {row['model']} | {row['encoding']} | {row['bits']} | " + " | ".join(cells) + " |")
    lines += ["", "agree %: top-1 equal to the reference semantics' top-1; max abs diff: largest |logit - "
              "reference logit| over all images and classes. An image whose reference top-1 and top-2 nearly "
              "tie can flip on any kernel's rounding: the same flip on every column (7-bit included) is such a tie, "
              "not saturation.", "", "## Environment", "", "```",
              json.dumps(env, indent=1, sort_keys=True), "```", ""]
    return "\n".join(lines)


def main(argv=None) -> int:
    sys.path.insert(0, str(REPO))
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=48)
    parser.add_argument("--levels", default="rpi4,rpi5,orin,max", type=lambda s: s.split(","))
    parser.add_argument("--models", default="squeezenet1_1,mobilenet_v2", type=lambda s: s.split(","))
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "arm_kernels.md")
    parser.add_argument("--work", type=Path, default=Path("/tmp/edgecnn-arm-kernels"))
    args = parser.parse_args(argv)
    from edgecnn.fileio import write_text_atomic

    args.work.mkdir(parents=True, exist_ok=True)
    env = environment(args.levels)
    results = []
    for model in args.models:
        for encoding in ENCODINGS:
            for bits in (8, 7):
                path = args.work / f"{model}-{encoding}-w{bits}.onnx"
                done = path.with_suffix(f".{args.images}-{'-'.join(args.levels)}.json")  # resumable
                if not path.is_file():
                    build_artifact(model, encoding, bits, path, SHARED / "distill" / "imagenette")
                start = time.time()
                if done.is_file():
                    levels = json.loads(done.read_text())
                else:
                    levels = check_on_levels(path, SHARED / "imagenet-sample", args.levels, args.images)
                    write_text_atomic(done, json.dumps(levels))
                results.append({"model": model, "encoding": encoding, "bits": bits, "levels": levels})
                print(model, encoding, bits, json.dumps(levels), f"{time.time() - start:.0f} s", flush=True)
    write_text_atomic(args.out, render(results, env, args))
    write_text_atomic(args.out.with_suffix(".json"), json.dumps({"results": results, "environment": env}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
