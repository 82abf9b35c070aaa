"""Distillation from cached teacher outputs: the teacher runs once per image, ever.

Recovery after pruning / shift / low-bit quantization trains on thousands of unlabelled
photos for several epochs; the teacher's forward is a third of each step, and the same on
every epoch and every candidate of a search. So its outputs are stored on disk, one float16
file per image, in a folder named by the *teacher fingerprint* (SHA-256 of its weights), the
*preprocessing* key and, when features are cached, the *set of feature layers*; each file is
named by the image key (SHA-256 of the file's bytes, :func:`image_key`). A changed teacher,
preprocessing, layer list or image never reads a stale entry.

The loss is ``logit_weight`` x KL at ``temperature`` (Hinton) plus ``feature_weight`` x the
feature loss of ``finetune`` (:func:`edgecnn.train.losses.feature_loss`: per layer, MSE to the
teacher's output over the teacher's mean square, summed), at the modules named in
``feature_layers``. Those must be cached, exist in the student and have the same output
shape there as in the teacher, else a UserError: :func:`matching_layers` picks the cached
layers a transformed student still matches (pruning a group changes the outputs of the
blocks it spans).

No augmentation: the cached outputs are those of exactly the pixels the student sees.
:func:`distill_cached` is resumable (checkpoint = weights, optimizer, schedule, step, RNG
states; the batch order depends only on seed and epoch) and shows progress. What earlier
transforms put in the student (pruning masks, shared weights, fake-quant ranges) is kept
by the ``after_step`` callables the caller passes (run after every optimizer step).
"""

from __future__ import annotations

import hashlib
import math
import shutil
import time
from pathlib import Path
from typing import Callable, Optional, Sequence, Union

import numpy as np
import torch
import torch.nn as nn
from pydantic import BaseModel, ConfigDict, Field

from edgecnn.errors import UserError
from edgecnn.fileio import save_atomic
from edgecnn.train.losses import FeatureTaps, feature_loss, kd_loss
from edgecnn.train.runtime import set_train_mode, write_checkpoint

CHECKPOINT = "recovery.pt"
LOGITS = "logits"


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
    """Teacher outputs on disk, one file per image.

    Logits only: ``root/<teacher fingerprint>-<preprocessing hash>/<image key>.npy``.
    With ``feature_layers``: ``root/<fingerprint>-<preprocessing hash>-f<layer set hash>/<image
    key>.npz`` holding ``logits`` and ``feature:<layer>`` (float16, one image each, so a batch
    loads only its own images)."""

    def __init__(self, root: Union[str, Path], teacher: nn.Module, preprocess_key: str,
                 feature_layers: Sequence[str] = ()):
        self.teacher = teacher.eval()
        self.layers = sorted(set(feature_layers))
        FeatureTaps(teacher, self.layers, "teacher").remove()  # unknown names: a UserError now
        name = f"{model_fingerprint(teacher)}-{hashlib.sha256(preprocess_key.encode()).hexdigest()[:12]}"
        if self.layers:
            name += "-f" + hashlib.sha256("\n".join(self.layers).encode()).hexdigest()[:12]
        self.folder = Path(root) / name
        self.folder.mkdir(parents=True, exist_ok=True)

    def path(self, key: str) -> Path:
        return self.folder / f"{key}{'.npz' if self.layers else '.npy'}"

    def get(self, key: str) -> np.ndarray:
        """The teacher's logits for one image (float32)."""
        return self.load(key)[0]

    def load(self, key: str) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """(logits as float32, {layer: output, float16 (float32 where that overflows)}) of one image."""
        if not self.layers:
            return np.load(self.path(key)).astype(np.float32), {}
        with np.load(self.path(key)) as stored:
            return stored[LOGITS].astype(np.float32), {n: stored[f"feature:{n}"] for n in self.layers}

    @torch.no_grad()
    def fill(self, dataset, batch_size: int = 32, progress: bool = True) -> int:
        """Compute and store the outputs for every image of ``dataset`` (items ``(image, key)``)
        not cached yet; returns how many were computed."""
        missing = [i for i in range(len(dataset)) if not self.path(dataset.key(i)).exists()]
        if not missing:
            return 0
        taps = FeatureTaps(self.teacher, self.layers, "teacher")
        bar = _bar(progress, "teacher outputs", len(missing))
        try:
            for start in range(0, len(missing), batch_size):
                items = [dataset[i] for i in missing[start:start + batch_size]]
                logits = self.teacher(torch.stack([x for x, _ in items]))
                for i, (_, key) in enumerate(items):
                    row = {LOGITS: _half(logits[i])}
                    row.update({f"feature:{n}": _half(taps.outputs[n][i]) for n in self.layers})
                    if start == 0 and i == 0:
                        _check_disk(self.folder, sum(a.nbytes for a in row.values()), len(missing))
                    save_atomic(self.path(key), lambda p, row=row: _save_row(p, row))
                bar.advance(len(items))
        finally:
            taps.remove()
            bar.close()
        return len(missing)


def _half(tensor: torch.Tensor) -> np.ndarray:
    """float16, or float32 where float16 would overflow (large activations of a Caffe-scaled net)."""
    array = tensor.float().numpy()
    with np.errstate(over="ignore"):
        half = array.astype(np.float16)
    return half if np.isfinite(half).all() or not np.isfinite(array).all() else array


def _save_row(path: Path, row: dict) -> None:
    with open(path, "wb") as handle:  # a file object: np.save would append ".npy" to the temp name
        if len(row) == 1:
            np.save(handle, row[LOGITS], allow_pickle=False)
        else:
            np.savez(handle, **row)


def _check_disk(folder: Path, per_image: int, images: int) -> None:
    need, free = per_image * images, shutil.disk_usage(folder).free
    if need > free * 0.9:
        raise UserError(f"the teacher cache needs about {need / 1e9:.1f} GB for {images} images "
                        f"({per_image / 1e6:.2f} MB each) but '{folder}' has {free / 1e9:.1f} GB free; "
                        f"free space there, or use fewer recovery images or feature layers")


@torch.no_grad()
def matching_layers(student: nn.Module, cache: TeacherCache, image: torch.Tensor) -> list[str]:
    """The cached feature layers that ``student`` has with the teacher's output shape (one
    image through both): the layers a transformed student can still be matched at."""
    modules = dict(student.named_modules())
    names = [n for n in cache.layers if n in modules]
    shapes = []
    for model, role in ((cache.teacher, "teacher"), (student, "student")):
        taps, was_training = FeatureTaps(model, names, role), model.training
        try:
            model.eval()
            model(image[None])
        finally:
            taps.remove()
            model.train(was_training)
        shapes.append({n: tuple(t.shape) for n, t in taps.outputs.items()})
    return [n for n in names if shapes[0][n] == shapes[1][n]]


class RecoveryConfig(BaseModel):
    """Hyper-parameters of a cached-teacher recovery run."""

    model_config = ConfigDict(extra="forbid")
    steps: int = Field(300, ge=1)
    batch_size: int = Field(32, ge=1)
    lr: float = Field(1e-4, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    temperature: float = Field(2.0, gt=0)
    logit_weight: float = Field(1.0, ge=0, description="weight of the logit KD loss; 0 trains on feature_layers alone")
    feature_layers: list[str] = Field(
        default_factory=list,
        description="modules whose outputs the student matches to the cached teacher's (cached, same output shape)")
    feature_weight: float = Field(1.0, ge=0, description="weight of the summed normalised feature MSE (as finetune's)")
    seed: int = 0
    checkpoint_every: int = Field(50, ge=1)
    freeze_bn: bool = True  # small batches of skewed photos: keep the BN statistics of the original
    dropout: bool = Field(False, description="keep dropout active; off by default: the cached targets are the teacher's "
                                            "deterministic outputs, so dropout only adds noise to the match")


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


def _feature_layers(config: RecoveryConfig, cache: TeacherCache) -> list[str]:
    """The layers to match (none with feature_weight 0); each must be in the cache."""
    layers = list(dict.fromkeys(config.feature_layers)) if config.feature_weight > 0 else []
    absent = [n for n in layers if n not in cache.layers]
    if absent:
        held = ", ".join(cache.layers) or "logits only"
        raise UserError(f"feature layer(s) {', '.join(absent)} not in the teacher cache (it holds: {held}); "
                        f"build the TeacherCache with feature_layers that include them")
    if config.logit_weight == 0 and not layers:
        raise UserError("logit_weight 0 leaves nothing to train on; give feature_layers or raise logit_weight")
    return layers


class _Recovery:
    """Optimizer, schedule, step and recent losses of one run; saved and restored whole."""

    def __init__(self, student: nn.Module, config: RecoveryConfig, checkpoint_dir):
        self.student, self.config = student, config
        torch.manual_seed(config.seed)
        params = [p for p in student.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
        cosine = lambda s: 0.5 * (1 + math.cos(math.pi * min(1.0, s / config.steps)))  # noqa: E731
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, cosine)
        self.ckpt = Path(checkpoint_dir) / CHECKPOINT if checkpoint_dir is not None else None
        self.step, self.losses, self.parts = 0, [], []  # parts: (logit, feature) per recent step

    def restore(self) -> None:
        if self.ckpt is None or not self.ckpt.is_file():
            raise UserError(f"no recovery checkpoint at '{self.ckpt}'; run once without resume")
        state = torch.load(self.ckpt, weights_only=False)
        saved = RecoveryConfig(**state.get("config", {})).model_dump(exclude={"checkpoint_every"})
        changed = sorted(k for k, v in self.config.model_dump(exclude={"checkpoint_every"}).items() if saved[k] != v)
        if changed:
            raise UserError(f"recovery checkpoint '{self.ckpt}' was written with other {', '.join(changed)}; "
                            f"resume with the same settings, or start again without resume")
        self.student.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.step, self.losses, self.parts = state["step"], state["losses"], state.get("parts", [])
        torch.set_rng_state(state["rng"])

    def save(self) -> None:
        if self.ckpt is not None:
            write_checkpoint({"model": self.student.state_dict(), "optimizer": self.optimizer.state_dict(),
                              "scheduler": self.scheduler.state_dict(), "step": self.step, "losses": self.losses,
                              "parts": self.parts, "rng": torch.get_rng_state(), "config": self.config.model_dump()},
                             self.ckpt)

    def train_step(self, images, target, features: dict, taps: Optional[FeatureTaps]) -> None:
        config, t = self.config, self.config.temperature
        logits = self.student(images)
        logit, _ = kd_loss(logits, target, None, t, alpha=1.0)  # unlabelled: the soft term alone
        loss, feature = config.logit_weight * logit, None
        if taps is not None:
            feature = feature_loss({n: taps.outputs[n] for n in features}, features)
            loss = loss + config.feature_weight * feature
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        self.scheduler.step()
        self.step += 1
        self.losses = (self.losses + [float(loss.detach())])[-20:]
        self.parts = (self.parts + [(float(logit.detach()), None if feature is None else float(feature.detach()))])[-20:]

    def summary(self) -> dict:
        mean = lambda values: float(np.mean(values)) if values else None  # noqa: E731
        out = {"loss": mean(self.losses), "logit_loss": mean([p[0] for p in self.parts])}
        features = [p[1] for p in self.parts if p[1] is not None]
        if features:
            out["feature_loss"] = mean(features)
        return out


def _load_batch(dataset, cache: TeacherCache, indices: list[int], layers: list[str]):
    """Images, teacher logits and teacher features (float32) of one batch, read from the cache."""
    items = [dataset[i] for i in indices]
    stored = [cache.load(k) for _, k in items]
    target = torch.from_numpy(np.stack([logits for logits, _ in stored]))
    features = {n: torch.from_numpy(np.stack([f[n] for _, f in stored]).astype(np.float32)) for n in layers}
    return torch.stack([x for x, _ in items]), target, features


def distill_cached(student: nn.Module, dataset, cache: TeacherCache, config: Optional[RecoveryConfig] = None,
                   checkpoint_dir=None, resume: bool = False, stop_after: Optional[int] = None,
                   after_step: Sequence[Callable[[nn.Module], None]] = (), progress: bool = True) -> dict:
    """Train ``student`` in place to match the cached teacher: logit KD plus, at
    ``config.feature_layers``, the normalised feature MSE.

    ``dataset[i] -> (image tensor, key)``, ``dataset.key(i) -> key``. Returns
    ``{"steps", "loss", "logit_loss", "feature_loss" (with features; means of the last 20
    steps), "feature_layers", "seconds", "finished"}``.
    """
    config = config or RecoveryConfig()
    if len(dataset) == 0:
        raise UserError("the recovery images are empty; give --train a folder with images")
    layers = _feature_layers(config, cache)
    taps = FeatureTaps(student, layers, "student") if layers else None
    bar = None
    try:
        cache.fill(dataset, progress=progress)
        run = _Recovery(student, config, checkpoint_dir)
        if resume:
            run.restore()
        per_epoch = len(_batch_order(len(dataset), config.batch_size, config.seed, 0))
        bar = _bar(progress, "recovery", config.steps)
        bar.advance(run.step)
        started = time.perf_counter()
        set_train_mode(student, config.freeze_bn)
        if not config.dropout:
            for module in student.modules():
                if isinstance(module, nn.modules.dropout._DropoutNd):
                    module.eval()
        while run.step < config.steps and (stop_after is None or run.step < stop_after):
            epoch, offset = divmod(run.step, per_epoch)
            batch = _batch_order(len(dataset), config.batch_size, config.seed, epoch)[offset]
            run.train_step(*_load_batch(dataset, cache, batch, layers), taps)
            for hook in after_step:
                hook(student)
            bar.advance(1, description=f"recovery, loss {run.losses[-1]:.4f}")
            if run.step % config.checkpoint_every == 0 or run.step == config.steps:
                run.save()
        if stop_after is not None and run.step < config.steps:
            run.save()
    finally:
        if bar is not None:
            bar.close()
        if taps is not None:
            taps.remove()
    student.eval()
    return {"steps": run.step, **run.summary(), "feature_layers": layers,
            "seconds": round(time.perf_counter() - started, 1), "finished": run.step >= config.steps}
