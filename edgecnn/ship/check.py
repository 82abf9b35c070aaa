"""``check_bundle``: does a bundle still do what its files say? (no torch)

Three steps, each only when the one before passed, so one broken thing is one line:
1. every file matches its SHA-256 in manifest.json, and no file is unlisted;
2. the files agree: labels.txt has one name per output (and equals the metadata's labels),
   preprocess.json equals the model's metadata preprocessing and input size;
3. classify.py, run in a separate process that cannot import torch or edgecnn (optionally in
   another Python, e.g. a fresh venv), preprocesses golden/image.png to golden/input.npy and
   reproduces golden/expected.json from model.onnx and from model.ort.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np

from edgecnn.errors import UserError

# Runs the sample with torch and edgecnn made unimportable.
RUNNER = """
import runpy, sys
class Block:
    def find_spec(self, name, path=None, target=None):
        if name.partition('.')[0] in ('torch', 'torchvision', 'edgecnn'):
            raise ImportError('the bundle sample imported ' + name)
sys.meta_path.insert(0, Block())
sample = sys.argv[1]
sys.argv = sys.argv[1:]
runpy.run_path(sample, run_name='__main__')
"""
IGNORED = ("__pycache__",)


@dataclass
class CheckResult:
    bundle: Path
    failures: list[str] = field(default_factory=list)
    passed: list[str] = field(default_factory=list)
    versions: Optional[dict] = None

    def to_dict(self) -> dict:
        return {"bundle": str(self.bundle), "ok": not self.failures, "failures": self.failures,
                "passed": self.passed, "versions": self.versions}


def run_sample(bundle: Path, args: list[str], python: Optional[str] = None, timeout: float = 300, device=None):
    """Run the bundle's classify.py isolated (``python -I``, torch/edgecnn blocked); CompletedProcess.

    ``device``: run it with that device's Python (e.g. on an emulated ARM CPU's kernels); a remote
    device (ssh) gets the bundle staged in its cache folder first."""
    if device is not None and hasattr(device, "run_python"):
        return device.run_python(["-I", "-c", RUNNER, "classify.py", *args], device.put_folder(bundle), timeout)
    # The sample runs with cwd=bundle: every path given relative to the caller's folder is made absolute first.
    bundle = Path(os.path.abspath(bundle))
    if python is not None and os.sep in python:  # a bare name ("python3") is looked up on PATH as usual
        python = os.path.abspath(os.path.expanduser(python))
    interpreter = device.python_command() if device is not None else [python or sys.executable]
    cmd = [*interpreter, "-I", "-c", RUNNER, str(bundle / "classify.py"), *args]
    try:
        return subprocess.run(cmd, capture_output=True, text=True, cwd=bundle, timeout=timeout,
                              env=device.agent_env() if device is not None else None)
    except FileNotFoundError:
        raise UserError(f"Python '{python}' not found; give --python the path of an interpreter") from None


def check_bundle(bundle, python: Optional[str] = None, device=None) -> CheckResult:
    """``device`` (edgecnn.devices): run the sample there instead of with ``python``."""
    bundle = Path(bundle)
    if not bundle.is_dir():
        raise UserError(f"bundle folder '{bundle}' does not exist; write one with: edgecnn ship MODEL -o {bundle}")
    result = CheckResult(bundle)
    from edgecnn.ship.manifest import read_manifest, refuse_saturating_host

    target = str((read_manifest(bundle) or {}).get("target", ""))
    if device is None or device.kind == "local":  # a device runs its own kernels
        refuse_saturating_host(target, "check this bundle's golden output")
        device = _target_kernels(bundle, target, python) or device
    for step in (_hashes, _agreement, _golden):
        step(bundle, result, device if step is _golden and device is not None else python)
        if result.failures:
            break
    return result


def _target_kernels(bundle: Path, target: str, python: Optional[str]):
    """The emulated device whose kernels the golden output came from, where this host's differ."""
    from edgecnn.ship.golden import target_kernels

    if not (bundle / "model.onnx").is_file():
        return None  # the hashes step says what is missing
    kernels = target_kernels(target, bundle / "model.onnx")
    if kernels and python is not None:
        raise UserError(f"this {target} bundle's golden output comes from its own CPUs' kernels, which --python "
                        f"{python} on this CPU does not run; check it with --device {kernels[0].name}")
    return kernels[0] if kernels else None


def _hashes(bundle: Path, result: CheckResult, python) -> None:
    from edgecnn.ship.manifest import MANIFEST, read_manifest, sha256

    manifest = read_manifest(bundle)
    if manifest is None:
        result.failures.append(f"{bundle / MANIFEST}: missing or not an edgecnn bundle manifest")
        return
    files = manifest.get("files") or {}
    for rel, entry in files.items():
        path = bundle / rel
        if not path.is_file():
            result.failures.append(f"{rel}: listed in {MANIFEST} but missing")
        elif sha256(path) != entry.get("sha256"):
            result.failures.append(f"{rel}: SHA-256 differs from {MANIFEST} (the file was changed after shipping)")
    for path in sorted(p for p in bundle.rglob("*") if p.is_file()):
        rel = path.relative_to(bundle).as_posix()
        if rel != MANIFEST and rel not in files and not any(part in IGNORED for part in path.parts):
            result.failures.append(f"{rel}: not listed in {MANIFEST}")
    for needed in ("model.onnx", "labels.txt", "preprocess.json", "classify.py", "golden/expected.json"):
        if needed not in files:
            result.failures.append(f"{needed}: missing from the bundle")
    if not result.failures:
        result.passed.append(f"{len(files)} files match their SHA-256 in {MANIFEST}")


def _agreement(bundle: Path, result: CheckResult, python) -> None:
    from edgecnn.export.metadata import labels_from_metadata, read_metadata
    from edgecnn.preprocess import Preprocess
    from edgecnn.ship.manifest import onnx_io

    metadata = read_metadata(bundle / "model.onnx")
    dims, outputs = onnx_io(bundle / "model.onnx")
    labels = (bundle / "labels.txt").read_text(encoding="utf-8").splitlines()
    if outputs is not None and len(labels) != outputs:
        result.failures.append(f"labels.txt: {len(labels)} class names but model.onnx has {outputs} outputs")
    meta_labels = labels_from_metadata(metadata)
    if meta_labels is not None and len(labels) != len(meta_labels):
        if not result.failures:  # a count that differs from the outputs' is reported once, above
            result.failures.append(f"labels.txt: {len(labels)} class names but model.onnx's metadata has "
                                   f"{len(meta_labels)}")
    elif meta_labels is not None and labels != meta_labels:
        i = next(i for i, (a, b) in enumerate(zip(labels, meta_labels)) if a != b)
        result.failures.append(f"labels.txt line {i + 1} is {labels[i]!r} but model.onnx's metadata says {meta_labels[i]!r}")
    golden_names = _golden_label_problem(bundle, labels)
    if golden_names:
        result.failures.append(golden_names)
    try:
        raw = json.loads((bundle / "preprocess.json").read_text(encoding="utf-8"))
        shipped = Preprocess(**{k: tuple(v) if isinstance(v, list) else v for k, v in raw.items()})
    except (ValueError, TypeError, UserError) as exc:
        result.failures.append(f"preprocess.json: not a valid preprocessing ({exc})")
        return
    embedded = Preprocess.from_metadata(metadata)
    if embedded is None:
        result.failures.append("model.onnx: no edgecnn.preprocess.* metadata to compare preprocess.json with")
    elif shipped != embedded:
        diffs = [f"{k} {getattr(shipped, k)!r} vs {getattr(embedded, k)!r}" for k in raw
                 if getattr(shipped, k) != getattr(embedded, k) and k != "name"]
        result.failures.append("preprocess.json differs from model.onnx's metadata: " + "; ".join(diffs))
    if len(dims) == 4 and dims[2:] != [shipped.input_size] * 2:
        result.failures.append(f"preprocess.json: input_size {shipped.input_size} but model.onnx takes {dims}")
    if not result.failures:
        result.passed.append("preprocess.json agrees with model.onnx's metadata and input size")
        if meta_labels is not None:
            result.passed.append(f"labels.txt ({len(labels)} names) equals model.onnx's labels, line by line")
        else:
            from edgecnn.ship.manifest import read_manifest

            origin = (read_manifest(bundle) or {}).get("labels_from") or "elsewhere"
            count = "one per output of model.onnx" if outputs is not None else "(model.onnx's output count is dynamic)"
            result.passed.append(
                f"labels.txt has {len(labels)} names, {count}; their order could not be checked "
                f"against the model, which carries no labels (they came from {origin}): only the golden top-5 names "
                "in golden/expected.json were compared")


def _golden_label_problem(bundle: Path, labels: list[str]) -> Optional[str]:
    """The golden top-5 names (written at ship time) against labels.txt: catches reordered lines
    even when the model carries no labels of its own."""
    try:
        expected = json.loads((bundle / "golden" / "expected.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None  # the golden step reports it
    for entry in expected.get("top5") or []:
        index, name = entry.get("index"), entry.get("label")
        if isinstance(index, int) and 0 <= index < len(labels) and labels[index] != name:
            return (f"labels.txt line {index + 1} is {labels[index]!r} but golden/expected.json names output {index} "
                    f"{name!r}")
    return None


def _golden(bundle: Path, result: CheckResult, runner) -> None:
    from edgecnn.ship.manifest import read_manifest

    expected = json.loads((bundle / "golden" / "expected.json").read_text(encoding="utf-8"))
    reference = np.load(bundle / expected["input"])
    runtime_model = read_manifest(bundle).get("runtime_model")
    models = ["model.onnx"] + ([runtime_model] if runtime_model else [])
    with tempfile.TemporaryDirectory(prefix="edgecnn-check-") as tmp:
        for model in models:
            saved = Path(tmp) / f"{model}.input.npy"
            python, device = (None, runner) if hasattr(runner, "python_command") or hasattr(runner, "run_python") \
                else (runner, None)
            remote = device is not None and hasattr(device, "put_folder")  # the sample writes its input there
            target = f"golden/{model}.input.npy" if remote else str(saved)
            done = run_sample(bundle, [expected["image"], "--model", model, "--json", "--save-input", target],
                              python, device=device)
            if remote and done.returncode == 0:
                device.fetch(f"{device.put_folder(bundle)}/{target}", saved)
            if done.returncode != 0:
                last = (done.stderr or done.stdout).strip().splitlines() or ["no output"]
                if device is not None:  # a missing package there is named with what to install
                    last = [device.failure_line(done.returncode, done.stderr)]
                result.failures.append(f"classify.py --model {model} failed (exit {done.returncode}): {last[-1][:300]}")
                continue
            out = json.loads(done.stdout.strip().splitlines()[-1])
            result.versions = out.get("versions")
            tensor = np.load(saved)
            if tensor.shape != reference.shape or not np.allclose(tensor, reference, rtol=0, atol=expected["input_atol"]):
                gap = float(np.abs(tensor - reference).max()) if tensor.shape == reference.shape else "shape"
                result.failures.append(f"classify.py preprocesses {expected['image']} differently from "
                                       f"{expected['input']} (max difference {gap}, tolerance {expected['input_atol']:.3g})")
                continue
            problem = compare(np.asarray(out["logits"], dtype=np.float64), expected)
            if problem:
                result.failures.append(f"{model}: {problem}")
            else:
                where = f" on {runner.name}" if device is not None else ""
                result.passed.append(f"classify.py reproduces the golden top-5 from {model}{where} "
                                     f"(tolerance {expected['atol']:.3g})")


def compare(logits: np.ndarray, expected: dict) -> Optional[str]:
    """None when ``logits`` give the golden top-1 and every golden top-5 logit within atol."""
    top1 = int(np.argmax(logits))
    want = expected["top5"][0]
    if top1 != want["index"]:
        return f"top-1 is class {top1}, the golden top-1 is {want['index']} ({want['label']})"
    for entry in expected["top5"]:
        got = float(logits[entry["index"]])
        if abs(got - entry["logit"]) > expected["atol"]:
            return (f"logit of class {entry['index']} ({entry['label']}) is {got:.6g}, golden {entry['logit']:.6g} "
                    f"(tolerance {expected['atol']:.3g})")
    return None
