"""Knowledge distillation from the original model (teacher) into a transformed one (student).

Hinton et al.'s loss: ``alpha * T^2 * KL(teacher_T || student_T) + (1 - alpha) * CE(labels)``
on labelled samples, the soft term alone on unlabelled ones (label -1), scaled by
``logit_weight``; optionally plus FitNets-style feature matching (``feature_layers``: the
mean squared error between the student's and the teacher's outputs of the named modules,
each normalised by the teacher's mean square), which gives every pixel of every image a
target: far more signal per image than the logits when only a few hundred images exist.
Training respects what earlier passes put in the student through hooks the caller passes
in (``edgecnn.passes.after_step_hooks`` and ``regularizers`` build them from the model):
pruning masks are re-applied after every optimizer step, active shifts add their L1
penalty; fake-quant modules simply run in the forward as they are. Checkpoints hold everything needed to resume to the same state
(weights, optimizer, scheduler, epoch/step, RNG states); a run is deterministic for a given
seed.

Under ``torchrun`` (``WORLD_SIZE`` set) the same loop runs data-parallel with PyTorch DDP:
a DistributedSampler splits each epoch, rank 0 writes checkpoints and logs.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Literal, Optional, Sequence

import torch
import torch.nn as nn
from pydantic import BaseModel, ConfigDict, Field, model_validator

from edgecnn.errors import UserError
from edgecnn.train.losses import FeatureTaps, feature_loss, kd_loss
from edgecnn.train.runtime import (
    augment_batch,
    distributed,
    lr_lambda,
    pick_device,
    rng_state,
    write_checkpoint,
    seed_everything,
    set_rng_state,
    set_train_mode,
    split_batch,
    zero_running,
)

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
    lr_schedule: Literal["cosine", "step", "constant", "epochs"] = "cosine"
    epoch_lrs: list[float] = Field(
        default_factory=list,
        description="'epochs' schedule: the learning rate of each epoch, the last one repeating (e.g. [3e-4, 1e-4])",
    )
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
    train_size: Optional[int] = Field(
        None, ge=8, description="resize each training batch to this many pixels (bilinear, antialiased) before teacher "
                                "and student: a fully convolutional net trains faster on smaller images")
    hflip: bool = Field(False, description="flip each training batch horizontally with probability 1/2 (one draw per "
                                           "batch, seeded by seed and step, so a resumed run draws the same)")
    seed: int = 0
    grad_clip: Optional[float] = Field(None, gt=0, description="clip the gradient norm to this")
    checkpoint_every: Optional[int] = Field(None, ge=1, description="steps between checkpoints; default: at the end of each epoch")
    num_workers: int = Field(0, ge=0, description="DataLoader worker processes")
    device: str = Field("auto", description="auto, cpu, cuda or cuda:N")
    progress: bool = True

    @model_validator(mode="after")
    def _epoch_lrs_need_their_schedule(self):
        if self.lr_schedule == "epochs" and not self.epoch_lrs:
            raise ValueError("lr_schedule 'epochs' needs epoch_lrs, e.g. epoch_lrs: [3e-4, 1e-4]")
        if any(lr <= 0 for lr in self.epoch_lrs):
            raise ValueError("every epoch_lrs entry must be > 0")
        return self


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
# Evaluation


@torch.no_grad()
def evaluate_top1(model: nn.Module, data, batch_size: int = 64, device="cpu") -> Optional[float]:
    """Top-1 (%) of ``model`` on a labelled dataset of (image, label); None when unlabelled."""
    loader = torch.utils.data.DataLoader(data, batch_size=batch_size, shuffle=False)
    was_training = model.training
    model.eval()
    correct = total = 0
    for batch in loader:
        images, labels = split_batch(batch)
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


AfterStep = Callable[[nn.Module], None]  # called with the student after every optimizer step
Regularizer = Callable[[nn.Module], Optional[torch.Tensor]]  # a weighted term added to the loss


def distill(
    student: nn.Module,
    teacher: nn.Module,
    train_data,
    config: Optional[DistillConfig] = None,
    eval_data=None,
    checkpoint_dir=None,
    resume: bool = False,
    stop_after: Optional[int] = None,
    *,
    after_step: Sequence[AfterStep] = (),
    regularizers: Sequence[Regularizer] = (),
) -> TrainResult:
    """Train ``student`` (in place) to match ``teacher`` on ``train_data``.

    ``train_data`` is a map-style torch Dataset of images or (image, label) pairs (label -1 =
    unlabelled). With ``checkpoint_dir`` a checkpoint is written every ``checkpoint_every``
    steps and at each epoch end; ``resume`` continues from ``checkpoint_dir/last.pt`` to the
    same state a straight run would have. ``stop_after`` pauses after that many global steps
    (checkpoint written), e.g. to split a run over time-limited jobs.

    What earlier passes put in the student comes in as hooks, so that training knows no
    pass: ``after_step`` callables run after each optimizer step (re-apply pruning masks,
    re-tie shared weights), ``regularizers`` add their term to the loss (the active-shift
    L1 penalty). ``edgecnn.passes.after_step_hooks`` / ``regularizers`` build them.
    """
    config = config or DistillConfig()
    if len(train_data) == 0:
        raise UserError("the training data is empty; give a folder with images")
    if resume and checkpoint_dir is None:
        raise UserError("resume needs a checkpoint directory; pass --checkpoint-dir DIR")
    loop = _Loop(student, teacher, train_data, config, checkpoint_dir, list(after_step), list(regularizers))
    if resume:
        loop.restore()
    loop.wrap_ddp()
    progress = _Progress(config.progress and loop.rank == 0, loop.total_steps, loop.step)
    started = time.perf_counter()
    finished = True
    try:
        while loop.step < loop.total_steps and finished:
            finished = loop.run_epoch(eval_data, progress, stop_after)
    finally:
        progress.stop()
        loop.remove_taps()
    student.eval()
    return TrainResult(steps=loop.step, epochs_done=loop.step / loop.steps_per_epoch, history=loop.history,
                       checkpoint=loop.ckpt_path, finished=finished, seconds=time.perf_counter() - started)


class _Progress:
    """A rich progress bar on rank 0, nothing elsewhere."""

    def __init__(self, show: bool, total: int, completed: int):
        self.bar = None
        if show:
            from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

            self.bar = Progress(TextColumn("[progress.description]{task.description}"), BarColumn(),
                                TextColumn("{task.completed}/{task.total}"), TimeRemainingColumn(),
                                TextColumn("{task.fields[info]}"), transient=False)
            self.bar.start()
            self.task = self.bar.add_task("distill", total=total, completed=completed, info="")

    def advance(self, info: str) -> None:
        if self.bar is not None:
            self.bar.update(self.task, advance=1, info=info)

    def stop(self) -> None:
        if self.bar is not None:
            self.bar.stop()


class _Loop:
    """The state of one distillation run (model, optimizer, schedule, step, history), with
    one method per phase so that a resumed run goes through exactly the same code."""

    def __init__(self, student, teacher, train_data, config: DistillConfig, checkpoint_dir,
                 after_step: list, regularizers: list):
        self.student, self.teacher, self.train_data, self.config = student, teacher, train_data, config
        self.after_step, self.regularizers = after_step, regularizers
        self.is_ddp, self.rank, world = distributed()
        self.device = device = pick_device(config.device)
        if device.type == "cuda":
            torch.cuda.set_device(device)
            torch.backends.cudnn.benchmark = False
            torch.backends.cudnn.deterministic = True
        seed_everything(config.seed)
        student.to(device)
        teacher.to(device).eval()
        for p in teacher.parameters():
            p.requires_grad_(False)
        self.student_taps = self.teacher_taps = None
        if config.feature_layers and config.feature_weight > 0:
            self.student_taps = FeatureTaps(student, config.feature_layers, "student")
            self.teacher_taps = FeatureTaps(teacher, config.feature_layers, "teacher")
        self.params = [p for p in student.parameters() if p.requires_grad]
        if not self.params:
            raise UserError("the student has no trainable parameters")
        if config.optimizer == "sgd":
            self.optimizer = torch.optim.SGD(self.params, lr=config.lr, momentum=config.momentum,
                                             weight_decay=config.weight_decay)
        else:
            self.optimizer = torch.optim.AdamW(self.params, lr=config.lr, weight_decay=config.weight_decay)
        self.sampler = None
        if self.is_ddp:
            self.sampler = torch.utils.data.distributed.DistributedSampler(
                train_data, num_replicas=world, rank=self.rank, shuffle=True, seed=config.seed, drop_last=True)
        per_rank = len(self.sampler) if self.sampler is not None else len(train_data)
        self.steps_per_epoch = max(1, math.ceil(per_rank / config.batch_size))
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lr_lambda(config, self.steps_per_epoch))
        self.total_steps = config.epochs * self.steps_per_epoch
        self.step, self.history = 0, []
        self.ckpt_path = Path(checkpoint_dir) / CHECKPOINT_NAME if checkpoint_dir is not None else None
        self.running = zero_running()
        self.model = student

    def restore(self) -> None:
        """Load ``last.pt``: weights, optimizer, schedule, step, history, RNG, epoch sums."""
        if not self.ckpt_path.is_file():
            raise UserError(f"no checkpoint to resume from at '{self.ckpt_path}'; run once without --resume")
        state = torch.load(self.ckpt_path, map_location=self.device, weights_only=False)
        if state.get("config", {}).get("batch_size") != self.config.batch_size:
            raise UserError(f"checkpoint '{self.ckpt_path}' was trained with batch size "
                            f"{state.get('config', {}).get('batch_size')}; resume with the same --batch-size")
        self.student.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.step, self.history = state["step"], state["history"]
        set_rng_state(state["rng"])
        if state.get("running"):
            self.running = {**self.running, **state["running"]}

    def wrap_ddp(self) -> None:
        if self.is_ddp:
            device = self.device
            self.model = nn.parallel.DistributedDataParallel(
                self.student, device_ids=[device.index] if device.type == "cuda" else None)

    def save_checkpoint(self) -> None:
        if self.ckpt_path is None or self.rank != 0:
            return
        write_checkpoint({
            "model": self.student.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "step": self.step,
            "epoch": self.step / self.steps_per_epoch,
            "history": self.history,
            "rng": rng_state(),
            "running": self.running,
            "config": self.config.model_dump(),
        }, self.ckpt_path)

    def remove_taps(self) -> None:
        for taps in (self.student_taps, self.teacher_taps):
            if taps is not None:
                taps.remove()

    def epoch_loader(self, epoch: int, offset: int):
        """The epoch's batches from ``offset`` on. The order depends only on (seed, epoch): a
        resumed run skips the batches already seen without loading them and continues with
        the restored RNG state."""
        config, data = self.config, self.train_data
        if self.sampler is not None:
            self.sampler.set_epoch(epoch)
            order = list(self.sampler)
        else:
            order = torch.randperm(len(data), generator=torch.Generator().manual_seed(config.seed * 1000003 + epoch)).tolist()
        batches = [order[i: i + config.batch_size] for i in range(0, len(order), config.batch_size)]
        return torch.utils.data.DataLoader(data, batch_sampler=batches[offset:], num_workers=config.num_workers,
                                           # own generator: creating the loader must not draw from the global RNG
                                           generator=torch.Generator().manual_seed(config.seed + epoch))

    def run_epoch(self, eval_data, progress: _Progress, stop_after: Optional[int]) -> bool:
        """The rest of the current epoch; False when ``stop_after`` paused the run."""
        config = self.config
        epoch, offset = divmod(self.step, self.steps_per_epoch)
        loader = self.epoch_loader(epoch, offset)
        if hasattr(self.train_data, "set_epoch"):  # per-epoch augmentation seed (edgecnn.data.torch_data)
            self.train_data.set_epoch(epoch)
        set_train_mode(self.student, config.freeze_bn)
        for batch in loader:
            self.train_step(batch)
            progress.advance(f"loss {self.running['loss'] / self.running['n']:.3f}")
            if self.step % self.steps_per_epoch == 0 or self.step == self.total_steps:
                self.end_epoch(eval_data)
            elif config.checkpoint_every and self.step % config.checkpoint_every == 0:
                self.save_checkpoint()
            if stop_after is not None and self.step >= stop_after and self.step < self.total_steps:
                self.save_checkpoint()
                return False
        return True

    def train_step(self, batch) -> None:
        """One optimizer step on one batch, then the after-step hooks."""
        config, device = self.config, self.device
        images, labels = split_batch(batch)
        images = augment_batch(images.to(device, non_blocking=True), config, self.step)
        labels = labels.to(device) if labels is not None else None
        with torch.no_grad():
            teacher_logits = self.teacher(images)
        logits = self.model(images)
        loss, parts = kd_loss(logits, teacher_logits, labels, config.temperature, config.alpha)
        loss = config.logit_weight * loss
        if self.student_taps is not None:
            features = feature_loss(self.student_taps.outputs, self.teacher_taps.outputs)
            parts["feature"] = float(features.detach())
            loss = loss + config.feature_weight * features
        for regularizer in self.regularizers:
            term = regularizer(self.student)
            if term is not None:
                loss = loss + term
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if config.grad_clip:
            torch.nn.utils.clip_grad_norm_(self.params, config.grad_clip)
        self.optimizer.step()
        self.scheduler.step()
        for hook in self.after_step:
            hook(self.student)
        self.step += 1
        running = self.running
        running["loss"] += float(loss.detach())
        running["soft"] += parts["soft"]
        running["hard"] += parts.get("hard", 0.0)
        running["feature"] += parts.get("feature", 0.0)
        running["n"] += 1

    def end_epoch(self, eval_data) -> None:
        """Average the epoch's loss terms into the history, evaluate, checkpoint."""
        running, n = self.running, max(1, self.running["n"])
        entry = {"epoch": self.step / self.steps_per_epoch, "step": self.step, "loss": running["loss"] / n,
                 "soft": running["soft"] / n, "hard": running["hard"] / n,
                 "lr": self.optimizer.param_groups[0]["lr"]}
        if self.student_taps is not None:
            entry["feature"] = running["feature"] / n
        if eval_data is not None and self.rank == 0:
            entry["top1"] = evaluate_top1(self.student, eval_data, self.config.batch_size, self.device)
            set_train_mode(self.student, self.config.freeze_bn)
        self.history.append(entry)
        self.running = zero_running()
        self.save_checkpoint()
