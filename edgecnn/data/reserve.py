"""A reserved, fixed subset of an unlabelled photo folder: the photos a search chooses on.

The subset is the ``count`` photos whose SHA-256 of ``'<salt>:' + path relative to the folder``
ranks lowest: the same photos on every machine and in any listing order, and adding photos
to the folder moves a photo out of the subset only when a new one ranks below it. Because the
choice made on these photos would be biased by training on them, a recovery training set
drawn from the same photos leaves them out (:func:`without_reserved`, by path and by content).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path

from edgecnn.data.images import is_image
from edgecnn.errors import UserError

SALT = "edgecnn-choose-1"


def file_sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


@dataclass
class Reserved:
    root: Path
    paths: list[Path]  # absolute, in rank order
    rule: str
    available: int  # photos in the folder
    _digests: set = field(default_factory=set, repr=False)

    def digests(self) -> set[str]:
        """SHA-256 of each reserved photo's bytes (the manifest a training set is checked against)."""
        if not self._digests:
            self._digests = {file_sha256(p) for p in self.paths}
        return self._digests

    def to_dict(self) -> dict:
        return {"folder": self.root.name, "photos": len(self.paths), "available": self.available, "rule": self.rule}


def _rank(relpath: str, salt: str) -> str:
    return hashlib.sha256(f"{salt}:{relpath}".encode()).hexdigest()


def reserved_photos(root, count: int, salt: str = SALT) -> Reserved:
    """The ``count`` lowest-ranked photos of ``root`` (recursively); all of them when it holds fewer."""
    root = Path(root).expanduser().absolute()
    if not root.is_dir():
        raise UserError(f"'{root}' is not a folder; give --choose-on a folder of photos (sub-folders are searched)")
    if count < 1:
        raise UserError(f"--choose-images {count}: give a positive number of photos, e.g. 2000")
    photos = [p for p in root.rglob("*") if p.is_file() and is_image(p)]
    if not photos:
        raise UserError(f"'{root}' holds no images; give --choose-on a folder of photos (sub-folders are searched)")
    ranked = sorted(photos, key=lambda p: _rank(p.relative_to(root).as_posix(), salt))
    rule = (f"the {min(count, len(photos))} of {len(photos)} photos of {root.name}/ ranking lowest by "
            f"sha256('{salt}:' + path relative to {root.name}/)")
    return Reserved(root, ranked[:count], rule, len(photos))


def without_reserved(paths: list[Path], reserved: Reserved, by_content: bool = True) -> tuple[list[Path], int]:
    """``paths`` less the reserved photos (same file, and with ``by_content`` same bytes under
    another name: that reads every file), and how many left."""
    names = {p.resolve() for p in reserved.paths}
    kept = [p for p in paths if Path(p).resolve() not in names]
    if by_content:
        digests = reserved.digests()
        kept = [p for p in kept if file_sha256(p) not in digests]
    return kept, len(paths) - len(kept)
