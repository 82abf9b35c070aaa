"""Labelled or unlabelled images from a folder or a list file, as numpy batches (no torch).

Accepted layouts:

* ``root/<class>/<image>``: one sub-folder per class. Class indices come from a
  ``classes.txt`` (``<synset> <words>`` per line, line i = class i) in ``root`` or its parent,
  else from the sorted folder names.
* ``root/<image>``: a flat folder, unlabelled (labels are None).
* a list file: one image path per line (relative to the list file), optionally followed by
  an integer label after whitespace.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Iterator, Optional, Union

import numpy as np

from edgecnn.errors import UserError

IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".ppm", ".pgm", ".tif", ".tiff", ".gif"}
CLASSES_FILE = "classes.txt"


def is_image(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_EXTENSIONS and not path.name.startswith(".")


def read_classes_file(path: Path) -> tuple[list[str], list[str]]:
    """(class ids, readable names) from ``<id> <words>`` lines; line i is class i."""
    ids, names = [], []
    for line in path.read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if not line:
            continue
        ident, _, words = line.partition(" ")
        ids.append(ident)
        names.append(words.strip() or ident)
    if not ids:
        raise UserError(f"classes file '{path}' is empty; it needs one '<class id> <words>' line per class")
    return ids, names


class ImageFolder:
    """A list of (image path, label or None), plus class ids and names when known."""

    def __init__(self, root: Union[str, Path], classes_file: Union[str, Path, None] = None):
        self.root = Path(root).expanduser()  # as the user gave it, for messages
        self.classes: Optional[list[str]] = None  # class ids (synsets or folder names), index = label
        self.class_names: Optional[list[str]] = None  # readable names, index = label
        self.classes_file: Optional[Path] = None  # the classes.txt the indices come from, if any
        self.label_source: Optional[str] = None  # how labels were mapped to model outputs (edgecnn.data.labels)
        if classes_file is not None:
            classes_file = Path(classes_file)
            if not classes_file.is_file():
                raise UserError(f"classes file '{classes_file}' does not exist")
        # Items are absolute paths: whatever folder a later step works in, they name the same files.
        where = self.root.absolute()
        try:
            if where.is_file():
                self.items = self._from_list_file(where, classes_file)
            elif where.is_dir():
                self.items = self._from_folder(where, classes_file)
            else:
                raise UserError(f"image folder or list file '{self.root}' does not exist")
        except PermissionError as exc:
            raise UserError(f"cannot read '{exc.filename or self.root}' (permission denied); make it readable") from None
        if not self.items:
            raise UserError(f"'{self.root}' contains no images ({', '.join(sorted(IMAGE_EXTENSIONS))})")

    @classmethod
    def from_items(cls, items: list[tuple[Path, Optional[int]]]) -> "ImageFolder":
        """A set of given (path, label) items, no folder behind it (e.g. one part of a split)."""
        folder = cls.__new__(cls)
        folder.root = Path(os.path.commonpath([str(Path(p).absolute()) for p, _ in items])) if items else Path.cwd()
        folder.classes = folder.class_names = folder.classes_file = folder.label_source = None
        folder.items = [(Path(p).absolute(), label) for p, label in items]
        return folder

    # --- layouts -----------------------------------------------------------------------------

    def _find_classes_file(self, folder: Path, explicit: Optional[Path]) -> Optional[Path]:
        if explicit is not None:
            return explicit
        for candidate in (folder / CLASSES_FILE, folder.parent / CLASSES_FILE):
            if candidate.is_file():
                return candidate
        return None

    def _from_folder(self, root: Path, classes_file: Optional[Path]) -> list[tuple[Path, Optional[int]]]:
        subdirs = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
        class_dirs = [d for d in subdirs if any(is_image(f) for f in d.iterdir())]
        if not class_dirs:
            # A flat folder of images: unlabelled.
            return [(p, None) for p in sorted(root.iterdir()) if p.is_file() and is_image(p)]
        found = self._find_classes_file(root, classes_file)
        if found is not None:
            self.classes, self.class_names = read_classes_file(found)
            self.classes_file = found
            index = {ident: i for i, ident in enumerate(self.classes)}
            unknown = [d.name for d in class_dirs if d.name not in index]
            if unknown:
                raise UserError(
                    f"class folder '{root / unknown[0]}' is not listed in '{found}'; rename it to a class id "
                    "listed there or remove the classes file"
                )
        else:
            self.classes = [d.name for d in class_dirs]
            self.class_names = list(self.classes)
            index = {ident: i for i, ident in enumerate(self.classes)}
        items = []
        for d in class_dirs:
            label = index[d.name]
            items.extend((p, label) for p in sorted(d.iterdir()) if p.is_file() and is_image(p))
        return items

    def _from_list_file(self, path: Path, classes_file: Optional[Path]) -> list[tuple[Path, Optional[int]]]:
        base = path.parent
        items: list[tuple[Path, Optional[int]]] = []
        try:
            lines = path.read_text(encoding="utf-8").splitlines()
        except UnicodeDecodeError:
            raise UserError(f"'{path}' is neither a folder nor a text list file of image paths") from None
        for number, raw in enumerate(lines, 1):
            line = raw.strip()
            if not line or line.startswith("#"):
                continue
            label: Optional[int] = None
            parts = line.rsplit(maxsplit=1)
            if len(parts) == 2 and _is_int(parts[1]):
                line, label = parts[0], int(parts[1])
                if label < 0:
                    raise UserError(f"{path}:{number}: label {label} is negative")
            image = Path(line)
            items.append((image if image.is_absolute() else base / image, label))
        labelled = [label is not None for _, label in items]
        if any(labelled) and not all(labelled):
            missing = labelled.index(False)
            raise UserError(f"list file '{path}': entry {items[missing][0]} has no label while others have; label every line or none")
        found = self._find_classes_file(base, classes_file)
        if found is not None and any(labelled):
            self.classes, self.class_names = read_classes_file(found)
            self.classes_file = found
        return items

    # --- access ------------------------------------------------------------------------------

    @property
    def labelled(self) -> bool:
        return bool(self.items) and self.items[0][1] is not None

    @property
    def num_classes(self) -> Optional[int]:
        if self.classes is not None:
            return len(self.classes)
        if self.labelled:
            return max(label for _, label in self.items) + 1
        return None

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> tuple[Path, Optional[int]]:
        return self.items[index]

    def __repr__(self) -> str:
        kind = f"{self.num_classes} classes" if self.labelled else "unlabelled"
        return f"ImageFolder('{self.root}', {len(self)} images, {kind})"


def _is_int(text: str) -> bool:
    try:
        int(text)
        return True
    except ValueError:
        return False


def first_image(root: Path) -> Optional[Path]:
    """The first image found under ``root`` (any depth), None when there is none; stops at the first."""
    for folder, dirs, files in os.walk(root, onerror=_raise):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(files):
            if is_image(Path(name)):
                return Path(folder) / name
    return None


def _raise(error: OSError) -> None:
    raise error


def open_image(path: Path):
    """The RGB pixels of an image file (:func:`edgecnn.data.decode.to_rgb`); UserError naming
    the file when it cannot be read or its pixels cannot be turned into RGB."""
    from PIL import Image, UnidentifiedImageError

    from edgecnn.data.decode import UnsupportedImage, to_rgb

    try:
        with Image.open(path) as image:
            image.load()
            return to_rgb(image)
    except FileNotFoundError:
        raise UserError(f"image '{path}' does not exist") from None
    except UnsupportedImage as exc:
        raise UserError(f"image '{path}' has {exc}") from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
        raise UserError(f"cannot read image '{path}' ({type(exc).__name__}: {exc}); fix or remove it") from None


def check_image_source(value, what: str, recursive: bool = False) -> None:
    """Refuse, before any work, a folder or list file that holds no readable image: its first
    image is decoded, so an unreadable folder or a broken first file is named now, not after a
    search of many minutes."""
    path = Path(value).expanduser()
    try:
        first = first_image(path) if recursive and path.is_dir() else ImageFolder(path).items[0][0]
        if first is None:
            raise UserError(f"'{value}' holds no images (sub-folders searched); give a folder of photos")
        open_image(first)
    except PermissionError as exc:
        raise UserError(f"{what}: cannot read '{exc.filename or value}' (permission denied); make it readable") from None
    except UserError as exc:
        raise UserError(f"{what}: {exc}") from None


def load_image(path: Path, preprocess) -> np.ndarray:
    """Decode and preprocess one image -> float32 CHW."""
    return preprocess.apply(open_image(path))


def iter_batches(
    dataset: ImageFolder,
    preprocess,
    batch_size: int = 32,
    limit: Optional[int] = None,
    workers: int = 4,
) -> Iterator[tuple[np.ndarray, Optional[np.ndarray]]]:
    """Yield (float32 NCHW images, int64 labels or None) in dataset order.

    Images are decoded by a small thread pool (PIL releases the GIL while decoding and
    resizing) one batch ahead of the consumer.
    """
    if batch_size < 1:
        raise UserError(f"batch size must be positive, got {batch_size}")
    count = len(dataset) if limit is None else min(len(dataset), max(0, int(limit)))
    starts = list(range(0, count, batch_size))
    labelled = dataset.labelled

    def load_batch(pool, start):
        paths = [dataset[i][0] for i in range(start, min(start + batch_size, count))]
        return [pool.submit(load_image, p, preprocess) for p in paths]

    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        pending = load_batch(pool, starts[0]) if starts else None
        for position, start in enumerate(starts):
            current = pending
            pending = load_batch(pool, starts[position + 1]) if position + 1 < len(starts) else None
            try:
                images = np.stack([future.result() for future in current])
            except BaseException:
                for future in (pending or []):
                    future.cancel()
                raise
            labels = None
            if labelled:
                end = start + len(current)
                labels = np.asarray([dataset[i][1] for i in range(start, end)], dtype=np.int64)
            yield images, labels
