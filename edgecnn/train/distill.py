"""Knowledge distillation from the original model (teacher) into a transformed one (student).

Hinton et al.'s loss: ``alpha * T^2 * KL(teacher_T || student_T) + (1 - alpha) * CE(labels)``
on labelled samples, the soft term alone on unlabelled ones (label -1), scaled by
``logit_weight``; optionally plus FitNets-style feature matching (``feature_layers``: the
mean squared error between the student's and the teacher's outputs of the named modules,
each normalised by the teacher's mean square), which gives every pixel of every image a
target: far more signal per image than the logits when only a few hundred images exist.
Training respects what earlier passes put in the student: pruning masks are re-applied
after every optimizer step, fake-quant modules run in the forward as they are, and active
shifts add their L1 penalty. Checkpoints hold everything needed to resume to the same state
(weights, optimizer, scheduler, epoch/step, RNG states); a run is deterministic for a given
seed.

Under ``torchrun`` (``WORLD_SIZE`` set) the same loop runs data-parallel with PyTorch DDP:
a DistributedSampler splits each epoch, rank 0 writes checkpoints and logs.
"""

from __future__ import annotations

import math
import os
import random
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Optional

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field

from edgecnn.errors import UserError

CHECKPOINT_NAME = "last.pt"


class DistillConfig(BaseModel):
    """Hyper-parameters of a distillation run (the ``distill`` recipe stage uses the same keys)."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    epochs: int = Field(1, ge=1)
    batch_size: int = Field(32, ge=1)
    lr: float = Field(1e-3, gt=0, description="peak learning rate")
    optimizer: Literal["adamw", "sgd"] = "adamw"
    momentum: float = Field(0.9, ge=0, lt=1, description="SGD momentum")
    weight_decay: float = Field(0.0, ge=0)
    lr_schedule: Literal["cosine", "step", "constant"] = "cosine"
    warmup_steps: int = Field(0, ge=0)
    step_epochs: int = Field(1, ge=1, description="'step' schedule: multiply the lr by step_gamma every step_epochs")
    step_gamma: float = Field(0.1, gt=0, le=1)
    temperature: float = Field(4.0, gt=0)
    alpha: float = Field(0.9, ge=0, le=1, description="weight of the soft (teacher) loss; 1 - alpha goes to the labels when there are any")
    logit_weight: float = Field(1.0, ge=0, description="weight of the logit (KD + label) loss; 0 trains on feature_layers alone")
    feature_layers: list[str] = Field(
        default_factory=list,
        description="modules (names in both models, same output shapes) whose outputs the student matches to the teacher's, e.g. features.12",
    )
    feature_weight: float = Field(1.0, ge=0, description="weight of the summed normalised feature MSE (with feature_layers)")
    shift_l1: float = Field(0.0, ge=0, description="weight of the L1 penalty on active-shift offsets (per offset, mean)")
    freeze_bn: bool = Field(False, description="keep BatchNorm statistics fixed (eval-mode BN) while training")
    seed: int = 0
    grad_clip: Optional[float] = Field(None, gt=0, description="clip the gradient norm to this")
    checkpoint_every: Optional[int] = Field(None, ge=1, description="steps between checkpoints; default: at the end of each epoch")
    num_workers: int = Field(0, ge=0, description="DataLoader worker processes")
    device: str = Field("auto", description="auto, cpu, cuda or cuda:N")
    progress: bool = True


@dataclass
class TrainResult:
    """What a run did: steps taken, per-epoch history, where the last checkpoint is."""

    steps: int
    epochs_done: float
    history: list[dict] = field(default_factory=list)
    checkpoint: Optional[Path] = None
    finished: bool = True
    seconds: float = 0.0

    @property
    def final(self) -> dict:
        return self.history[-1] if self.history else {}


# ---------------------------------------------------------------------------------------
# Loss


def kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, labels: Optional[torch.Tensor],
            temperature: float, alpha: float) -> tuple[torch.Tensor, dict]:
    """Hinton's distillation loss; labels < 0 (or None) count as unlabelled (soft term only)."""
    t = temperature
    soft = F.kl_div(F.log_softmax(student_logits / t, 1), F.log_softmax(teacher_logits / t, 1),
                    reduction="batchmean", log_target=True) * (t * t)
    parts = {"soft": float(soft.detach())}
    if labels is None or not bool((labels >= 0).any()):
        return soft, parts
    hard = F.cross_entropy(student_logits, labels, ignore_index=-1)
    parts["hard"] = float(hard.detach())
    return alpha * soft + (1 - alpha) * hard, parts


class FeatureTaps:
    """Forward hooks keeping the outputs of the named modules of one model (one batch)."""

    def __init__(self, model: nn.Module, names: list[str], role: str):
        modules = dict(model.named_modules())
        missing = [n for n in names if n not in modules]
        if missing:
            raise UserError(f"feature layer(s) {', '.join(missing)} not found in the {role}; "
                            f"use module names such as {', '.join(list(modules)[1:4])}")
        self.outputs: dict[str, torch.Tensor] = {}
        self.handles = [modules[n].register_forward_hook(self._keep(n)) for n in names]

    def _keep(self, name):
        def hook(module, inputs, output):
            self.outputs[name] = output
        return hook

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()


def feature_loss(student_features: dict, teacher_features: dict) -> torch.Tensor:
    """Sum over layers of MSE(student, teacher) / mean(teacher^2): scale-free, so early
    high-resolution maps and late ones count alike."""
    total = None
    for name, target in teacher_features.items():
        output = student_features[name]
        if output.shape != target.shape:
            raise UserError(f"feature layer '{name}' has shape {tuple(output.shape)} in the student but "
                            f"{tuple(target.shape)} in the teacher; pick layers whose outputs match")
        term = F.mse_loss(output, target) / target.pow(2).mean().clamp_min(1e-12)
        total = term if total is None else total + term
    return total


# ---------------------------------------------------------------------------------------
# Helpers: device, DDP, RNG, schedule, atomic checkpoints


def _device(spec: str) -> torch.device:
    if spec == "auto":
        if "LOCAL_RANK" in os.environ and torch.cuda.is_available():
            return torch.device("cuda", int(os.environ["LOCAL_RANK"]))
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if spec.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"device '{spec}' asked for but CUDA is not available; use --device cpu")
    return torch.device(spec)


def _distributed() -> tuple[bool, int, int]:
    """(is DDP, rank, world size); initialises the process group under torchrun."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return False, 0, 1
    import torch.distributed as dist

    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if torch.cuda.is_available() else "gloo")
    return True, dist.get_rank(), dist.get_world_size()


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def _rng_state() -> dict:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def lr_lambda(config: DistillConfig, steps_per_epoch: int):
    """Multiplier of the base lr at a global step: linear warmup, then the chosen schedule."""
    total = max(1, config.epochs * steps_per_epoch)

    def factor(step: int) -> float:
        if config.warmup_steps and step < config.warmup_steps:
            return (step + 1) / config.warmup_steps
        if config.lr_schedule == "constant":
            return 1.0
        if config.lr_schedule == "step":
            return config.step_gamma ** (step // (config.step_epochs * steps_per_epoch))
        progress = (step - config.warmup_steps) / max(1, total - config.warmup_steps)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    return factor


def _save_atomic(obj, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".part")
    os.close(fd)
    try:
        torch.save(obj, tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _reapply_masks(model: nn.Module) -> None:
    """After each optimizer step: pruned weights back to zero, shared weights back on their
    centroids (both no-ops for a model without masks or sharing)."""
    from edgecnn.passes.prune import reapply_masks
    from edgecnn.passes.weight_share import tie_to_centroids

    reapply_masks(model)
    tie_to_centroids(model)


def _set_train_mode(student: nn.Module, freeze_bn: bool) -> None:
    student.train()
    if freeze_bn:
        for m in student.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.eval()


def _zero_running() -> dict:
    """Per-epoch sums of the loss terms (saved in checkpoints, so a resumed epoch averages right)."""
    return {"loss": 0.0, "soft": 0.0, "hard": 0.0, "feature": 0.0, "n": 0}


def _labels_of(batch) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
    if isinstance(batch, (list, tuple)):
        images = batch[0]
        labels = batch[1] if len(batch) > 1 else None
        if labels is not None and not isinstance(labels, torch.Tensor):
            labels = torch.as_tensor(labels)
        return images, labels
    return batch, None


# ---------------------------------------------------------------------------------------
# Evaluation


@torch.no_grad()
def evaluate_top1(model: nn.Module, data, batch_size: int = 64, device="cpu") -> Optional[float]:
    """Top-1 (%) of ``model`` on a labelled dataset of (image, label); None when unlabelled."""
    loader = torch.utils.data.DataLoader(data, batch_size=batch_size, shuffle=False)
    was_training = model.training
    model.eval()
    correct = total = 0
    for batch in loader:
        images, labels = _labels_of(batch)
        if labels is None:
            return None
        keep = labels >= 0
        if not bool(keep.any()):
            continue
        logits = model(images.to(device))
        correct += int((logits.argmax(1).cpu()[keep] == labels[keep]).sum())
        total += int(keep.sum())
    model.train(was_training)
    return 100.0 * correct / total if total else None


# ---------------------------------------------------------------------------------------
# The loop


def distill(
    student: nn.Module,
    teacher: nn.Module,
    train_data,
    config: Optional[DistillConfig] = None,
    eval_data=None,
    checkpoint_dir=None,
    resume: bool = False,
    stop_after: Optional[int] = None,
) -> TrainResult:
    """Train ``student`` (in place) to match ``teacher`` on ``train_data``.

    ``train_data`` is a map-style torch Dataset of images or (image, label) pairs (label -1 =
    unlabelled). With ``checkpoint_dir`` a checkpoint is written every ``checkpoint_every``
    steps and at each epoch end; ``resume`` continues from ``checkpoint_dir/last.pt`` to the
    same state a straight run would have. ``stop_after`` pauses after that many global steps
    (checkpoint written), e.g. to split a run over time-limited jobs.
    """
    config = config or DistillConfig()
    if len(train_data) == 0:
        raise UserError("the training data is empty; give a folder with images")
    if resume and checkpoint_dir is None:
        raise UserError("resume needs a checkpoint directory; pass --checkpoint-dir DIR")
    is_ddp, rank, world = _distributed()
    device = _device(config.device)
    if device.type == "cuda":
        torch.cuda.set_device(device)
        torch.backends.cudnn.benchmark = False
        torch.backends.cudnn.deterministic = True
    _seed_everything(config.seed)
    student.to(device)
    teacher.to(device).eval()
    for p in teacher.parameters():
        p.requires_grad_(False)

    from edgecnn.passes.shift import ActiveShift, l1_penalty

    shift_offsets = sum(m.offset.numel() for m in student.modules() if isinstance(m, ActiveShift))
    student_taps = teacher_taps = None
    if config.feature_layers and config.feature_weight > 0:
        student_taps = FeatureTaps(student, config.feature_layers, "student")
        teacher_taps = FeatureTaps(teacher, config.feature_layers, "teacher")

    params = [p for p in student.parameters() if p.requires_grad]
    if not params:
        raise UserError("the student has no trainable parameters")
    if config.optimizer == "sgd":
        optimizer = torch.optim.SGD(params, lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay)
    else:
        optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)

    sampler = None
    if is_ddp:
        sampler = torch.utils.data.distributed.DistributedSampler(
            train_data, num_replicas=world, rank=rank, shuffle=True, seed=config.seed, drop_last=True)
    per_rank = len(sampler) if sampler is not None else len(train_data)
    steps_per_epoch = max(1, math.ceil(per_rank / config.batch_size))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(config, steps_per_epoch))
    total_steps = config.epochs * steps_per_epoch

    step, history = 0, []
    ckpt_path = Path(checkpoint_dir) / CHECKPOINT_NAME if checkpoint_dir is not None else None
    if resume:
        if not ckpt_path.is_file():
            raise UserError(f"no checkpoint to resume from at '{ckpt_path}'; run once without --resume")
        state = torch.load(ckpt_path, map_location=device, weights_only=False)
        if state.get("config", {}).get("batch_size") != config.batch_size:
            raise UserError(f"checkpoint '{ckpt_path}' was trained with batch size "
                            f"{state.get('config', {}).get('batch_size')}; resume with the same --batch-size")
        student.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        step, history = state["step"], state["history"]
        resumed_running = state.get("running")
        _set_rng_state(state["rng"])

    model = student
    if is_ddp:
        model = nn.parallel.DistributedDataParallel(student, device_ids=[device.index] if device.type == "cuda" else None)

    def save_checkpoint():
        if ckpt_path is None or rank != 0:
            return
        _save_atomic({
            "model": student.state_dict(),
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "step": step,
            "epoch": step / steps_per_epoch,
            "history": history,
            "rng": _rng_state(),
            "running": running,
            "config": config.model_dump(),
        }, ckpt_path)

    progress = None
    show = config.progress and rank == 0
    if show:
        from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

        progress = Progress(TextColumn("[progress.description]{task.description}"), BarColumn(),
                            TextColumn("{task.completed}/{task.total}"), TimeRemainingColumn(),
                            TextColumn("{task.fields[info]}"), transient=False)
        progress.start()
        task = progress.add_task("distill", total=total_steps, completed=step, info="")

    started = time.perf_counter()
    finished = True
    running = _zero_running()
    if resume and resumed_running:
        running = {**running, **resumed_running}
    try:
        while step < total_steps:
            epoch, offset = divmod(step, steps_per_epoch)
            # The epoch's order depends only on (seed, epoch): a resumed run skips the batches
            # already seen without loading them and continues with the restored RNG state.
            if sampler is not None:
                sampler.set_epoch(epoch)
                order = list(sampler)
            else:
                order = torch.randperm(len(train_data), generator=torch.Generator().manual_seed(config.seed * 1000003 + epoch)).tolist()
            batches = [order[i: i + config.batch_size] for i in range(0, len(order), config.batch_size)]
            loader = torch.utils.data.DataLoader(train_data, batch_sampler=batches[offset:], num_workers=config.num_workers,
                                                 # own generator: creating the loader must not draw from the global RNG
                                                 generator=torch.Generator().manual_seed(config.seed + epoch))
            if hasattr(train_data, "set_epoch"):  # per-epoch augmentation seed (edgecnn.data.torch_data)
                train_data.set_epoch(epoch)
            _set_train_mode(student, config.freeze_bn)
            for batch in loader:
                images, labels = _labels_of(batch)
                images = images.to(device, non_blocking=True)
                labels = labels.to(device) if labels is not None else None
                with torch.no_grad():
                    teacher_logits = teacher(images)
                logits = model(images)
                loss, parts = kd_loss(logits, teacher_logits, labels, config.temperature, config.alpha)
                loss = config.logit_weight * loss
                if student_taps is not None:
                    features = feature_loss(student_taps.outputs, teacher_taps.outputs)
                    parts["feature"] = float(features.detach())
                    loss = loss + config.feature_weight * features
                if config.shift_l1 and shift_offsets:
                    loss = loss + config.shift_l1 * l1_penalty(student) / shift_offsets
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                if config.grad_clip:
                    torch.nn.utils.clip_grad_norm_(params, config.grad_clip)
                optimizer.step()
                scheduler.step()
                _reapply_masks(student)
                step += 1
                running["loss"] += float(loss.detach())
                running["soft"] += parts["soft"]
                running["hard"] += parts.get("hard", 0.0)
                running["feature"] += parts.get("feature", 0.0)
                running["n"] += 1
                if progress is not None:
                    progress.update(task, advance=1, info=f"loss {running['loss'] / running['n']:.3f}")
                if step % steps_per_epoch == 0 or step == total_steps:
                    n = max(1, running["n"])
                    entry = {"epoch": step / steps_per_epoch, "step": step, "loss": running["loss"] / n,
                             "soft": running["soft"] / n, "hard": running["hard"] / n,
                             "lr": optimizer.param_groups[0]["lr"]}
                    if student_taps is not None:
                        entry["feature"] = running["feature"] / n
                    if eval_data is not None and rank == 0:
                        entry["top1"] = evaluate_top1(student, eval_data, config.batch_size, device)
                        _set_train_mode(student, config.freeze_bn)
                    history.append(entry)
                    running = _zero_running()
                    save_checkpoint()
                elif config.checkpoint_every and step % config.checkpoint_every == 0:
                    save_checkpoint()
                if stop_after is not None and step >= stop_after and step < total_steps:
                    save_checkpoint()
                    finished = False
                    break
            if not finished:
                break
    finally:
        if progress is not None:
            progress.stop()
        for taps in (student_taps, teacher_taps):
            if taps is not None:
                taps.remove()
    student.eval()
    return TrainResult(steps=step, epochs_done=step / steps_per_epoch, history=history, checkpoint=ckpt_path,
                       finished=finished, seconds=time.perf_counter() - started)
