"""Data for a search: the search part as arrays, calibration batches, and the recovery trainer."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from edgecnn.data.images import ImageFolder, is_image, iter_batches, load_image
from edgecnn.data.reserve import Reserved, reserved_photos, without_reserved
from edgecnn.errors import UserError
from edgecnn.models.layer_select import block_outputs
from edgecnn.search.proxy import ChooseSet, decode
from edgecnn.search.run import SearchConfig, SearchData
from edgecnn.train.cached_teacher import RecoveryConfig, TeacherCache, distill_cached, image_key, matching_layers


def arrays(items: list, preprocess, limit: Optional[int] = None) -> tuple[np.ndarray, np.ndarray]:
    """(N x 3 x H x W float32, labels) of (path, label) items, spread evenly when ``limit`` is set.

    The items are read as given (no list file in a work folder), so relative paths mean
    what they meant where the user typed them."""
    if limit is not None and limit < len(items):
        step = len(items) / limit
        items = [items[int(i * step)] for i in range(limit)]
    xs, ys = [], []
    for x, y in iter_batches(ImageFolder.from_items(items), preprocess, 32, workers=2):
        xs.append(x)
        ys.append(y if y is not None else np.full(len(x), -1))
    return np.concatenate(xs), np.concatenate(ys).astype(np.int64)


class RecoveryImages(torch.utils.data.Dataset):
    """Unlabelled images at the recovery resolution; items are (tensor, image key)."""

    def __init__(self, paths: list[Path], preprocess):
        self.paths, self.preprocess = list(paths), preprocess
        self._keys: dict[int, str] = {}

    def __len__(self) -> int:
        return len(self.paths)

    def key(self, i: int) -> str:
        if i not in self._keys:
            self._keys[i] = image_key(self.paths[i])
        return self._keys[i]

    def __getitem__(self, i: int):
        return torch.from_numpy(load_image(self.paths[i], self.preprocess)), self.key(i)


def recovery_images(root: Path, limit: Optional[int] = None, reserved: Optional[Reserved] = None, log=None) -> list[Path]:
    """Images of a folder (recursively, sorted), every k-th one when ``limit`` is set, never one of
    the ``reserved`` photos the search chooses on (by path before sampling, by content after)."""
    paths = sorted(p for p in Path(root).expanduser().absolute().rglob("*") if p.is_file() and is_image(p))
    if not paths:
        raise UserError(f"'{root}' holds no images; give --train a folder of photos (sub-folders are searched)")
    left_out = 0
    if reserved is not None:
        paths, left_out = without_reserved(paths, reserved, by_content=False)  # by name before sampling: cheap
        if not paths:
            raise UserError(f"every photo of '{root}' is reserved for the choice (--choose-on); give --train other photos "
                            "or a smaller --choose-images")
    if limit is not None and limit < len(paths):
        step = len(paths) / limit
        paths = [paths[int(i * step)] for i in range(limit)]
    if reserved is not None:
        paths, same_bytes = without_reserved(paths, reserved)
        left_out += same_bytes
        if log and left_out:
            log(f"  recovery images: {left_out} photo(s) reserved for the choice left out")
    return paths


def choose_set(config: SearchConfig, preprocess, work: Path) -> Optional[ChooseSet]:
    """The reserved photos of ``config.choose_on``, decoded once (None without ``choose_on``)."""
    if not config.choose_on:
        return None
    return decode(reserved_photos(config.choose_on, config.choose_images), preprocess, work / "choose")


def make_recovery(teacher, paths: list[Path], preprocess, config: SearchConfig, cache_root: Path, work: Path, log=print):
    """A ``(student, steps) -> summary`` trainer: cached-teacher distillation at ``recovery_size``,
    logit KD plus feature matching at the teacher's block outputs (``block_outputs``) that the
    candidate keeps the shape of (pruning a group changes the outputs of the blocks it spans:
    a Fire module's expand convs, a MobileNetV2 residual chain's projections)."""
    small = preprocess.replace(input_size=config.recovery_size)
    dataset = RecoveryImages(paths, small)
    cache = TeacherCache(cache_root, teacher, json.dumps(small.to_dict(), sort_keys=True, default=str),
                         feature_layers=block_outputs(teacher))
    runs = iter(range(10_000))

    def recover(student, steps: int, **overrides) -> dict:
        """``overrides``: other RecoveryConfig fields (e.g. ``dropout=True``)."""
        from edgecnn.passes.hooks import after_step_hooks

        run = next(runs)
        layers = matching_layers(student, cache, dataset[0][0])
        settings = RecoveryConfig(**{"steps": steps, "batch_size": 32, "lr": config.recovery_lr, "feature_layers": layers,
                                     **overrides})
        summary = distill_cached(student, dataset, cache, settings, checkpoint_dir=work / f"recovery-{run}", progress=False,
                                 after_step=after_step_hooks(student))
        summary["feature_layers"] = f"{len(layers)} of {len(cache.layers)} block outputs"
        return {**summary, "images": len(dataset), "size": config.recovery_size}

    return recover


def search_data(items: list, preprocess, calib_images: int, limit: Optional[int] = None) -> SearchData:
    images, labels = arrays(items, preprocess, limit)
    if (labels < 0).all():
        raise UserError("the search images carry no labels; give a labelled folder (class sub-folders) to --data")
    step = max(1, len(images) // calib_images)
    calib = images[::step][:calib_images]
    batches = [torch.from_numpy(calib[i:i + 16]) for i in range(0, len(calib), 16)]
    return SearchData(images, labels, batches)
