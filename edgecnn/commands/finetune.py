"""``edgecnn finetune MODEL --data DIR -o student.pth``: knowledge distillation into a transformed model.

The student is MODEL (with its model options), transformed by ``--shift`` when given; the
teacher is the untransformed model (or ``--teacher``). Runs data-parallel under ``torchrun``.
The training options are the fields of :class:`~edgecnn.train.distill.DistillConfig` (the
``distill`` recipe stage's config), with its defaults.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import click

from edgecnn.cli_options import config_options, config_values, field_option, load_model_from_cli, model_options, pop_model_options
from edgecnn.errors import UserError
from edgecnn.outputs import check_output_file, model_input_files, record_output, writing
from edgecnn.passes.shift import ShiftConfig
from edgecnn.train.distill import DistillConfig


def save_student(module, path: Path, meta: dict) -> None:
    """Atomically write ``{"state_dict": ..., "edgecnn": meta}`` (readable by --weights)."""
    import torch

    from edgecnn.fileio import save_atomic

    path.parent.mkdir(parents=True, exist_ok=True)
    save_atomic(path, lambda tmp: torch.save({"state_dict": module.state_dict(), "edgecnn": meta}, tmp))


# Flags whose name is not the config field's.
DISTILL_FLAGS = {"num_workers": "--workers"}


@click.command("finetune")
@click.argument("model")
@model_options
@click.option("--teacher", default=None, metavar="REF",
              help="Teacher model (zoo name or file.py:factory); default: MODEL itself, untransformed.")
@click.option("--teacher-weights", default=None, metavar="imagenet|PATH", help="Teacher weights (default: --weights).")
@click.option("--data", required=True, type=click.Path(exists=True), help="Training images (class folders, flat folder or list file).")
@click.option("--eval-data", type=click.Path(exists=True), default=None, help="Labelled images for top-1 after each epoch.")
@config_options(DistillConfig, exclude=("progress",), flags=DISTILL_FLAGS)
@click.option("--input-size", type=int, default=None, help="Training resolution (default: the model's); smaller is faster.")
@click.option("--checkpoint-dir", type=click.Path(file_okay=False), default=None)
@click.option("--resume", is_flag=True, help="Continue from --checkpoint-dir/last.pt.")
@click.option("--shift", "use_shift", is_flag=True, help="Replace depthwise / Fire 3x3 convs by shifts first.")
@field_option(ShiftConfig, "kind", "--shift-kind")
@click.option("--shift-include", multiple=True, metavar="GLOB", help="Layers to shift (repeatable; default all).")
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False), help="Student checkpoint to write (.pth).")
@click.option("--force", is_flag=True, help="Overwrite an existing output file.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def finetune(model, teacher, teacher_weights, data, eval_data, input_size, checkpoint_dir, resume, use_shift, kind,
             shift_include, output, force, as_json, **kwargs):
    """Fine-tune a transformed MODEL with knowledge distillation from the original."""
    output = Path(output)
    inputs = [data, eval_data, teacher_weights, *model_input_files(model, kwargs.get("weights")),
              *(model_input_files(teacher) if teacher else [])]
    check_output_file(output, force, create_parent=True, inputs=inputs)
    config = config_values(DistillConfig, kwargs, DISTILL_FLAGS, progress=not as_json)
    if config.logit_weight == 0 and not config.feature_layers:
        raise UserError("--logit-weight 0 leaves nothing to train on; add --feature-layers NAME or raise --logit-weight")
    from edgecnn.data.images import check_image_source

    check_image_source(data, "--data")
    if eval_data:
        check_image_source(eval_data, "--eval-data")

    import torch

    from edgecnn.data.images import ImageFolder
    from edgecnn.data.torch_data import ImageDataset
    from edgecnn.passes.hooks import after_step_hooks, regularizers
    from edgecnn.passes.registry import PassContext, run_pass
    from edgecnn.train import distill

    model_opts = pop_model_options(kwargs)
    student = load_model_from_cli(model, **model_opts)
    teacher_opts = dict(model_opts)
    if teacher_weights:
        teacher_opts["weights"] = teacher_weights
    teacher_model = load_model_from_cli(teacher or model, **teacher_opts)

    preprocess = student.preprocess
    train_preprocess = preprocess
    if input_size:
        ratio = preprocess.resize / preprocess.crop
        train_preprocess = preprocess.replace(input_size=input_size, crop=input_size, resize=round(input_size * ratio))
    train_set = ImageDataset(ImageFolder(data), train_preprocess, train=True, seed=config.seed)
    eval_set = ImageDataset(ImageFolder(eval_data), preprocess) if eval_data else None

    passes = []
    if use_shift:
        shift_cfg = {"kind": kind or ShiftConfig.model_fields["kind"].default}
        if shift_include:
            shift_cfg["include"] = list(shift_include)
        from edgecnn.data.torch_data import calibration_batches

        calib = calibration_batches(ImageFolder(data), preprocess, num_images=32)
        size = preprocess.input_size
        ctx = PassContext(example_input=torch.zeros(1, 3, size, size), calib_batches=calib)
        student.module = run_pass("shift", student.module, shift_cfg, ctx)
        passes.append({"pass": "shift", "config": shift_cfg, "summary": ctx.reports[-1].summary})

    result = distill(student.module, teacher_model.module, train_set, config, eval_data=eval_set,
                     checkpoint_dir=checkpoint_dir, resume=resume, after_step=after_step_hooks(student.module),
                     regularizers=regularizers(student.module, config.shift_l1))
    rank = int(os.environ.get("RANK", "0"))
    if rank == 0:
        meta = {"model": student.name, "options": student.options, "weights": student.weights, "passes": passes,
                "distill": config.model_dump(exclude={"progress", "device", "num_workers"}), "history": result.history}
        with writing(output):
            check_output_file(output, force, inputs=inputs)  # again: something may have appeared there meanwhile
            save_student(student.module, output, meta)
            record_output(output, "finetune")
        summary = {"output": str(output), "steps": result.steps, "epochs": result.epochs_done,
                   "history": result.history, "passes": passes, "seconds": round(result.seconds, 1)}
        if as_json:
            click.echo(json.dumps(summary, default=str))
        else:
            last = result.final
            top1 = f", eval top-1 {last['top1']:.2f} %" if last.get("top1") is not None else ""
            click.echo(f"wrote {output}: {result.steps} steps, final loss {last.get('loss', float('nan')):.4f}{top1}")
