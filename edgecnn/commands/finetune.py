"""``edgecnn finetune MODEL --data DIR -o student.pth``: knowledge distillation into a transformed model.

The student is MODEL (with its model options), transformed by ``--shift`` when given; the
teacher is the untransformed model (or ``--teacher``). Runs data-parallel under ``torchrun``.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import click

from edgecnn.cli_options import load_model_from_cli, model_options, pop_model_options
from edgecnn.errors import UserError


def save_student(module, path: Path, meta: dict) -> None:
    """Atomically write ``{"state_dict": ..., "edgecnn": meta}`` (readable by --weights)."""
    import torch

    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".part")
    os.close(fd)
    try:
        torch.save({"state_dict": module.state_dict(), "edgecnn": meta}, tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


@click.command("finetune")
@click.argument("model")
@model_options
@click.option("--teacher", default=None, metavar="REF",
              help="Teacher model (zoo name or file.py:factory); default: MODEL itself, untransformed.")
@click.option("--teacher-weights", default=None, metavar="imagenet|PATH", help="Teacher weights (default: --weights).")
@click.option("--data", required=True, type=click.Path(exists=True), help="Training images (class folders, flat folder or list file).")
@click.option("--eval-data", type=click.Path(exists=True), default=None, help="Labelled images for top-1 after each epoch.")
@click.option("--epochs", type=click.IntRange(1), default=1, show_default=True)
@click.option("--lr", type=float, default=1e-3, show_default=True)
@click.option("--lr-schedule", type=click.Choice(["cosine", "step", "constant"]), default="cosine", show_default=True)
@click.option("--optimizer", type=click.Choice(["adamw", "sgd"]), default="adamw", show_default=True)
@click.option("--batch-size", type=click.IntRange(1), default=32, show_default=True)
@click.option("--temperature", type=float, default=4.0, show_default=True)
@click.option("--alpha", type=click.FloatRange(0, 1), default=0.9, show_default=True,
              help="Weight of the soft (teacher) loss; 1 - alpha goes to the labels when there are any.")
@click.option("--logit-weight", type=click.FloatRange(0), default=1.0, show_default=True,
              help="Weight of the logit (KD + label) loss; 0 trains on --feature-layers alone.")
@click.option("--feature-layers", multiple=True, metavar="NAME",
              help="Module whose output the student matches to the teacher's (repeatable), e.g. features.12.")
@click.option("--feature-weight", type=click.FloatRange(0), default=1.0, show_default=True,
              help="Weight of the feature-matching loss (with --feature-layers).")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--input-size", type=int, default=None, help="Training resolution (default: the model's); smaller is faster.")
@click.option("--checkpoint-dir", type=click.Path(file_okay=False), default=None)
@click.option("--resume", is_flag=True, help="Continue from --checkpoint-dir/last.pt.")
@click.option("--shift", "use_shift", is_flag=True, help="Replace depthwise / Fire 3x3 convs by shifts first.")
@click.option("--shift-kind", type=click.Choice(["grouped", "active"]), default="grouped", show_default=True)
@click.option("--shift-include", multiple=True, metavar="GLOB", help="Layers to shift (repeatable; default all).")
@click.option("--shift-l1", type=float, default=0.0, show_default=True, help="L1 penalty weight on active-shift offsets.")
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda or cuda:N.")
@click.option("--workers", type=click.IntRange(0), default=0, show_default=True, help="DataLoader worker processes.")
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False), help="Student checkpoint to write (.pth).")
@click.option("--force", is_flag=True, help="Overwrite an existing output file.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def finetune(model, teacher, teacher_weights, data, eval_data, epochs, lr, lr_schedule, optimizer, batch_size,
             temperature, alpha, logit_weight, feature_layers, feature_weight, seed, input_size, checkpoint_dir, resume, use_shift, shift_kind, shift_include,
             shift_l1, device, workers, output, force, as_json, **kwargs):
    """Fine-tune a transformed MODEL with knowledge distillation from the original."""
    output = Path(output)
    if output.exists() and not force:
        raise UserError(f"output '{output}' exists; pass --force to overwrite it")
    if temperature <= 0:
        raise UserError(f"--temperature {temperature} is not valid; give a positive number")
    if lr <= 0:
        raise UserError(f"--lr {lr} is not valid; give a positive number")
    if logit_weight == 0 and not feature_layers:
        raise UserError("--logit-weight 0 leaves nothing to train on; add --feature-layers NAME or raise --logit-weight")

    import torch

    from edgecnn.data.images import ImageFolder
    from edgecnn.data.torch_data import ImageDataset
    from edgecnn.passes.hooks import after_step_hooks, regularizers
    from edgecnn.passes.registry import PassContext, run_pass
    from edgecnn.train import DistillConfig, distill

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
    train_set = ImageDataset(ImageFolder(data), train_preprocess, train=True, seed=seed)
    eval_set = ImageDataset(ImageFolder(eval_data), preprocess) if eval_data else None

    passes = []
    if use_shift:
        shift_cfg = {"kind": shift_kind}
        if shift_include:
            shift_cfg["include"] = list(shift_include)
        from edgecnn.data.torch_data import calibration_batches

        calib = calibration_batches(ImageFolder(data), preprocess, num_images=32)
        size = preprocess.input_size
        ctx = PassContext(example_input=torch.zeros(1, 3, size, size), calib_batches=calib)
        student.module = run_pass("shift", student.module, shift_cfg, ctx)
        passes.append({"pass": "shift", "config": shift_cfg, "summary": ctx.reports[-1].summary})

    config = DistillConfig(epochs=epochs, lr=lr, lr_schedule=lr_schedule, optimizer=optimizer, batch_size=batch_size,
                           temperature=temperature, alpha=alpha, seed=seed, shift_l1=shift_l1, device=device,
                           logit_weight=logit_weight, feature_layers=list(feature_layers),
                           feature_weight=feature_weight,
                           num_workers=workers, progress=not as_json)
    result = distill(student.module, teacher_model.module, train_set, config, eval_data=eval_set,
                     checkpoint_dir=checkpoint_dir, resume=resume, after_step=after_step_hooks(student.module),
                     regularizers=regularizers(student.module, config.shift_l1))
    rank = int(os.environ.get("RANK", "0"))
    if rank == 0:
        meta = {"model": student.name, "options": student.options, "weights": student.weights, "passes": passes,
                "distill": config.model_dump(exclude={"progress", "device", "num_workers"}), "history": result.history}
        save_student(student.module, output, meta)
        summary = {"output": str(output), "steps": result.steps, "epochs": result.epochs_done,
                   "history": result.history, "passes": passes, "seconds": round(result.seconds, 1)}
        if as_json:
            click.echo(json.dumps(summary, default=str))
        else:
            last = result.final
            top1 = f", eval top-1 {last['top1']:.2f} %" if last.get("top1") is not None else ""
            click.echo(f"wrote {output}: {result.steps} steps, final loss {last.get('loss', float('nan')):.4f}{top1}")
