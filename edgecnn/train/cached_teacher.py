"""Distillation from cached teacher outputs: the teacher runs once per image, ever.

Recovery after pruning / shift / low-bit quantization trains on thousands of unlabelled
photos for several epochs; the teacher's forward is a third of each step, and the same on
every epoch and every candidate of a search. So its logits are stored on disk, one float16
file per image, in a folder named by the *teacher fingerprint* (SHA-256 of its weights) and
the *preprocessing* key; each file is named by the image key (SHA-256 of the file's bytes,
:func:`image_key`). A changed teacher, preprocessing or image never reads a stale entry.

No augmentation: the cached logits are those of exactly the pixels the student sees.
:func:`distill_cached` is resumable (checkpoint = weights, optimizer, schedule, step, RNG
states; the batch order depends only on seed and epoch) and shows progress. What earlier
transforms put in the student (pruning masks, shared weights, fake-quant ranges) is kept
by the ``after_step`` callables the caller passes (run after every optimizer step).
"""

from __future__ import annotations

import hashlib
import math
import time
from pathlib import Path
from typing import Callable, Optional, Sequence, Union

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field

from edgecnn.errors import UserError
from edgecnn.fileio import save_atomic
from edgecnn.train.runtime import set_train_mode, write_checkpoint

CHECKPOINT = "recovery.pt"


def image_key(path: Union[str, Path]) -> str:
    """SHA-256 of the image file's bytes (the same photo under another name shares its entry)."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()[:40]


def model_fingerprint(model: nn.Module) -> str:
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:24]


class TeacherCache:
    """Teacher logits on disk, under ``root/<teacher fingerprint>-<preprocessing hash>/<image key>.npy``."""

    def __init__(self, root: Union[str, Path], teacher: nn.Module, preprocess_key: str):
        self.teacher = teacher.eval()
        tag = hashlib.sha256(preprocess_key.encode()).hexdigest()[:12]
        self.folder = Path(root) / f"{model_fingerprint(teacher)}-{tag}"
        self.folder.mkdir(parents=True, exist_ok=True)

    def path(self, key: str) -> Path:
        return self.folder / f"{key}.npy"

    def get(self, key: str) -> np.ndarray:
        return np.load(self.path(key)).astype(np.float32)

    @torch.no_grad()
    def fill(self, dataset, batch_size: int = 64, progress: bool = True) -> int:
        """Compute and store the logits of every image of ``dataset`` (items ``(image, key)``)
        not cached yet; returns how many were computed."""
        missing = [i for i in range(len(dataset)) if not self.path(dataset.key(i)).exists()]
        bar = _bar(progress, "teacher outputs", len(missing))
        for start in range(0, len(missing), batch_size):
            items = [dataset[i] for i in missing[start:start + batch_size]]
            logits = self.teacher(torch.stack([x for x, _ in items])).numpy().astype(np.float16)
            for (_, key), row in zip(items, logits):
                save_atomic(self.path(key), lambda p, row=row: _save_array(p, row))
            bar.advance(len(items))
        bar.close()
        return len(missing)


def _save_array(path: Path, array: np.ndarray) -> None:
    with open(path, "wb") as handle:  # a file object: np.save would append ".npy" to the temp name
        np.save(handle, array, allow_pickle=False)


class RecoveryConfig(BaseModel):
    """Hyper-parameters of a cached-teacher recovery run."""

    model_config = ConfigDict(extra="forbid")
    steps: int = Field(300, ge=1)
    batch_size: int = Field(32, ge=1)
    lr: float = Field(1e-4, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    temperature: float = Field(2.0, gt=0)
    seed: int = 0
    checkpoint_every: int = Field(50, ge=1)
    freeze_bn: bool = True  # small batches of skewed photos: keep the BN statistics of the original


class _Bar:
    def __init__(self, progress, label, total):
        self.progress, self.task = None, None
        if progress and total:
            from rich.progress import Progress

            self.progress = Progress(transient=True)
            self.progress.start()
            self.task = self.progress.add_task(label, total=total)

    def advance(self, n=1, **fields):
        if self.progress is not None:
            self.progress.update(self.task, advance=n, **fields)

    def close(self):
        if self.progress is not None:
            self.progress.stop()


def _bar(progress: bool, label: str, total: int) -> _Bar:
    return _Bar(progress, label, total)


def _batch_order(n: int, batch: int, seed: int, epoch: int) -> list[list[int]]:
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 1000003 + epoch)).tolist()
    return [order[i:i + batch] for i in range(0, n - batch + 1, batch)] or [order]


def distill_cached(student: nn.Module, dataset, cache: TeacherCache, config: Optional[RecoveryConfig] = None,
                   checkpoint_dir=None, resume: bool = False, stop_after: Optional[int] = None,
                   after_step: Sequence[Callable[[nn.Module], None]] = (), progress: bool = True) -> dict:
    """Train ``student`` in place to match the cached teacher logits (KL at ``temperature``).

    ``dataset[i] -> (image tensor, key)``, ``dataset.key(i) -> key``. Returns
    ``{"steps", "loss" (mean of the last 20 steps), "seconds", "finished"}``.
    """
    config = config or RecoveryConfig()
    if len(dataset) == 0:
        raise UserError("the recovery images are empty; give --train a folder with images")
    cache.fill(dataset, progress=progress)
    torch.manual_seed(config.seed)
    params = [p for p in student.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    cosine = lambda s: 0.5 * (1 + math.cos(math.pi * min(1.0, s / config.steps)))  # noqa: E731
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, cosine)
    ckpt = Path(checkpoint_dir) / CHECKPOINT if checkpoint_dir is not None else None
    step, losses = 0, []
    if resume:
        if ckpt is None or not ckpt.is_file():
            raise UserError(f"no recovery checkpoint at '{ckpt}'; run once without resume")
        state = torch.load(ckpt, weights_only=False)
        student.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        step, losses = state["step"], state["losses"]
        torch.set_rng_state(state["rng"])

    def save():
        if ckpt is not None:
            state = {"model": student.state_dict(), "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                     "step": step, "losses": losses, "rng": torch.get_rng_state(), "config": config.model_dump()}
            write_checkpoint(state, ckpt)

    per_epoch = len(_batch_order(len(dataset), config.batch_size, config.seed, 0))
    bar = _bar(progress, "recovery", config.steps)
    bar.advance(step)
    started = time.perf_counter()
    t = config.temperature
    set_train_mode(student, config.freeze_bn)
    while step < config.steps and (stop_after is None or step < stop_after):
        epoch, offset = divmod(step, per_epoch)
        batch = _batch_order(len(dataset), config.batch_size, config.seed, epoch)[offset]
        items = [dataset[i] for i in batch]
        images = torch.stack([x for x, _ in items])
        target = torch.from_numpy(np.stack([cache.get(k) for _, k in items]))
        logits = student(images)
        loss = F.kl_div(F.log_softmax(logits / t, 1), F.log_softmax(target / t, 1), log_target=True,
                        reduction="batchmean") * t * t
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
        for hook in after_step:
            hook(student)
        step += 1
        losses = (losses + [float(loss.detach())])[-20:]
        bar.advance(1)
        if step % config.checkpoint_every == 0 or step == config.steps:
            save()
    if stop_after is not None and step < config.steps:
        save()
    bar.close()
    student.eval()
    return {"steps": step, "loss": float(np.mean(losses)) if losses else None,
            "seconds": round(time.perf_counter() - started, 1), "finished": step >= config.steps}
