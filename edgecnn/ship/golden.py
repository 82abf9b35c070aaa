"""The golden test pair and the tolerance that the artifact's numerics justify.

An app runs the model in its own ONNX Runtime build, on its own CPU, maybe from the .ort file;
optimization level and kernels decide the float rounding. So the logits of every candidate
image are computed in every way that is available here: the .onnx at each ORT optimization
level (``disable`` runs Q/DQ as float arithmetic, ``extended``/``all`` fuse it into integer
kernels), with one thread, and the .ort file. The tolerance is twice the largest difference
measured between them plus 1e-4 of the largest |logit| (float32 sums taken in another order,
e.g. by another SIMD width, differ by about 1e-6 relative); the golden image must separate
its top-1 from its top-2 by more than twice that.

An integer artifact for CPUs of another class than this host's (``ort-arm`` shipped from x86)
is computed on that class's own kernels, emulated (:func:`target_kernels`): this host's int8
kernels compute it differently (AVX2's S8S8 path saturates), and the app will not run them.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Optional

import numpy as np

from edgecnn.errors import UserError

RELATIVE_FLOOR = 1e-4
MARGIN_FACTOR = 2.0  # top-1 minus top-2 must exceed this many tolerances


@dataclass
class Golden:
    image: object  # PIL image, RGB
    tensor: np.ndarray  # (1, 3, S, S) float32
    logits: np.ndarray  # the sample's default session on model.onnx
    label: Optional[int]
    origin: str
    atol: float
    spread: float  # largest difference measured between the ways of running the model
    spread_by_variant: dict
    margin: float  # top-1 logit minus top-2 logit
    tried: int
    kernels: Optional[str] = None  # the emulated devices the logits came from; None: this host's


INTEGER_OPS = frozenset({"QuantizeLinear", "QLinearConv", "QLinearMatMul", "ConvInteger", "MatMulInteger"})
HOST_REFERENCE = "onnx-all"


def target_kernels(target_name: str, onnx_path: Path) -> Optional[list]:
    """None when this host's kernels compute ``onnx_path`` as the target's CPUs do (the host is
    of one of the target's CPU classes, or the model has no integer kernels); otherwise one
    emulated device per CPU class of the target. One line when a class cannot be emulated here."""
    import onnx

    from edgecnn import cpu
    from edgecnn.devices.registry import emulator_for
    from edgecnn.targets import TARGETS

    target, host = TARGETS.get(target_name), cpu.host_class()
    if target is None or target.backend != "ort" or not target.cpu_classes or target.runs_on(host):
        return None
    graph = onnx.load(str(onnx_path), load_external_data=False).graph
    if not any(node.op_type in INTEGER_OPS for node in graph.node):
        return None
    devices = []
    for cpu_class in target.cpu_classes:
        device = emulator_for(cpu_class)
        if device is None:
            raise UserError(f"the golden output of a {target_name} int8 model must come from {cpu_class} kernels, "
                            f"which this {host} CPU does not run and edgecnn cannot emulate; ship it on a "
                            f"{cpu_class} machine")
        devices.append(device)
    return devices


def _sessions(onnx_path: Path, ort_path: Optional[Path]) -> dict:
    import onnxruntime as ort

    levels = {
        "onnx-all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
        "onnx-extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
        "onnx-basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
        "onnx-disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
    }
    out = {}
    for name, level in levels.items():
        options = ort.SessionOptions()
        options.graph_optimization_level = level
        options.log_severity_level = 3
        out[name] = ort.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])
    one = ort.SessionOptions()
    one.intra_op_num_threads = 1
    one.log_severity_level = 3
    out["onnx-all-1-thread"] = ort.InferenceSession(str(onnx_path), one, providers=["CPUExecutionProvider"])
    if ort_path is not None:
        out["ort-format"] = ort.InferenceSession(str(ort_path), providers=["CPUExecutionProvider"])
    return out


def _run(session, tensor: np.ndarray) -> np.ndarray:
    inp = session.get_inputs()[0]
    dtype = np.float16 if inp.type == "tensor(float16)" else np.float32
    return np.asarray(session.run(None, {inp.name: tensor.astype(dtype)})[0], dtype=np.float32).reshape(-1)


def _host_logits(onnx_path: Path, ort_path: Optional[Path], tensors: list) -> tuple[dict, str]:
    sessions = _sessions(onnx_path, ort_path)
    return {name: np.stack([_run(s, t) for t in tensors]) for name, s in sessions.items()}, HOST_REFERENCE


def _device_logits(devices: list, onnx_path: Path, ort_path: Optional[Path], tensors: list) -> tuple[dict, str]:
    """Every level's default session, and the first level's other optimization levels and .ort file."""
    first = devices[0]
    runs = [(d, onnx_path, "all", "onnx-all") for d in devices]
    runs += [(first, onnx_path, level, f"onnx-{level}") for level in ("extended", "disable")]
    if ort_path is not None:
        runs.append((first, ort_path, "all", "ort-format"))
    batch = np.concatenate(tensors).astype(np.float32)
    out = {}
    for device, path, level, label in runs:
        try:
            with device.stream(device.put(path), opt_level=level) as stream:
                logits = stream.send(batch)
        except UserError as exc:  # e.g. the emulator is not installed: the line names its install command
            raise UserError(f"the golden output of this int8 model comes from the target CPU's own kernels, run "
                            f"on {device.name}: {exc}") from None
        out[f"{label} on {device.name}"] = np.asarray(logits, dtype=np.float32).reshape(len(tensors), -1)
    return out, f"onnx-all on {first.name}"


def choose(onnx_path: Path, ort_path: Optional[Path], preprocess, candidates: Iterable, from_user: bool,
           devices: Optional[list] = None) -> Golden:
    """Pick the first candidate the model classifies as its label with a clear top-1 margin.

    Falls back to a candidate with a clear margin whose label is unknown or not the model's
    top-1 (said in expected.json); refuses when no candidate has a clear margin. ``devices``
    (from :func:`target_kernels`): compute every logit on their kernels instead of this host's.
    """
    loaded = []
    for cand in candidates:
        image = cand.open()
        loaded.append((cand, image, preprocess.apply(image)[None]))
    if not loaded:
        raise UserError("no golden image candidates; pass --golden IMAGE")
    tensors = [t for _, _, t in loaded]
    logits, reference_name = (_device_logits(devices, onnx_path, ort_path, tensors) if devices
                              else _host_logits(onnx_path, ort_path, tensors))
    rows = []
    for i, (cand, image, tensor) in enumerate(loaded):
        reference = logits[reference_name][i]  # what the sample's default session runs
        diffs = {name: float(np.abs(v[i] - reference).max()) for name, v in logits.items() if name != reference_name}
        rows.append((cand, image, tensor, reference, diffs))
    by_variant = {name: max(r[4][name] for r in rows) for name in rows[0][4]}
    spread = max(by_variant.values(), default=0.0)
    scale = max(1.0, max(float(np.abs(r[3]).max()) for r in rows))
    atol = MARGIN_FACTOR * spread + RELATIVE_FLOOR * scale

    def margin(logits):
        top2 = np.sort(logits)[-2:] if logits.size > 1 else np.array([-np.inf, logits[0]])
        return float(top2[1] - top2[0])

    clear = [r for r in rows if margin(r[3]) > MARGIN_FACTOR * atol]
    correct = [r for r in clear if r[0].label is not None and int(np.argmax(r[3])) == r[0].label]
    chosen = (correct or clear or [None])[0]
    if chosen is None:
        best = max(margin(r[3]) for r in rows)
        what = "the golden image" if from_user else f"none of {len(rows)} candidate images"
        raise UserError(f"{what} separates the model's top-1 from its top-2 clearly (best margin {best:.3g}, "
                        f"needed > {MARGIN_FACTOR * atol:.3g}); pass another --golden IMAGE")
    cand, image, tensor, logits, _ = chosen
    kernels = ", ".join(d.name for d in devices) if devices else None
    return Golden(image, tensor.astype(np.float32), logits, cand.label, cand.origin, atol, spread, by_variant,
                  margin(logits), len(rows), kernels)


def input_atol(preprocess) -> float:
    """Half of one 8-bit pixel level after normalisation: any real preprocessing difference exceeds it."""
    return 0.5 * float(preprocess.value_scale) / min(abs(float(s)) for s in preprocess.std)
