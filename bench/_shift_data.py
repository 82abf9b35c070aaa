"""bench/shift_distill.py's images: the training set (decoded once into a uint8 cache, random
crops and flips per pass), short epochs over a long pass, and the evaluation set."""

from __future__ import annotations

import csv
import hashlib
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch


class CachedCrops(torch.utils.data.Dataset):
    """Images decoded once (shorter side ``resize``, centre ``resize`` square, uint8); random
    ``crop`` windows + flips per (seed, pass, index), normalised on the fly. With ``cache`` the
    decoded array is kept in that .npy file and reused by later runs on the same images."""

    def __init__(self, paths, labels, preprocess, resize: int, crop: int, seed: int = 0, cache=None):
        self.preprocess = preprocess.replace(input_size=resize, resize=resize, crop=resize)
        if cache is not None and Path(cache).is_file():
            self.images = np.load(cache, mmap_mode="r")
        else:
            self.images = np.stack([_square(p, resize) for p in paths])
            if cache is not None:
                from edgecnn.fileio import save_atomic

                Path(cache).parent.mkdir(parents=True, exist_ok=True)
                save_atomic(cache, _npy_writer(self.images))
        if len(self.images) != len(paths):
            raise SystemExit(f"cache {cache} holds {len(self.images)} images, not {len(paths)}; delete it")
        self.labels = labels
        self.crop, self.seed, self.epoch = crop, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self):
        return len(self.images)

    def __getitem__(self, index):
        return self.item(index, self.epoch)

    def item(self, index: int, data_pass: int):
        rng = np.random.default_rng((self.seed, data_pass, index))
        image = self.images[index]
        top, left = rng.integers(0, image.shape[0] - self.crop + 1, size=2)
        window = image[top: top + self.crop, left: left + self.crop]
        if rng.random() < 0.5:
            window = window[:, ::-1]
        return torch.from_numpy(self.preprocess.normalize(np.ascontiguousarray(window))), int(self.labels[index])


def _npy_writer(array: np.ndarray):
    """A ``save_atomic`` writer streaming ``array`` as .npy (np.save on a path would append ".npy")."""
    def write(tmp: Path) -> None:
        with open(tmp, "wb") as f:
            np.save(f, array)

    return write


def _square(path, size: int) -> np.ndarray:
    """Shorter side resized to ``size`` (PIL default filter), centre square, uint8 HWC."""
    from edgecnn.data.images import open_image

    image = open_image(path)
    width, height = image.size
    scale = size / min(width, height)
    image = image.resize((max(size, round(width * scale)), max(size, round(height * scale))))
    left, top = (image.size[0] - size) // 2, (image.size[1] - size) // 2
    return np.asarray(image.crop((left, top, left + size, top + size)), dtype=np.uint8)


class Chunks(torch.utils.data.Dataset):
    """``per_epoch`` images per epoch of the distillation loop, walking through one fixed
    shuffle of ``base``: a long pass over many images is cut into short epochs, each ending
    with an evaluation. Pass p over the data draws its crops with seed p."""

    def __init__(self, base: CachedCrops, per_epoch: int, seed: int = 0):
        self.base, self.per_epoch = base, min(per_epoch, len(base))
        self.order = np.random.default_rng(seed).permutation(len(base))
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self):
        return self.per_epoch

    def __getitem__(self, i):
        g = self.epoch * self.per_epoch + i
        return self.base.item(int(self.order[g % len(self.base)]), g // len(self.base))


class Eval(torch.utils.data.Dataset):
    def __init__(self, paths, labels, preprocess):
        from edgecnn.data.images import load_image

        self.x = torch.from_numpy(np.stack([load_image(p, preprocess) for p in paths]))
        self.y = torch.as_tensor(labels)

    def __len__(self):
        return len(self.y)

    def __getitem__(self, i):
        return self.x[i], self.y[i]


def train_data(teacher, data) -> tuple:
    """(training dataset, 16 calibration images at 224 px) from ``data``'s training images."""
    from edgecnn.data.images import load_image

    paths, labels = data.paths, data.labels
    if data.distill:
        base = CachedCrops(paths, labels, teacher.preprocess, round(data.size * 256 / 224), data.size, cache=data.cache)
    else:
        base = CachedCrops(paths, labels, teacher.preprocess, 256, 224)
    trainset = Chunks(base, data.epoch_images) if data.epoch_images else base
    # Least-squares initialisation of the kept weights on 16 training images (never eval ones).
    calib = torch.from_numpy(np.stack([load_image(p, teacher.preprocess) for p in spread(paths, 16, 48)]))
    return trainset, calib


def spread(paths, n: int, step: int = 0) -> list:
    """``n`` of ``paths``: every ``step``-th one, or spread evenly over all of them (step 0)."""
    if step:
        return list(paths[::step][:n])
    return [paths[int(i * len(paths) / n)] for i in range(min(n, len(paths)))]


def training_data(args, items, data_dir: Path) -> SimpleNamespace:
    """The training images: the 766 non-evaluation sample images, or ``--distill-images`` photos."""
    common = {"epoch_images": args.epoch_images, "lr": args.lr}
    if not args.distill_images:
        train_items = [it for i, it in enumerate(items) if i % 3 != 0][:args.limit or None]
        return SimpleNamespace(distill=False, paths=[p for p, _ in train_items], labels=[y for _, y in train_items],
                               size=224, cache=None, label=f"{len(train_items)} sample images (index % 3 != 0), "
                               "random 224 crops of 256 px + flips", **common)
    rows = list(csv.DictReader(open(data_dir / "distill-manifest.csv")))
    rows = spread(rows, min(args.distill_images, args.limit or args.distill_images))
    paths = [data_dir / "distill" / r["relpath"] for r in rows]
    resize = round(args.train_size * 256 / 224)
    key = hashlib.sha256(("\n".join(map(str, paths)) + f"|{resize}").encode()).hexdigest()[:12]
    cache = Path(args.cache_dir) / f"distill-{len(paths)}-{resize}-{key}.npy"
    # Teacher outputs only (feature matching): the Imagenette folder labels are not used.
    return SimpleNamespace(distill=True, paths=paths, labels=[-1] * len(paths), size=args.train_size, cache=cache,
                           label=f"{len(paths)} distill/ photos (no labels), random {args.train_size} crops of "
                           f"{resize} px + flips", **common)
