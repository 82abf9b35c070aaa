"""``edgecnn eval MODEL|model.onnx --data DIR``: top-1/top-5 on an image folder.

An ``.onnx`` file is evaluated in ONNX Runtime with the preprocessing in its metadata and
never imports torch; a zoo model (or path/to/file.py:factory) runs in PyTorch with its own
preprocessing.
"""

from __future__ import annotations

import json
from pathlib import Path

import click

from edgecnn.cli_options import model_options, pop_model_options
from edgecnn.errors import UserError


def _is_onnx(ref: str) -> bool:
    return ref.lower().endswith(".onnx")


def _explicit_preprocess(options: dict):
    """The --preprocess preset for an ONNX file, or None to use its metadata (--preprocess-set
    is applied on top of either, after fitting the file's input size)."""
    from edgecnn.preprocess import get_preset

    return get_preset(options["preprocess"]) if options.get("preprocess") else None


def _torch_predictor(loaded):
    import numpy as np
    import torch

    module = loaded.module.eval()

    def predict(images: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            out = module(torch.from_numpy(images))
        if isinstance(out, (tuple, list)):
            out = out[0]
        return out.float().numpy()

    return predict


@click.command("eval")
@click.argument("model")
@model_options
@click.option("--data", required=True, type=click.Path(exists=True),
              help="Image folder (class sub-folders, classes.txt in it or its parent) or list file.")
@click.option("--reference", default=None, help="Reference ONNX file (e.g. the FP32 export): report top-1 agreement.")
@click.option("--limit", type=int, default=None, help="Evaluate this many images, spread over the classes.")
@click.option("--batch", "batch_size", type=click.IntRange(1, 4096), default=32, show_default=True)
@click.option("--threads", type=int, default=0, help="ORT intra-op threads (0: ORT's default).")
@click.option("--semantics", type=click.Choice(["auto", "reference", "runtime"]), default="auto", show_default=True,
              help="ONNX: 'reference' runs Q/DQ as ONNX defines them (ORT graph optimizations off: what TensorRT "
                   "computes), 'runtime' with ORT's int8 kernels; 'auto' is reference for files marked trt and for files "
                   "whose target is for another CPU class than this machine's (edgecnn models shows it).")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def eval_(model, data, reference, limit, batch_size, threads, semantics, as_json, **kwargs):
    """Top-1/top-5 accuracy of MODEL (zoo name, path/to/file.py:factory or .onnx) on --data."""
    from edgecnn.measure import accuracy

    options = pop_model_options(kwargs)
    if reference is not None and not _is_onnx(reference):
        raise UserError(f"--reference '{reference}' should be an .onnx file (export it with edgecnn export)")
    if reference is not None and not Path(reference).is_file():
        raise UserError(f"--reference '{reference}' does not exist; check the path")
    from edgecnn.data.images import check_image_source

    check_image_source(data, "--data")
    progress = not as_json
    if _is_onnx(model):
        if not Path(model).is_file():
            raise UserError(f"ONNX file '{model}' does not exist; check the path")
        model_only = [k for k in ("weights", "width_mult", "groups", "num_classes") if options.get(k)]
        if model_only or options.get("tf_padding"):
            raise UserError("model options (--weights, --width-mult...) do not apply to an .onnx file; drop them")
        report = accuracy.evaluate_onnx(model, data, reference=reference, limit=limit, batch_size=batch_size,
                                        threads=threads, preprocess=_explicit_preprocess(options), progress=progress,
                                        semantics=semantics, overrides=options.get("preprocess_set") or ())
    else:
        from edgecnn.cli_options import load_model_from_cli
        from edgecnn.models.input_size import output_classes

        loaded = load_model_from_cli(model, **options)
        ref_predict = None
        if reference:
            ref_predict, ref_shape = accuracy.onnx_predictor(reference, threads)
            accuracy.check_input_size(ref_shape, loaded.preprocess, f"reference '{reference}'")
        report = accuracy.evaluate(
            _torch_predictor(loaded), data, loaded.preprocess, loaded.name, ref_predict, reference, limit,
            batch_size, progress, num_outputs=output_classes(loaded.module, loaded.preprocess.input_size), labels=loaded.labels,
        )
        report.model = f"{loaded.name} ({loaded.weights})"
    if report.warning:
        click.echo(f"warning: {report.warning}", err=True)
    if as_json:
        click.echo(json.dumps(report.to_dict()))
    else:
        click.echo(report.summary())
