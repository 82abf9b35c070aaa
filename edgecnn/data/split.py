"""A deterministic split of a labelled image folder into a *search* part and an *evaluation* part.

The search (its sensitivities, its measured accuracy checks, calibration) sees only the
search part; the accuracy that is reported comes from the evaluation part. An image's part
depends only on its path relative to the folder and a salt (SHA-256), so the split is the
same on every machine, in any listing order, and adding images never moves existing ones.
Within each class the images are ranked by that hash and every other one goes to search,
so both parts cover the classes alike.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Union

from edgecnn.data.images import ImageFolder
from edgecnn.errors import UserError

SALT = "edgecnn-split-1"


@dataclass
class Split:
    search: list[tuple[Path, Optional[int]]]
    evaluation: list[tuple[Path, Optional[int]]]
    rule: str

    def write_lists(self, folder: Union[str, Path]) -> tuple[Path, Path]:
        """``search.txt`` and ``evaluation.txt`` (``path label`` per line, readable by ImageFolder)."""
        from edgecnn.fileio import write_text_atomic

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        paths = []
        for name, items in (("search.txt", self.search), ("evaluation.txt", self.evaluation)):
            text = "".join(f"{p}{'' if label is None else f' {label}'}\n" for p, label in items)
            write_text_atomic(folder / name, text)
            paths.append(folder / name)
        return paths[0], paths[1]


def _rank(relpath: str, salt: str) -> str:
    return hashlib.sha256(f"{salt}:{relpath}".encode()).hexdigest()


def split_items(items: list[tuple[Path, Optional[int]]], root: Path, search_fraction: float = 0.5, salt: str = SALT) -> Split:
    """Split (path, label) pairs; ``search_fraction`` of each class (rounded down) goes to search."""
    if not 0 < search_fraction < 1:
        raise UserError(f"search fraction {search_fraction} is out of range; give a number between 0 and 1")
    by_class: dict = {}
    for path, label in items:
        try:
            rel = Path(path).resolve().relative_to(root.resolve()).as_posix()
        except ValueError:
            rel = Path(path).name
        by_class.setdefault(label, []).append((_rank(rel, salt), path, label))
    search, evaluation = [], []
    carry = 0.0
    for label in sorted(by_class, key=lambda v: (v is None, v if v is not None else 0)):
        ranked = sorted(by_class[label])
        # Carry the fractional share across classes so that one-image classes alternate too.
        carry += len(ranked) * search_fraction
        take = int(carry)
        carry -= take
        search += [(p, lab) for _, p, lab in ranked[:take]]
        evaluation += [(p, lab) for _, p, lab in ranked[take:]]
    rule = (f"per class, images ranked by sha256('{salt}:' + path relative to {root.name}/); "
            f"the first {search_fraction:g} of each class (fraction carried across classes) -> search, the rest -> evaluation")
    return Split(search, evaluation, rule)


def split_folder(root: Union[str, Path], search_fraction: float = 0.5, salt: str = SALT) -> Split:
    """Split an image folder (class sub-folders, or a list file) into search and evaluation parts."""
    root = Path(root)
    dataset = ImageFolder(root)
    items = [dataset[i] for i in range(len(dataset))]
    base = root if root.is_dir() else root.parent
    return split_items(items, base, search_fraction, salt)
