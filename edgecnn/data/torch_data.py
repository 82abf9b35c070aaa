"""Image data as torch tensors: batches for calibration/evaluation, a Dataset for fine-tuning.

Built on :mod:`edgecnn.data.images` (same layouts, same preprocessing); training adds the
usual light augmentation: random crop after the resize, and horizontal flips.
"""

from __future__ import annotations

from typing import Iterator, Optional

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from edgecnn.data.images import ImageFolder, iter_batches, open_image
from edgecnn.preprocess import Preprocess


def torch_batches(
    dataset: ImageFolder, preprocess: Preprocess, batch_size: int = 32, limit: Optional[int] = None
) -> Iterator[tuple[torch.Tensor, Optional[torch.Tensor]]]:
    """Like :func:`edgecnn.data.images.iter_batches`, yielding (float32 NCHW tensor, int64 labels or None)."""
    for images, labels in iter_batches(dataset, preprocess, batch_size, limit=limit):
        yield torch.from_numpy(images), (torch.from_numpy(labels) if labels is not None else None)


def calibration_batches(
    dataset: ImageFolder, preprocess: Preprocess, num_images: int = 256, batch_size: int = 32
) -> list[torch.Tensor]:
    """Input tensors only, spread over the classes (every k-th image), for calibration.

    Taking every k-th image instead of the first ``num_images`` avoids calibrating on a
    handful of classes when the folder is sorted by class.
    """
    count = min(num_images, len(dataset))
    step = max(1, len(dataset) // max(1, count))
    subset = _Subset(dataset, list(range(0, len(dataset), step))[:count])
    return [images for images, _ in torch_batches(subset, preprocess, batch_size)]


class _Subset:
    """A view of some items of an ImageFolder (same interface for iter_batches)."""

    def __init__(self, dataset: ImageFolder, indices: list[int]):
        self.dataset, self.indices = dataset, indices

    @property
    def labelled(self) -> bool:
        return self.dataset.labelled

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int):
        return self.dataset[self.indices[i]]


class ImageDataset(Dataset):
    """A torch Dataset of (image tensor CHW, label) pairs; label is -1 for unlabelled images.

    With ``train=True``: the image is resized as the preprocessing says, then a random
    ``crop`` x ``crop`` window is taken (instead of the centre) and flipped horizontally with
    probability 0.5. ``seed`` makes the augmentation reproducible per epoch via
    :meth:`set_epoch`.
    """

    def __init__(self, dataset: ImageFolder, preprocess: Preprocess, train: bool = False, flip: bool = True, seed: int = 0):
        self.dataset = dataset
        self.preprocess = preprocess
        self.train = train
        self.flip = flip
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        path, label = self.dataset[index]
        image = open_image(path)
        if self.train:
            array = self._augment(image, np.random.default_rng((self.seed, self.epoch, index)))
        else:
            array = self.preprocess.apply(image)
        return torch.from_numpy(array), (-1 if label is None else int(label))

    def _augment(self, image, rng: np.random.Generator) -> np.ndarray:
        from PIL import Image

        p = self.preprocess
        if p.resize_mode == "warp":
            image = image.resize((p.resize, p.resize), Image.BILINEAR)
        else:
            width, height = image.size
            scale = p.resize / min(width, height)
            image = image.resize((max(1, int(width * scale)), max(1, int(height * scale))), Image.BILINEAR)
        width, height = image.size
        crop_w, crop_h = min(p.crop, width), min(p.crop, height)
        left = int(rng.integers(0, width - crop_w + 1))
        top = int(rng.integers(0, height - crop_h + 1))
        image = image.crop((left, top, left + crop_w, top + crop_h))
        if image.size != (p.input_size, p.input_size):
            image = image.resize((p.input_size, p.input_size), Image.BILINEAR)
        array = np.asarray(image, dtype=np.uint8)
        if self.flip and rng.random() < 0.5:
            array = array[:, ::-1]
        return p.normalize(array)


def make_loader(
    dataset: ImageFolder,
    preprocess: Preprocess,
    batch_size: int = 32,
    train: bool = False,
    shuffle: Optional[bool] = None,
    num_workers: int = 0,
    seed: int = 0,
) -> DataLoader:
    """A DataLoader over :class:`ImageDataset` (shuffled and augmented when ``train``)."""
    generator = torch.Generator().manual_seed(seed)
    return DataLoader(
        ImageDataset(dataset, preprocess, train=train, seed=seed),
        batch_size=batch_size,
        shuffle=train if shuffle is None else shuffle,
        num_workers=num_workers,
        generator=generator,
        drop_last=False,
    )
