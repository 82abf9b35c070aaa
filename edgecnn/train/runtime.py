"""The plumbing of a training run: device, DDP, RNG state, lr schedule, checkpoints, batches.

Apart from :mod:`edgecnn.train.distill` so that the loop there reads as the algorithm.
"""

from __future__ import annotations

import math
import os
import random
from pathlib import Path
from typing import Optional

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from edgecnn.errors import UserError
from edgecnn.fileio import save_atomic


def pick_device(spec: str) -> torch.device:
    if spec == "auto":
        if "LOCAL_RANK" in os.environ and torch.cuda.is_available():
            return torch.device("cuda", int(os.environ["LOCAL_RANK"]))
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if spec.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"device '{spec}' asked for but CUDA is not available; use --device cpu")
    return torch.device(spec)


def distributed() -> tuple[bool, int, int]:
    """(is DDP, rank, world size); initialises the process group under torchrun."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return False, 0, 1
    import torch.distributed as dist

    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if torch.cuda.is_available() else "gloo")
    return True, dist.get_rank(), dist.get_world_size()


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def rng_state() -> dict:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def lr_lambda(config, steps_per_epoch: int):
    """Multiplier of the base lr at a global step: linear warmup, then the chosen schedule."""
    total = max(1, config.epochs * steps_per_epoch)

    def factor(step: int) -> float:
        if config.warmup_steps and step < config.warmup_steps:
            return (step + 1) / config.warmup_steps
        if config.lr_schedule == "constant":
            return 1.0
        if config.lr_schedule == "epochs":
            lrs = config.epoch_lrs
            return lrs[min(step // steps_per_epoch, len(lrs) - 1)] / config.lr
        if config.lr_schedule == "step":
            return config.step_gamma ** (step // (config.step_epochs * steps_per_epoch))
        progress = (step - config.warmup_steps) / max(1, total - config.warmup_steps)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    return factor


def write_checkpoint(obj, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    save_atomic(path, lambda tmp: torch.save(obj, tmp))


def set_train_mode(student: nn.Module, freeze_bn: bool) -> None:
    student.train()
    if freeze_bn:
        for m in student.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.eval()


def zero_running() -> dict:
    """Per-epoch sums of the loss terms (saved in checkpoints, so a resumed epoch averages right)."""
    return {"loss": 0.0, "soft": 0.0, "hard": 0.0, "feature": 0.0, "n": 0}


def split_batch(batch) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
    if isinstance(batch, (list, tuple)):
        images = batch[0]
        labels = batch[1] if len(batch) > 1 else None
        if labels is not None and not isinstance(labels, torch.Tensor):
            labels = torch.as_tensor(labels)
        return images, labels
    return batch, None


def augment_batch(images: torch.Tensor, config, step: int) -> torch.Tensor:
    """The batch at ``config.train_size`` and, with ``config.hflip``, mirrored on a coin drawn
    from (seed, step): the same draws in a resumed run, none from the global RNG."""
    if config.train_size and images.shape[-2:] != (config.train_size, config.train_size):
        images = F.interpolate(images, size=(config.train_size,) * 2, mode="bilinear", antialias=True,
                               align_corners=False)
    if config.hflip:
        coin = torch.Generator().manual_seed(config.seed * 1000003 + step + 1)
        if torch.rand(1, generator=coin).item() < 0.5:
            images = images.flip(3)
    return images
