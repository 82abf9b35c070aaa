"""The proxy a search chooses with: agreement and KL with FP32 on reserved unlabelled photos.

Top-1 on a few hundred labelled search images cannot tell apart candidates a point apart
(one image is 0.17 points of 575, and a drop's 95 % bound spans about a point); agreement with
FP32 over thousands of photos is a paired count with far more power, and it needs no labels.
The photos are a reserved, fixed subset (:mod:`edgecnn.data.reserve`), decoded once with the
model's preprocessing into an array on disk, kept out of recovery training. Whether the proxy
ranks the candidates as top-1 does is shown (:func:`rank_agreement`), never assumed.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np

from edgecnn.data.reserve import Reserved


@dataclass
class ChooseSet:
    images: np.ndarray  # N x 3 x H x W float32 (a memory map of the decoded photos)
    reserved: Reserved

    def describe(self) -> str:
        return f"{len(self.images)} reserved photos of {self.reserved.root.name}/"


def decode(reserved: Reserved, preprocess, folder: Path, batch: int = 32) -> ChooseSet:
    """Decode the reserved photos once with ``preprocess`` into ``folder/choose.npy`` (memory-mapped:
    2000 photos at 224 px are 1.2 GB of float32)."""
    from edgecnn.data.images import ImageFolder, iter_batches

    folder.mkdir(parents=True, exist_ok=True)
    size = preprocess.input_size
    out = np.lib.format.open_memmap(folder / "choose.npy", mode="w+", dtype=np.float32,
                                    shape=(len(reserved.paths), 3, size, size))
    start = 0
    for x, _ in iter_batches(ImageFolder.from_items([(p, None) for p in reserved.paths]), preprocess, batch, workers=2):
        out[start:start + len(x)] = x
        start += len(x)
    out.flush()
    return ChooseSet(np.load(folder / "choose.npy", mmap_mode="r"), reserved)


def logits_of(path: Path, images: np.ndarray, threads: int = 2, batch: int = 32, backend: str = "ort") -> np.ndarray:
    """Logits per image through ``backend``'s CPU runtime (the target's: ORT or OpenVINO)."""
    from edgecnn.measure.latency import open_runner

    runner = open_runner(path, backend, threads)
    return np.concatenate([runner.run(np.ascontiguousarray(images[i:i + batch])) for i in range(0, len(images), batch)])


def _log_softmax(logits: np.ndarray) -> np.ndarray:
    z = logits.astype(np.float64) - logits.max(axis=1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=1, keepdims=True))


def compare(reference: np.ndarray, logits: np.ndarray) -> dict:
    """Agreement (% of photos on the reference's class) and mean KL(reference || candidate) in nats."""
    ref, cand = _log_softmax(reference), _log_softmax(logits)
    kl = float((np.exp(ref) * (ref - cand)).sum(axis=1).mean())
    agree = float((reference.argmax(1) == logits.argmax(1)).mean() * 100)
    return {"agree": agree, "kl": max(kl, 0.0), "photos": len(reference)}


def _ranks(values: list[float]) -> np.ndarray:
    """Average ranks (ties share the mean of their positions)."""
    values = np.asarray(values, dtype=float)
    order = np.argsort(values, kind="stable")
    ranks = np.empty(len(values))
    ranks[order] = np.arange(len(values), dtype=float)
    for value in np.unique(values):
        tied = values == value
        ranks[tied] = ranks[tied].mean()
    return ranks


def spearman(a: list[float], b: list[float]) -> Optional[float]:
    ra, rb = _ranks(a) - (len(a) - 1) / 2, _ranks(b) - (len(b) - 1) / 2
    denominator = math.sqrt(float((ra * ra).sum() * (rb * rb).sum()))
    return float((ra * rb).sum() / denominator) if denominator > 0 else None


def rank_agreement(proxy: list[float], top1: list[float], permutations: int = 20000) -> dict:
    """Spearman's rho between the proxy and top-1 over the candidates, with the one-sided
    permutation p-value of a rho at least this large (exact up to 8 candidates): with 3
    candidates even a perfect ranking has p = 1/6, so few candidates cannot resolve it."""
    n = len(proxy)
    rho = spearman(proxy, top1) if n >= 2 else None
    result = {"candidates": n, "spearman": None if rho is None else round(rho, 3), "p_one_sided": None, "resolved": False}
    if rho is None:
        result["why"] = "fewer than two candidates, or one of the two rankings is all ties"
        return result
    if n <= 8:
        rhos = [spearman(proxy, [top1[i] for i in perm]) or 0.0 for perm in itertools.permutations(range(n))]
    else:
        rng = np.random.default_rng(0)
        rhos = [spearman(proxy, list(rng.permutation(top1))) or 0.0 for _ in range(permutations)]
    p = float(np.mean([r >= rho - 1e-12 for r in rhos]))
    result.update(p_one_sided=round(p, 4), resolved=p <= 0.05)
    return result


def choose_summary(choose: Optional[ChooseSet], candidates: list, fp32_top1: float) -> dict:
    """report.json ``search.choose``: which images the tie-break chose on, and whether the proxy
    (agreement on the reserved photos) ranks the measured candidates as top-1 on the search part does."""
    if choose is None:
        return {"tie_break_on": "the search part (agreement with FP32 on the labelled search images)"}
    rows = [c for c in candidates if "choose" in c.info and c.drop is not None and math.isfinite(c.drop)]
    return {"tie_break_on": choose.describe() + " (agreement with FP32, then KL)", "reserved": choose.reserved.to_dict(),
            "rank_vs_search_top1": rank_agreement([c.info["choose"]["agree"] for c in rows], [fp32_top1 - c.drop for c in rows])}
