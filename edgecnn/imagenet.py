"""The ImageNet-1k class order shared by every published weight file the zoo loads.

Line i of ``data/imagenet_synsets.txt`` is output i: the synset ids sorted, the order of
torchvision's and Caffe's ImageNet models (public ILSVRC2012 metadata). It lets an evaluation
folder of synset sub-folders be scored without a classes file, and names the outputs of
models loaded with ``--weights imagenet``.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

NUM_CLASSES = 1000


@lru_cache(maxsize=1)
def synsets() -> tuple[str, ...]:
    """The 1000 synset ids in output order."""
    text = (Path(__file__).parent / "data" / "imagenet_synsets.txt").read_text(encoding="ascii")
    return tuple(line.strip() for line in text.splitlines() if line.strip())
