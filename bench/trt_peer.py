"""TensorRT target: edgecnn's ``trt`` Q/DQ export vs NVIDIA Model Optimizer's INT8 ONNX.

NVIDIA's own quantizer for TensorRT is Model Optimizer (``nvidia-modelopt``; it replaced the
frozen pytorch-quantization). It is a bench peer only, never an edgecnn dependency, and runs
in its own virtual environment (``--modelopt-python``) because it pins its own packages.

For squeezenet1_1 (torchvision preprocessing) and mobilenet_v2 (TF preprocessing, TF SAME
padding) with the shared real weights, on the shared ImageNet sample:

* FP32: edgecnn's FP32 ONNX export (BN folded), the reference for agreement.
* edgecnn trt: ``quantize`` (8-bit, ``target=trt``, MSE calibration) + ``export_qdq_report``
  for ``trt``; and the same with FP16 for the float rest (agreement with the FP32-rest file
  on 256 images only, to keep CPU time down).
* modelopt torch: ``mtq.quantize(model, mtq.INT8_DEFAULT_CFG, forward_loop)`` on the PyTorch
  model as NVIDIA's guide does it (BN not folded), exported with ``torch.onnx.export``.
* modelopt onnx: ``modelopt.onnx.quantization.quantize(fp32.onnx, quantize_mode="int8")``
  on the same FP32 ONNX, its defaults otherwise (calibration method, FP16 for the rest).

Every quantizer calibrates on the same 128 images (every 8th image: bench/_stats.split_calibration,
the split of bench/run.py); every file is evaluated once on the other 1022 images in
reference semantics: ONNX Runtime with graph optimizations off, so each Q/DQ pair computes
exactly what the ONNX operators define (what TensorRT computes, up to its rounding and FP16).
ORT's own fused int8 kernels on an x86 CPU without VNNI saturate with signed int8
activations and would measure the CPU, not the artifact. Reported: top-1/top-5, top-1
agreement with FP32, file bytes, and a Q/DQ census (what each tool quantized).

Run: python bench/trt_peer.py [--data ../shared/data] --modelopt-python V/bin/python   (V: bench/requirements.txt)
Fixture: <modelopt python> bench/trt_peer.py --fixture tests/data/modelopt/tiny_modelopt_int8.onnx
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Optional

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from _models import WITH_WEIGHTS, load  # noqa: E402

CALIB = 128
QUANTIZED_OPS = ("Conv", "Gemm", "MatMul", "Add", "Concat", "GlobalAveragePool", "AveragePool", "MaxPool")


def load_images(data: Path, preprocess):
    from _stats import split_calibration

    from edgecnn.data.images import ImageFolder, iter_batches

    images, labels = [], []
    for batch, lab in iter_batches(ImageFolder(data / "imagenet-sample"), preprocess, batch_size=64, workers=2):
        images.append(batch)
        labels.append(lab)
    images, labels = np.concatenate(images), np.concatenate(labels)
    calib, evaluate = split_calibration(len(images), CALIB)
    return images[calib], images[evaluate], labels[evaluate]


def ort_logits(path: Path, images: np.ndarray, reference_semantics: bool, batch: int = 32) -> np.ndarray:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 2
    options.log_severity_level = 3
    if reference_semantics:
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    feed = session.get_inputs()[0]
    static = feed.shape[0] if isinstance(feed.shape[0], int) else None
    step = static or batch
    outs = []
    for i in range(0, len(images), step):
        chunk = images[i:i + step]
        if static and len(chunk) < static:
            chunk = np.concatenate([chunk, np.zeros((static - len(chunk), *chunk.shape[1:]), np.float32)])
        outs.append(np.asarray(session.run(None, {feed.name: chunk})[0], np.float32)[: len(images[i:i + step])])
    return np.concatenate(outs)


def scores(logits: np.ndarray, labels: np.ndarray, reference: np.ndarray | None) -> dict:
    from edgecnn.measure.accuracy import ranked_classes  # ties: edgecnn's one rule

    top5 = ranked_classes(logits)
    return {
        "top1": float((top5[:, 0] == labels).mean() * 100),
        "top5": float((top5 == labels[:, None]).any(1).mean() * 100),
        "agree": float((top5[:, 0] == reference.argmax(1)).mean() * 100) if reference is not None else 100.0,
    }


def census(path: Path) -> dict:
    """What a Q/DQ file quantized: Q/DQ counts, ops with a dequantized activation input, int8 weights."""
    import onnx
    from onnx import TensorProto

    from edgecnn.export.trt_rules import _Graph, lint

    model = onnx.load(str(path))
    g = _Graph(model)
    ops = collections.Counter(n.op_type for n in model.graph.node)
    constants = {init.name for init in model.graph.initializer} | {n.output[0] for n in model.graph.node
                                                                    if n.op_type == "Constant"}

    def from_dq(tensor: str) -> bool:
        node = g.producer.get(tensor)
        return node is not None and node.op_type == "DequantizeLinear" and node.input[0] not in constants \
            and (g.producer.get(node.input[0]) is None or g.producer[node.input[0]].op_type != "QuantizeLinear"
                 or g.producer[node.input[0]].input[0] not in constants)

    quantized = collections.Counter()
    total = collections.Counter()
    for node in model.graph.node:
        if node.op_type in QUANTIZED_OPS:
            total[node.op_type] += 1
            if any(from_dq(t) for t in node.input[:1 if node.op_type in ("Conv", "Gemm", "MatMul") else None]):
                quantized[node.op_type] += 1
    int8_bytes = sum(len(i.raw_data) for i in model.graph.initializer if i.data_type == TensorProto.INT8)
    float_types = collections.Counter(TensorProto.DataType.Name(i.data_type) for i in model.graph.initializer
                                      if i.data_type in (TensorProto.FLOAT, TensorProto.FLOAT16) and len(i.dims) > 1)
    return {
        "bytes": path.stat().st_size,
        "opset": next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx")),
        "q": ops["QuantizeLinear"], "dq": ops["DequantizeLinear"],
        "quantized": {op: f"{quantized[op]}/{total[op]}" for op in QUANTIZED_OPS if total[op]},
        "int8_weight_bytes": int8_bytes,
        "float_weight_types": dict(float_types),
        "lint": [v.rule for v in lint(model)],
    }


# --- the modelopt side (runs in the modelopt environment) -------------------------------------


def modelopt_worker(name: str, data: Path, work: Path) -> None:
    """mtq INT8 + torch.onnx.export, and modelopt.onnx INT8 of work/<name>_fp32.onnx."""
    import warnings

    import torch

    warnings.filterwarnings("ignore")
    torch.set_num_threads(2)
    import modelopt
    import modelopt.onnx.quantization as moq
    import modelopt.torch.quantization as mtq

    calib = np.load(work / f"{name}_calib.npy")
    timings = {"modelopt": modelopt.__version__}
    loaded = load(name, data)
    model = loaded.module.eval()
    batches = [torch.from_numpy(calib[i:i + 32]) for i in range(0, len(calib), 32)]

    def forward_loop(m):
        with torch.no_grad():
            for b in batches:
                m(b)

    start = time.perf_counter()
    quantized = mtq.quantize(model, mtq.INT8_DEFAULT_CFG, forward_loop=forward_loop)
    timings["mtq_s"] = time.perf_counter() - start
    with torch.no_grad():
        torch.onnx.export(quantized, torch.from_numpy(calib[:1]), str(work / f"{name}_mtq.onnx"), input_names=["input"],
                          output_names=["output"], opset_version=17, dynamic_axes={"input": {0: "N"}, "output": {0: "N"}},
                          dynamo=False)
    start = time.perf_counter()
    moq.quantize(str(work / f"{name}_fp32.onnx"), quantize_mode="int8", calibration_data=calib,
                 calibration_eps=["cpu"], output_path=str(work / f"{name}_moq.onnx"), log_level="ERROR")
    timings["moq_s"] = time.perf_counter() - start
    (work / f"{name}_modelopt.json").write_text(json.dumps(timings))


def make_fixture(out: Path) -> None:
    """A tiny modelopt.onnx INT8 file (a few kB) for edgecnn's tests: 3 classes, 8x8 input."""
    import warnings

    import torch

    warnings.filterwarnings("ignore")
    import modelopt.onnx.quantization as moq

    torch.manual_seed(0)
    net = torch.nn.Sequential(
        torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv2d(4, 4, 3, padding=1), torch.nn.ReLU(),
        torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(4, 3)).eval()
    with tempfile.TemporaryDirectory() as tmp:
        fp32 = Path(tmp) / "tiny_fp32.onnx"
        torch.onnx.export(net, torch.randn(1, 3, 8, 8), str(fp32), input_names=["input"], output_names=["output"],
                          opset_version=17, dynamo=False)
        calib = np.random.default_rng(0).uniform(0, 1, (16, 3, 8, 8)).astype(np.float32)
        moq.quantize(str(fp32), quantize_mode="int8", calibration_data=calib, calibration_method="max",
                     calibration_eps=["cpu"], output_path=str(out), log_level="ERROR")
    print(f"wrote {out} ({out.stat().st_size} bytes)")


# --- the edgecnn side ------------------------------------------------------------------------------


def run_model(name: str, data: Path, work: Path, modelopt_python: str) -> list[dict]:
    import copy

    import torch

    from edgecnn.export.onnx_export import export_onnx
    from edgecnn.export.qdq import export_qdq_report
    from edgecnn.passes.quantize import QuantConfig, quantize_model

    loaded = load(name, data, fold_bn=True)
    calib, images, labels = load_images(data, loaded.preprocess)
    np.save(work / f"{name}_calib.npy", calib)
    print(f"{name}: {len(calib)} calibration images, {len(images)} evaluation images", flush=True)
    shape = (1, *images.shape[1:])
    fp32 = export_onnx(loaded.module, work / f"{name}_fp32.onnx", input_shape=shape, batch="dynamic")

    worker = subprocess.Popen([modelopt_python, str(Path(__file__).resolve()), "--modelopt-worker", name,
                               "--data", str(data), "--work", str(work)], stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True)
    reference = ort_logits(fp32, images, reference_semantics=False)
    rows = [dict(model=name, tool="FP32 (edgecnn ONNX export)", **scores(reference, labels, None), **census(fp32))]

    batches = [torch.from_numpy(calib[i:i + 32]) for i in range(0, len(calib), 32)]
    start = time.perf_counter()
    model, _ = quantize_model(copy.deepcopy(loaded.module), QuantConfig(bits=8, target="trt"), batches, progress=False)
    seconds = time.perf_counter() - start
    ours = export_qdq_report(model, work / f"{name}_edgecnn_trt.onnx", "trt", input_shape=shape,
                             parity_inputs=images[:32], min_agreement=0.9, batch="dynamic")
    ours16 = export_qdq_report(model, work / f"{name}_edgecnn_trt_fp16.onnx", "trt", input_shape=shape,
                               parity_inputs=images[:32], min_agreement=0.9, batch="dynamic", fp16_rest=True)
    logits = ort_logits(ours.path, images, reference_semantics=True)
    rows.append(dict(model=name, tool="edgecnn trt (8-bit, MSE calibration)", quant_s=round(seconds, 1),
                     **scores(logits, labels, reference), **census(ours.path)))
    sub = ort_logits(ours16.path, images[:256], reference_semantics=True)
    rows.append(dict(model=name, tool="edgecnn trt, FP16 rest", fp16_vs_fp32_rest_agree=float(
        (sub.argmax(1) == logits[:256].argmax(1)).mean() * 100), **census(ours16.path)))
    print(rows[-2], rows[-1], flush=True)

    output, _ = worker.communicate()
    if worker.returncode:
        raise RuntimeError(f"modelopt worker failed:\n{output[-3000:]}")
    timings = json.loads((work / f"{name}_modelopt.json").read_text())
    for key, tool, seconds in (("mtq", "modelopt torch (mtq.quantize INT8_DEFAULT_CFG, export)", timings["mtq_s"]),
                               ("moq", "modelopt onnx (modelopt.onnx.quantization.quantize int8)", timings["moq_s"])):
        path = work / f"{name}_{key}.onnx"
        logits = ort_logits(path, images, reference_semantics=True)
        rows.append(dict(model=name, tool=f"{tool}, modelopt {timings['modelopt']}", quant_s=round(seconds, 1),
                         **scores(logits, labels, reference), **census(path)))
        print(rows[-1], flush=True)
    return rows


def write_markdown(rows: list[dict], args, out: Path, seconds: float, env: Optional[dict] = None) -> None:
    """``env``: the environment block recorded with ``rows`` (None: this machine, now measuring)."""
    from edgecnn.fileio import write_text_atomic
    from edgecnn.measure.sysinfo import environment, environment_lines

    lines = [
        "# TensorRT target: edgecnn vs NVIDIA Model Optimizer (INT8 Q/DQ ONNX)",
        "",
        "Generated by `python bench/trt_peer.py` on the shared ImageNet sample with the shared real weights "
        "(see ../shared/data/README.md: the MobileNet V2 weights come from an 8-bit TFLite model, so "
        "8-bit weights are near-lossless by construction; the sample is easier than ImageNet val).",
        f"Calibration: the same {CALIB} images for every quantizer (every 8th image, all classes); evaluation: "
        "the other 1022 images, each file once. **Accuracy and agreement are in reference semantics**: "
        "ONNX Runtime with graph optimizations off, so every Q/DQ pair computes what the ONNX operators "
        "define, which is what TensorRT computes up to its own rounding and FP16 accumulation. TensorRT itself "
        "did not run (no GPU here). Agreement = top-1 equal to FP32's.",
        "",
        "| model | quantizer | top-1 % | top-5 % | agree % | bytes | int8 weight bytes | Q / DQ | quantized (activation input from DQ) | float weights | lint | quantize s |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | --- | --- | --- | ---: |",
    ]
    for r in rows:
        acc = (f"{r['top1']:.2f} | {r['top5']:.2f} | {r['agree']:.2f}" if "top1" in r else
               f"- | - | {r['fp16_vs_fp32_rest_agree']:.1f} (vs FP32-rest file, 256 images)")
        quant = ", ".join(f"{k} {v}" for k, v in r["quantized"].items())
        floats = ", ".join(f"{k.lower()} x{v}" for k, v in r["float_weight_types"].items()) or "-"
        lint = ", ".join(sorted(set(r["lint"]))) or "clean"
        lines.append(f"| {r['model']} | {r['tool']} | {acc} | {r['bytes']:,} | {r['int8_weight_bytes']:,} | "
                     f"{r['q']} / {r['dq']} | {quant} | {floats} | {lint} | {r.get('quant_s', '')} |")
    lines += ["", f"Total wall time {seconds / 60:.1f} min on a shared 2-core machine.", ""]
    recorded = env if env is not None else (None if getattr(args, "from_json", None) else environment())
    lines += ["## Environment (generated)", "", *(environment_lines(recorded) if recorded else
                                                  ["- not recorded by this run (it predates the generated block)"]), ""]
    from _stats import hand_written_findings

    tail = hand_written_findings(out)  # written by hand after a run: kept
    write_text_atomic(out, "\n".join(lines) + tail + ("\n" if not tail.endswith("\n") else ""))
    if out.with_suffix(".json") != getattr(args, "from_json", None):
        write_text_atomic(out.with_suffix(".json"), json.dumps({"rows": rows, "seconds": seconds, "environment": recorded}, indent=1) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data")
    parser.add_argument("--models", nargs="+", default=list(WITH_WEIGHTS))
    parser.add_argument("--modelopt-python", default=os.environ.get("EDGECNN_MODELOPT_PYTHON"),
                        help="the Python of Model Optimizer's own venv (bench/requirements.txt); or $EDGECNN_MODELOPT_PYTHON")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "trt_peer.md")
    parser.add_argument("--work", type=Path, default=None, help="keep the ONNX files here")
    parser.add_argument("--modelopt-worker", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--fixture", type=Path, default=None, help="write the tiny modelopt test fixture and exit")
    parser.add_argument("--from-json", type=Path, default=None, help="re-render the .md from a previous run's .json")
    args = parser.parse_args()
    if args.from_json:
        run = json.loads(args.from_json.read_text())
        write_markdown(run["rows"], args, args.out, run["seconds"], run.get("environment"))
        return
    if args.fixture:
        make_fixture(args.fixture)
        return
    if args.modelopt_worker:
        modelopt_worker(args.modelopt_worker, args.data, args.work)
        return
    if not args.modelopt_python:
        parser.error("give --modelopt-python V/bin/python (Model Optimizer's own venv: bench/requirements.txt)")
    import torch

    from edgecnn.measure.sysinfo import environment

    torch.set_num_threads(2)
    env = environment()  # the commit and machine the run starts on (edits during a long run would mark it dirty)
    start = time.perf_counter()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        work = args.work or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        for name in args.models:
            rows += run_model(name, args.data, work, args.modelopt_python)
    write_markdown(rows, args, args.out, time.perf_counter() - start, env)
    print(args.out.read_text())


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "2")
    main()
