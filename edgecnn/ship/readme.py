"""The bundle's README.md: what the model is, its measured numbers, how it was checked, how to use it."""

from __future__ import annotations

from edgecnn.ship.runtime import ORT_OPTIMIZATION_LEVEL, edgecnn_compile_line
from edgecnn.targets import TARGETS


USAGE = '''```python
import json
import numpy as np
import onnxruntime as ort

from classify import load_labels, load_preprocess, open_rgb, preprocess  # classify.py of this bundle

session = ort.InferenceSession("{model}", providers=["CPUExecutionProvider"])
name, labels, config = session.get_inputs()[0].name, load_labels(), load_preprocess()

def top5(path):
    x = preprocess(open_rgb(path), config)  # float32 (1, 3, {size}, {size}); open_rgb: EXIF, alpha, 16-bit
    logits = session.run(None, {{name: x}})[0][0]
    return [(labels[i], float(logits[i])) for i in np.argsort(-logits, kind="stable")[:5]]  # ties: lower class first, as argmax

# The golden test, for the app's own unit tests (runtime only, then image -> labels):
expected = json.load(open("golden/expected.json"))
logits = session.run(None, {{name: np.load("golden/input.npy")}})[0][0]
assert int(np.argmax(logits)) == expected["top5"][0]["index"]
assert all(abs(logits[e["index"]] - e["logit"]) <= expected["atol"] for e in expected["top5"])
print(top5("golden/image.png"))
```'''


def _runtime_title(target: str) -> str:
    known = TARGETS.get(target)
    return known.runtime_title if known is not None and known.runtime_title else target


def _num(value, fmt="{:,.0f}", unit=""):
    return "-" if value is None else fmt.format(value) + unit


def _numbers(src) -> list[str]:
    if src.report is not None and src.row is None:
        return [f"The `edgecnn compress` run in `{src.shown}` measured nothing (no measure stage): time it with",
                "`edgecnn bench model.onnx`, evaluate it with `edgecnn eval model.onnx --data DIR`.", ""]
    if src.report is None:
        return ["Shipped from a bare ONNX file: no measured numbers travel with it. Measure them with",
                "`edgecnn bench model.onnx` (latency) and `edgecnn eval model.onnx --data DIR` (accuracy).", ""]
    r, b, rep = src.row, src.baseline or {}, src.report
    data = rep.get("data") or {}
    accuracy_on = data.get("note") or f"{data.get('eval_images') or '?'} images of {data.get('eval') or data.get('calib')}"
    if not data.get("labelled", True) or r.get("top1") is None:
        accuracy_on = "no labelled data: accuracy not measured (agreement with FP32 only)"
    lines = [f"From the `edgecnn compress` report of `{src.shown}` (row `{r.get('stage')}` / `{r.get('target')}`):", "",
             "| | this model | FP32 baseline |", "| --- | ---: | ---: |"]
    rows = [("ONNX file", "onnx_bytes", "{:,.0f}", " B"), ("packed .ecnn (what a size-bound app ships)", "shipped_bytes", "{:,.0f}", " B"),
            ("latency median, batch 1", "latency_ms_median", "{:.3f}", " ms"), ("latency p90", "latency_ms_p90", "{:.3f}", " ms"),
            ("top-1", "top1", "{:.1f}", " %"), ("top-5", "top5", "{:.1f}", " %"),
            ("top-1 agreement with FP32", "agreement", "{:.1f}", " %"), ("parameters (non-zero)", "nonzeros", "{:,.0f}", "")]
    for title, key, fmt, unit in rows:
        lines.append(f"| {title} | {_num(r.get(key), fmt, unit)} | {_num(b.get(key), fmt, unit)} |")
    if r.get("latency_ms_median") is None:
        latency = ("- Latency: not measured for this target on the run's machine; time it on the device "
                   "(for TensorRT, `build_engine.sh` times the engine with trtexec after building it).")
    else:
        latency = (f"- Latency: {rep.get('latency_note', 'see report.json')}; runtime `{r.get('runtime') or '-'}`. "
                   "Time it on your device: numbers from another machine do not transfer.")
    lines += ["", latency, f"- Accuracy: {accuracy_on}.", ""]
    return lines


def render(facts: dict) -> str:
    src, pre, exp, ver = facts["source"], facts["preprocess"], facts["expected"], facts["versions"]
    meta = src.metadata
    model_name = meta.get("edgecnn.model", src.onnx.stem)
    precision = meta.get("edgecnn.precision", "fp32")
    runtime_model = "model.ort" if facts["has_ort"] else "model.onnx"
    size = pre.input_size
    lines = [f"# {model_name} for {_runtime_title(src.target)}: edgecnn bundle", "",
             f"An image classifier to drop into an app: `{model_name}` ({precision}; weights: "
             f"{meta.get('edgecnn.weights', 'unknown')}), {len(facts['labels'])} classes, made for `{src.target}`. "
             f"Input: float32 NCHW `[1, 3, {size}, {size}]` preprocessed as in `preprocess.json`; output: one "
             "logit per class, in the order of `labels.txt` (softmax them for probabilities).", "",
             "## Files", "", "| file | what |", "| --- | --- |",
             "| `model.onnx` | the model (ONNX, metadata carries preprocessing and labels) |"]
    if facts["has_ort"]:
        lines += ["| `model.ort` | the same model in ORT format, for ONNX Runtime Mobile / Web and minimal builds |",
                  "| `required_operators_and_types.config` | operators and types for a reduced ONNX Runtime build |"]
    else:
        lines += ["| `build_engine.sh` | the exact trtexec line that builds the TensorRT engine on the device |"]
    lines += ["| `labels.txt` | class names, line i = output i |",
              "| `preprocess.json` | size, resize, crop, mean, std, channel order, value scale |",
              "| `golden/image.png`, `golden/input.npy`, `golden/expected.json` | the golden test: an image, its "
              "preprocessed tensor, the expected top-5 and tolerance |",
              "| `classify.py` | minimal sample: onnxruntime + numpy + pillow |",
              "| `manifest.json` | SHA-256 of every file; `edgecnn ship --check` verifies them |", "",
              "## Numbers", ""]
    lines += _numbers(src)
    lines += ["## Checked with", "",
              "`edgecnn ship --check` passed when this bundle was written: hashes, metadata = `preprocess.json` and "
              "`labels.txt`, and `classify.py` reproducing the golden output from `model.onnx`"
              + (" and `model.ort`" if facts["has_ort"] else "")
              + f" in a process that cannot import torch or edgecnn. Versions: onnxruntime {ver['onnxruntime']}, "
              f"numpy {ver['numpy']}, pillow {ver['pillow']}, Python {ver['python']}, {ver['machine']}.", ""]
    if facts["has_ort"]:
        lines += [f"`model.ort` was made by ONNX Runtime's own converter at optimization level `{ORT_OPTIMIZATION_LEVEL}` "
                  "(style Fixed): Q/DQ is fused into integer kernels, but no layout transform ties the file to the "
                  "converting CPU, so it loads wherever ONNX Runtime Mobile does:", "",
                  f"    {facts['converter']}", "",
                  "A reduced ONNX Runtime build that runs only this model: `./build.sh --minimal_build "
                  "--include_ops_by_config required_operators_and_types.config "
                  "--enable_reduced_operator_type_support` (ONNX Runtime source tree).", ""]
    else:
        lines += ["## TensorRT engine", "",
                  "An engine is specific to the GPU, the TensorRT version and the JetPack release, so none is shipped: "
                  "build it on the device (`sh build_engine.sh RELEASE`, RELEASE 8.5, 8.6, 10 or 11), or with edgecnn installed there: "
                  f"`{edgecnn_compile_line()}`. The lines in `build_engine.sh`:", ""]
        for release, line in facts["trt_lines"].items():
            lines += [f"- TensorRT {release}: `{line}`"]
        lines += ["", "The golden logits are ONNX Runtime's (CPU); TensorRT was not run when this bundle was made and "
                  "its int8/fp16 kernels round differently, so on the device check that the golden image keeps its "
                  f"top-1 (its margin over the top-2 is {exp['top1_margin']:.3g}) before comparing logits.", ""]
    golden_label = (f"true class {exp['true_label']} ({exp['true_label_name']})" if exp["true_label"] is not None
                    else "true class not known")
    lines += ["## Golden test", "", f"`golden/image.png` comes from {exp['origin']}; {golden_label}.",
              "", "| rank | class | label | logit |", "| ---: | ---: | --- | ---: |"]
    for rank, entry in enumerate(exp["top5"], 1):
        lines.append(f"| {rank} | {entry['index']} | {entry['label']} | {entry['logit']:.6g} |")
    lines += ["", f"Tolerance on each logit: {exp['atol']:.3g} ({exp['tolerance_rule']}). Measured differences: "
              + ", ".join(f"{k} {v:.3g}" for k, v in exp["measured_max_difference"].items()) + ". "
              f"Top-1 margin: {exp['top1_margin']:.3g}. `golden/input.npy` is the tensor this image preprocesses to; "
              f"an app's own preprocessing matches it when every value is within {exp['input_atol']:.3g} "
              f"({exp['input_atol_rule']}).", "",
              "## Preprocessing (`preprocess.json`)", "",
              f"RGB image -> {'resize to ' + str(pre.resize) + 'x' + str(pre.resize) if pre.resize_mode == 'warp' else 'shorter side to ' + str(pre.resize) + ' (aspect kept)'}"
              f" (bilinear) -> centre crop {pre.crop} -> {'resize to ' + str(size) + ' -> ' if pre.crop != size else ''}"
              f"channels {pre.channel_order} -> `(pixel * {pre.value_scale:.6g} - mean) / std` with mean "
              f"{list(pre.mean)}, std {list(pre.std)} -> CHW float32. Pixel values are 0..255 before scaling.", "",
              "## Use it", "", "```", "python classify.py golden/image.png      # top-5 labels",
              f"python classify.py IMAGE --model {runtime_model}", "python classify.py --selftest            # the golden test",
              "edgecnn ship --check .                   # hashes, metadata, golden output (needs edgecnn)", "```", "",
              USAGE.format(model=runtime_model, size=size), ""]
    return "\n".join(lines)
