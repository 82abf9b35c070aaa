"""``edgecnn export MODEL -o model.onnx``: FP32 (or FP16) ONNX, checked against PyTorch."""

from __future__ import annotations

import json
from pathlib import Path

import click

from edgecnn.cli_options import load_model_from_cli, model_options, pop_model_options
from edgecnn.errors import UserError
from edgecnn.outputs import check_output_file, model_input_files, writing


def _batch(value: str):
    text = str(value).strip().lower()
    if text == "dynamic":
        return "dynamic"
    try:
        number = int(text)
    except ValueError:
        raise UserError(f"--batch '{value}' is not valid; give a positive integer or 'dynamic'") from None
    if number < 1:
        raise UserError(f"--batch {number} is not valid; give a positive integer or 'dynamic'")
    return number


def load_parity_images(data: str, preprocess, count: int):
    """(NCHW array of ``count`` preprocessed images spread over ``data``, the folder's class names
    in label order or None)."""
    import numpy as np

    from edgecnn.data.images import ImageFolder, iter_batches
    from edgecnn.measure.accuracy import subset

    dataset = ImageFolder(data)
    names = list(dataset.class_names) if dataset.class_names else None
    dataset = subset(dataset, count)
    images = np.concatenate([batch for batch, _ in iter_batches(dataset, preprocess, batch_size=32)])
    return images, names


@click.command("export")
@click.argument("model")
@model_options
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False), help="ONNX file to write.")
@click.option("--opset", type=click.IntRange(13, 20), default=17, show_default=True,
              help="ONNX opset (TensorRT 8.5 on JetPack 5 reads <= 17).")
@click.option("--batch", "batch", default="1", show_default=True, help="Static batch size, or 'dynamic'.")
@click.option("--input-size", type=int, default=None, help="Input height/width (default: the model's preprocessing).")
@click.option("--precision", type=click.Choice(["fp32", "fp16"]), default="fp32", show_default=True,
              help="fp16: weights in float16 with float32 inputs/outputs (for TensorRT 11 strongly typed builds).")
@click.option("--data", type=click.Path(exists=True), default=None,
              help="Image folder for the parity check (default: seeded random inputs).")
@click.option("--parity-images", type=click.IntRange(1, 10000), default=16, show_default=True,
              help="How many images of --data the parity check uses.")
@click.option("--recipe", "recipe_file", type=click.Path(exists=True, dir_okay=False), default=None,
              help="Recipe file that made this model, stored in the ONNX metadata.")
@click.option("--force", is_flag=True, help="Overwrite an existing output file.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def export(model, output, opset, batch, input_size, precision, data, parity_images, recipe_file, force, as_json, **kwargs):
    """Export MODEL (zoo name or path/to/file.py:factory) to one self-contained ONNX file.

    The file passes onnx.checker (full check) and is compared with PyTorch in ONNX Runtime
    before it is written; its metadata carries the preprocessing and labels.
    """
    from edgecnn.export.onnx_export import export_with_parity

    from edgecnn.models.input_size import check_input_size

    out = Path(output)
    inputs = [recipe_file, data, *model_input_files(model, kwargs.get("weights"))]
    check_output_file(out, force, create_parent=True, inputs=inputs)
    batch_spec = _batch(batch)
    loaded = load_model_from_cli(model, **pop_model_options(kwargs))
    if input_size is not None:
        check_input_size(loaded.module, input_size, loaded.name)
        if input_size != loaded.preprocess.input_size:
            loaded.preprocess = loaded.preprocess.replace(input_size=input_size)
    size = loaded.preprocess.input_size
    shape = (batch_spec if isinstance(batch_spec, int) else 1, 3, size, size)
    metadata = {}
    if recipe_file:
        metadata["edgecnn.recipe"] = Path(recipe_file).read_text(encoding="utf-8")
    inputs = None
    if data:
        inputs, class_names = load_parity_images(data, loaded.preprocess, parity_images)
        classes = getattr(loaded.module, "num_classes", None)
        if not loaded.labels and class_names and len(class_names) == classes:
            loaded.labels = class_names  # the folder's classes file names every output

    target = out if precision == "fp32" else out.with_name(f".{out.stem}.fp32-stage.onnx")
    with writing(out):
        try:
            path, report = export_with_parity(
                loaded, target, input_shape=shape, opset=opset, batch=batch_spec, metadata=metadata,
                parity_inputs=inputs, overwrite=True,
            )
            fp16_note = None
            if precision == "fp16":
                from edgecnn.export.fp16 import to_fp16

                path = to_fp16(target, out, keep_io_fp32=True, inputs=inputs, overwrite=True)
                fp16_note = "weights float16, inputs/outputs float32; top-1 checked against FP32 in ONNX Runtime"
        finally:
            if precision == "fp16" and target.exists():
                target.unlink()

    result = {
        "output": str(path),
        "model": loaded.name,
        "weights": loaded.weights,
        "opset": opset,
        "batch": batch_spec,
        "input_shape": list(shape),
        "precision": precision,
        "bytes": path.stat().st_size,
        "parity": report.to_dict() if report else None,
        "parity_inputs": f"{len(inputs)} images from {data}" if inputs is not None else "seeded random inputs",
    }
    if as_json:
        click.echo(json.dumps(result))
        return
    click.echo(f"wrote {path} ({path.stat().st_size / 1e6:.2f} MB, opset {opset}, batch {batch_spec}, {precision})")
    if report:
        stage = "FP32 stage " if precision == "fp16" else ""
        click.echo(f"{stage}{report.summary()} on {result['parity_inputs']}")
    if fp16_note:
        click.echo(fp16_note)
