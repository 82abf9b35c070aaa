"""The embedded offline default: the UCI handwritten digits and a baseline trained on them.

With no ``--weights`` (a fresh install, maybe offline) there are no ImageNet weights, yet a
compression run must still report a real latency, size and accuracy. So edgecnn ships a
small licence-clean labelled dataset (``digits.csv.gz``, see ``DIGITS-README.md``), writes
it once as image folders in the user cache, and trains a baseline of the requested
architecture on it (seeded, CPU, small input), cached by model, options and dataset hash.
Everything after that reads the folders like any user data, so the embedded default runs
the very same code path as a real ImageNet run.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np

from edgecnn.errors import UserError
from edgecnn.fileio import atomic_dir, save_atomic

DIGITS_FILE = Path(__file__).with_name("digits.csv.gz")
DATASET_NAME = "uci-digits"
NUM_CLASSES = 10
TEST_FRACTION = 0.2
SPLIT_SEED = 0
# Mean/std of the digits images after scaling to 0..1 (computed on the train split; the
# same value on R, G and B since the images are grey).
DIGITS_MEAN = 0.31
DIGITS_STD = 0.38
NOTE = (
    "no --weights given: using the embedded digits baseline (UCI handwritten digits, "
    "CC BY 4.0; {model} trained here on {n_train} images at {size}x{size} px, {classes} classes); "
    "accuracy is on digits, not ImageNet"
)


def cache_root() -> Path:
    """$EDGECNN_CACHE, else ~/.cache/edgecnn (XDG_CACHE_HOME respected)."""
    env = os.environ.get("EDGECNN_CACHE")
    if env:
        return Path(env).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "edgecnn"


def dataset_hash() -> str:
    """sha256 (first 16 hex digits) of the shipped dataset file: part of every cache key."""
    return hashlib.sha256(DIGITS_FILE.read_bytes()).hexdigest()[:16]


def load_digits() -> tuple[np.ndarray, np.ndarray]:
    """Images as uint8 (N, 8, 8) scaled to 0..255, labels as int64 (N,)."""
    with gzip.open(DIGITS_FILE, "rt") as fh:
        table = np.loadtxt(fh, delimiter=",", dtype=np.float64)
    pixels = np.clip(np.rint(table[:, :-1] * (255.0 / 16.0)), 0, 255).astype(np.uint8)
    return pixels.reshape(-1, 8, 8), table[:, -1].astype(np.int64)


def split_indices(labels: np.ndarray, test_fraction: float = TEST_FRACTION, seed: int = SPLIT_SEED):
    """A fixed stratified split: the same ``test_fraction`` of every class is held out."""
    rng = np.random.RandomState(seed)
    train, test = [], []
    for cls in np.unique(labels):
        idx = np.flatnonzero(labels == cls)
        rng.shuffle(idx)
        n_test = int(round(len(idx) * test_fraction))
        test.extend(idx[:n_test].tolist())
        train.extend(idx[n_test:].tolist())
    return np.array(sorted(train)), np.array(sorted(test))


@dataclass(frozen=True)
class DigitsFolders:
    """The digits written as image folders: ``train`` (training + calibration), ``test``."""

    root: Path
    train: Path
    test: Path
    n_train: int
    n_test: int


def materialize(cache: Optional[Path] = None) -> DigitsFolders:
    """Write the digits once as PNG folders ``<cache>/datasets/digits-<hash>/{train,test}/<d>/``.

    Written into a temporary folder and renamed, so an interrupted run never leaves a
    half-written dataset that later runs would trust.
    """
    from PIL import Image

    root = (cache or cache_root()) / "datasets" / f"digits-{dataset_hash()}"
    marker = root / "done.json"
    if marker.is_file():
        info = json.loads(marker.read_text())
        return DigitsFolders(root, root / "train", root / "test", info["n_train"], info["n_test"])
    root.parent.mkdir(parents=True, exist_ok=True)
    images, labels = load_digits()
    train_idx, test_idx = split_indices(labels)
    with atomic_dir(root) as tmp:
        for split, indices in (("train", train_idx), ("test", test_idx)):
            for d in range(NUM_CLASSES):
                (tmp / split / str(d)).mkdir(parents=True)
            (tmp / split / "classes.txt").write_text("".join(f"{d} digit_{d}\n" for d in range(NUM_CLASSES)))
            for i in indices:
                Image.fromarray(images[i], mode="L").convert("RGB").save(tmp / split / str(labels[i]) / f"{i:04d}.png")
        (tmp / "done.json").write_text(json.dumps({"n_train": len(train_idx), "n_test": len(test_idx)}))
    return DigitsFolders(root, root / "train", root / "test", len(train_idx), len(test_idx))


def digits_preprocess(input_size: int):
    """Warp the 8x8 digit to ``input_size`` (bilinear), RGB, normalised with the digits' statistics."""
    from edgecnn.preprocess import Preprocess

    return Preprocess(
        input_size=input_size,
        resize=input_size,
        resize_mode="warp",
        crop=input_size,
        mean=(DIGITS_MEAN,) * 3,
        std=(DIGITS_STD,) * 3,
        channel_order="RGB",
        value_scale=1.0 / 255.0,
    )


@dataclass
class Baseline:
    """A trained digits baseline: the module plus what the report says about it."""

    module: object
    preprocess: object
    folders: DigitsFolders
    key: str
    cached: bool
    train_seconds: float
    torch_top1: float
    description: str


def _load_split(folder: Path, preprocess, limit: Optional[int] = None):
    """All images of a split as one float32 tensor (small: ~1400 images) and int64 labels."""
    import torch

    from edgecnn.data.images import ImageFolder, iter_batches

    xs, ys = [], []
    for x, y in iter_batches(ImageFolder(folder), preprocess, 256):
        xs.append(x)
        ys.append(y)
    x = torch.from_numpy(np.concatenate(xs))
    y = torch.from_numpy(np.concatenate(ys))
    if limit:
        x, y = x[:limit], y[:limit]
    return x, y


def baseline_key(model_name: str, options: dict, input_size: int, epochs: int, seed: int, max_train_images: Optional[int]) -> str:
    import torch

    from edgecnn import __version__

    payload = json.dumps(
        {
            "model": model_name,
            "options": options,
            "input_size": input_size,
            "epochs": epochs,
            "seed": seed,
            "max_train_images": max_train_images,
            "dataset": dataset_hash(),
            "edgecnn": __version__,
            "torch": torch.__version__.split("+")[0],
            "trainer": TRAINER,
        },
        sort_keys=True,
        default=str,
    )
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


# How the baseline is trained (part of the cache key): one thread, channels-last activations.
# Two OpenMP threads on a 2-core machine that is doing anything else spin-wait for each
# other at every layer (a SqueezeNet step took 25x longer than on one thread), and
# channels-last convolutions train faster on one core; timings in bench/results/quickstart.md.
TRAINER = "1thread-channels_last"


def _fit(module, x_train, y_train, epochs: int, seed: int, progress):
    """The seeded training loop of :func:`train_baseline` (see TRAINER); returns the last loss."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        module.to(memory_format=torch.channels_last)
        return _fit_loop(module, x_train.contiguous(memory_format=torch.channels_last), y_train, epochs, seed, progress)
    finally:
        module.to(memory_format=torch.contiguous_format)
        torch.set_num_threads(threads)


def _fit_loop(module, x_train, y_train, epochs: int, seed: int, progress):
    import torch
    import torch.nn.functional as F

    gen = torch.Generator().manual_seed(seed)
    batch = 64
    steps_per_epoch = max(1, (len(x_train) + batch - 1) // batch)
    optimizer = torch.optim.AdamW(module.parameters(), lr=1e-3, weight_decay=1e-4)
    total_steps = epochs * steps_per_epoch
    if total_steps >= 8:
        # One-cycle (warm-up to 1e-3, anneal to ~0): SqueezeNet has no BatchNorm and trains
        # to a clearly better test split with it than with warm-up + cosine.
        schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=1e-3, total_steps=total_steps, pct_start=0.25)
    else:  # a few steps (tests): one-cycle cannot split them into phases
        schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    module.train()
    for epoch in range(epochs):
        order = torch.randperm(len(x_train), generator=gen)
        for s in range(steps_per_epoch):
            idx = order[s * batch : (s + 1) * batch]
            loss = F.cross_entropy(module(x_train[idx]), y_train[idx], label_smoothing=0.05)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
        if progress is not None:
            progress(epoch + 1, epochs, f"loss {loss.item():.3f}")
    return loss


def train_baseline(
    build_model,
    model_name: str,
    options: dict,
    input_size: int = 48,
    epochs: int = 10,
    seed: int = 0,
    max_train_images: Optional[int] = None,
    progress=None,
    cache: Optional[Path] = None,
) -> Baseline:
    """Train (or load from the cache) ``build_model()`` (10 classes) on the digits train split.

    ``build_model`` returns a freshly initialised module with ``NUM_CLASSES`` outputs;
    ``progress(done, total, text)`` is called once per epoch. Seeded and single-process, so
    the same key gives the same weights on the same torch build.
    """
    import time

    import torch

    cache = cache or cache_root()
    folders = materialize(cache)
    preprocess = digits_preprocess(input_size)
    key = baseline_key(model_name, options, input_size, epochs, seed, max_train_images)
    path = cache / "baselines" / f"{model_name}-{key}.pt"
    desc = NOTE.format(model=model_name, n_train=min(folders.n_train, max_train_images or folders.n_train), size=input_size, classes=NUM_CLASSES)

    torch.manual_seed(seed)
    module = build_model()
    if path.is_file():
        try:
            saved = torch.load(path, map_location="cpu", weights_only=True)
            module.load_state_dict(saved["state_dict"])
            module.eval()
            return Baseline(module, preprocess, folders, key, True, saved["train_seconds"], saved["top1"], desc)
        except Exception:  # a corrupt or stale cache entry is retrained, not trusted
            path.unlink(missing_ok=True)
            torch.manual_seed(seed)
            module = build_model()

    start = time.perf_counter()
    x_train, y_train = _load_split(folders.train, preprocess, max_train_images)
    x_test, y_test = _load_split(folders.test, preprocess)
    loss = _fit(module, x_train, y_train, epochs, seed, progress)
    module.eval()
    with torch.no_grad():
        pred = torch.cat([module(x_test[i : i + 256]).argmax(1) for i in range(0, len(x_test), 256)])
    top1 = float((pred == y_test).float().mean()) * 100.0
    seconds = time.perf_counter() - start
    if not np.isfinite(loss.item()):
        raise UserError(f"training the digits baseline of {model_name} diverged (loss {loss.item()}); try another --seed or input size")

    path.parent.mkdir(parents=True, exist_ok=True)
    state = {"state_dict": module.state_dict(), "train_seconds": seconds, "top1": top1, "key": key}
    save_atomic(path, lambda tmp: torch.save(state, tmp))
    return Baseline(module, preprocess, folders, key, False, seconds, top1, desc)
