"""``build_bundle``: an app-ready folder from an output folder or an ONNX file (no torch).

Layout (``docs/ship.md``): model.onnx, model.ort + required_operators_and_types.config (ONNX
Runtime targets) or build_engine.sh (TensorRT), labels.txt, preprocess.json, golden/
(image.png, input.npy, expected.json), classify.py, README.md, manifest.json (SHA-256 of
every other file; it also marks the folder as a bundle edgecnn wrote, the only kind --force
replaces). The bundle is built in a temporary folder beside the destination, checked with
:func:`edgecnn.ship.check.check_bundle`, and renamed into place only when the check passes.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import numpy as np

from edgecnn import outputs
from edgecnn.errors import UserError
from edgecnn.fileio import current_umask, write_bytes_atomic, write_text_atomic
from edgecnn.ship.manifest import (  # noqa: F401 (also this module's API)
    BUNDLE_FORMAT, MANIFEST, onnx_io, read_manifest, refuse_saturating_host, sha256)
from edgecnn.targets import get_target

BUNDLE_VERSION = 1
SAMPLE = "classify.py"


@dataclass
class Bundle:
    path: Path
    target: str
    files: dict
    golden: dict  # golden/expected.json


def runtime_versions() -> dict:
    import platform
    import sys

    import onnxruntime
    import PIL

    return {"onnxruntime": onnxruntime.__version__, "numpy": np.__version__, "pillow": PIL.__version__,
            "python": sys.version.split()[0], "machine": f"{platform.system()} {platform.machine()}"}


def _check_destination(out: Path, force: bool) -> None:
    if out.exists() and not out.is_dir():
        raise UserError(f"'{out}' is a file; choose another -o folder")
    if out.is_dir() and any(out.iterdir()):
        if not force:
            raise UserError(f"'{out}' already exists; pass --force to replace it or choose another -o")
        if read_manifest(out) is None:
            raise UserError(f"'{out}' is not a bundle edgecnn wrote (no edgecnn manifest.json); --force replaces "
                            "only those: choose another -o")


def build_bundle(source, out_dir, target: Optional[str] = None, golden=None, labels=None, force: bool = False,
                 check: bool = True, origin: Optional[str] = None, log: Optional[Callable[[str], None]] = None) -> Bundle:
    """Write the bundle for ``source`` (output folder or .onnx) into ``out_dir``; see the module docstring.

    ``golden``: an image to use as the golden input (default: one of the run's own images, or
    an embedded digit for a digits model); ``labels``: a class-names file when the model carries none;
    ``origin``: the source's name in README.md and manifest.json (default: its path); ``log``:
    where to say what takes long (the golden output computed on emulated kernels).
    """
    from edgecnn.lazy import require
    from edgecnn.preprocess import Preprocess
    from edgecnn.ship import golden as golden_mod
    from edgecnn.ship import runtime
    from edgecnn.ship.source import candidates, labels_for, resolve

    require("onnxruntime", "ort")  # the golden output and the ORT format come from ONNX Runtime
    src = resolve(source, target)
    refusal = get_target(src.target).ship_refusal()
    if refusal:
        raise UserError(refusal)
    _lint_for_tensorrt(src, log)
    refuse_saturating_host(src.target, "write its bundle (the golden output would be wrong)")
    if origin is not None:
        src.shown = origin
    out = Path(out_dir)
    outputs.check_not_an_input(out, [source, golden, labels], holds=True)
    _check_destination(out, force)
    if src.folder is not None and out.resolve() == src.folder.resolve():
        raise UserError("-o must not be the output folder itself; use e.g. -o OUTPUT/bundle")
    preprocess = Preprocess.from_metadata(src.metadata)
    if preprocess is None:
        raise UserError(f"'{src.onnx}' has no preprocessing in its metadata; export it with edgecnn "
                        "(edgecnn export / compress write it)")
    dims, num_outputs = onnx_io(src.onnx)
    if len(dims) != 4 or dims[2:] != [preprocess.input_size] * 2:
        raise UserError(f"'{src.onnx}' takes input {dims} but its preprocessing makes {preprocess.input_size}x"
                        f"{preprocess.input_size} images; re-export it")
    names, labels_origin = labels_for(src, num_outputs, labels)

    tmp = outputs.make_work_dir(outputs.absolute(out))
    try:
        write_bytes_atomic(tmp / "model.onnx", src.onnx.read_bytes())
        ort_path = converter = None
        trt_lines = None
        if get_target(src.target).backend == "ort":
            ort_path, _, converter = runtime.to_ort_format(tmp / "model.onnx", tmp, src.target)
        else:
            trt_lines = runtime.trt_build_lines(tmp / "model.onnx")
            write_text_atomic(tmp / "build_engine.sh", _build_script(trt_lines))
            os.chmod(tmp / "build_engine.sh", 0o777 & ~current_umask())
        kernels = golden_mod.target_kernels(src.target, tmp / "model.onnx")
        if kernels and log is not None:
            log(f"computing the golden output on {src.target}'s own kernels, emulated: "
                f"{', '.join(d.name for d in kernels)} (numerics only; about a minute)")
        gold = golden_mod.choose(tmp / "model.onnx", ort_path, preprocess, candidates(src, golden), golden is not None,
                                 devices=kernels)
        expected = _write_golden(tmp, gold, names, preprocess)
        write_text_atomic(tmp / "labels.txt", "".join(f"{n}\n" for n in names))
        write_text_atomic(tmp / "preprocess.json", json.dumps(preprocess.to_dict(), indent=2) + "\n")
        write_text_atomic(tmp / SAMPLE, Path(__file__).with_name("sample.py").read_text(encoding="utf-8"))
        versions = runtime_versions()
        from edgecnn.ship.readme import render

        facts = {"source": src, "preprocess": preprocess, "labels": names, "labels_origin": labels_origin,
                 "expected": expected, "versions": versions, "converter": converter, "trt_lines": trt_lines,
                 "has_ort": ort_path is not None, "dims": dims}
        write_text_atomic(tmp / "README.md", render(facts))
        files = _write_manifest(tmp, src, versions, labels_origin)
        if check:
            from edgecnn.ship.check import check_bundle

            result = check_bundle(tmp, device=kernels[0] if kernels else None)
            if result.failures:
                raise UserError(f"the new bundle failed its own check: {result.failures[0]}")
        _check_destination(out, force)  # again: something may have appeared there meanwhile
        outputs.swap_into_place(tmp, outputs.absolute(out))
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return Bundle(out, src.target, files, expected)


def _lint_for_tensorrt(src, log) -> None:
    """A TensorRT bundle's build would fail on the device: refuse here, before any work."""
    if get_target(src.target).backend != "trt":
        return
    from edgecnn.export.trt_rules import gate

    for warning in gate(src.onnx):
        if log is not None:
            log(f"warning: {warning}")


def _write_golden(folder: Path, gold, names: list[str], preprocess) -> dict:
    from edgecnn.ship.golden import MARGIN_FACTOR, RELATIVE_FLOOR, input_atol

    (folder / "golden").mkdir()
    from edgecnn.fileio import save_atomic

    save_atomic(folder / "golden" / "image.png", lambda p: gold.image.save(p, format="PNG"))
    def save_npy(path):
        with open(path, "wb") as fh:
            np.save(fh, gold.tensor)

    save_atomic(folder / "golden" / "input.npy", save_npy)
    order = np.argsort(-gold.logits, kind="stable")[:5]
    expected = {
        "image": "golden/image.png",
        "input": "golden/input.npy",
        "origin": gold.origin,
        "true_label": gold.label,
        "true_label_name": names[gold.label] if gold.label is not None and gold.label < len(names) else None,
        "top5": [{"index": int(i), "label": names[i], "logit": float(gold.logits[i])} for i in order],
        "atol": gold.atol,
        "input_atol": input_atol(preprocess),
        "top1_margin": gold.margin,
        "tolerance_rule": (f"{MARGIN_FACTOR:g} x the largest logit difference measured between ONNX Runtime "
                           f"optimization levels, one thread, CPU levels and the .ort file, plus {RELATIVE_FLOOR:g} x the "
                           f"largest |logit|; the top-1 logit exceeds the top-2 by more than {MARGIN_FACTOR:g} x atol"),
        "measured_max_difference": gold.spread_by_variant,
        "kernels": gold.kernels or "this machine's ONNX Runtime CPU kernels",
        "input_atol_rule": "half of one 8-bit pixel level after normalisation (value_scale / std / 2)",
    }
    if gold.label is not None and int(order[0]) != gold.label:
        expected["note"] = "the model's top-1 is not this image's true class; the golden output is the model's own"
    write_text_atomic(folder / "golden" / "expected.json", json.dumps(expected, indent=2) + "\n")
    return expected


def _build_script(lines: dict) -> str:
    from edgecnn.ship.runtime import DEFAULT_TRT_RELEASE, edgecnn_compile_line

    out = ["#!/bin/sh",
           "# Build the TensorRT engine ON THE DEVICE that will run it (an engine is specific to the GPU,",
           "# the TensorRT release and JetPack), then time it: sh build_engine.sh [RELEASE],",
           f"# RELEASE one of {', '.join(lines)} (default {DEFAULT_TRT_RELEASE}; JetPack 5.1: 8.5, 6.0: 8.6, 6.1/6.2: 10).",
           f"# With edgecnn installed on the device instead: {edgecnn_compile_line()}",
           "# trtexec ships with TensorRT (JetPack: /usr/src/tensorrt/bin/trtexec).",
           "set -e", 'cd "$(dirname "$0")"', f'case "${{1:-{DEFAULT_TRT_RELEASE}}}" in']
    for release, line in lines.items():
        body = f"echo '{line[2:]}' >&2; exit 2" if line.startswith("#") else line
        out.append(f"  {release}) {body} ;;")
    out += ["  *) echo \"TensorRT ${1} is not covered; use: " + edgecnn_compile_line() + "\" >&2; exit 2 ;;",
            "esac", ""]
    return "\n".join(out)


def _write_manifest(folder: Path, src, versions: dict, labels_origin: str) -> dict:
    from edgecnn import __version__

    files = {}
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        rel = path.relative_to(folder).as_posix()
        if rel != MANIFEST:
            files[rel] = {"sha256": sha256(path), "bytes": path.stat().st_size}
    manifest = {
        "format": BUNDLE_FORMAT,
        "format_version": BUNDLE_VERSION,
        "edgecnn_version": __version__,
        "created_utc": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "target": src.target,
        "model": "model.onnx",
        "runtime_model": "model.ort" if (folder / "model.ort").is_file() else None,
        "source": src.shown,
        "labels_from": labels_origin,
        "checked_with": versions,
        "files": files,
    }
    write_text_atomic(folder / MANIFEST, json.dumps(manifest, indent=2) + "\n")
    return files
