"""Harness logic of the comparison bench: data split, statistics, accuracy, tables.

Kept free of heavy imports (numpy only) so the tests can check it in milliseconds.
"""

from __future__ import annotations

import math
from typing import Iterable, Optional, Sequence

import numpy as np

NA = "n/a"


def split_calibration(count: int, calib_count: int) -> tuple[list[int], list[int]]:
    """(calibration indices, evaluation indices) over ``count`` images in manifest order.

    Calibration takes every ``count // calib_count``-th image, so it spans all classes
    (the manifest is sorted by synset: the first N images would cover only ~N/10 classes);
    evaluation gets every other image, never one used for calibration.
    """
    if count <= 0:
        return [], []
    calib_count = max(0, min(int(calib_count), count - 1))
    if calib_count == 0:
        return [], list(range(count))
    stride = max(1, count // calib_count)
    calib = list(range(0, count, stride))[:calib_count]
    taken = set(calib)
    return calib, [i for i in range(count) if i not in taken]


def percentile(values: Sequence[float], q: float) -> float:
    """Linear-interpolated percentile (numpy's default method)."""
    if len(values) == 0:
        return math.nan
    return float(np.percentile(np.asarray(values, dtype=np.float64), q))


def accuracy(top5: np.ndarray, labels: np.ndarray, reference_top1: Optional[np.ndarray] = None) -> dict:
    """top-1 / top-5 in percent, and the share of top-1 predictions equal to the reference's."""
    top5 = np.asarray(top5)
    labels = np.asarray(labels)
    if top5.shape[0] != labels.shape[0]:
        raise ValueError(f"{top5.shape[0]} predictions for {labels.shape[0]} labels")
    n = labels.shape[0]
    if n == 0:
        return {"top1": math.nan, "top5": math.nan, "agreement": math.nan, "n": 0}
    top1 = float(np.mean(top5[:, 0] == labels) * 100)
    in_top5 = float(np.mean((top5 == labels[:, None]).any(axis=1)) * 100)
    agreement = math.nan
    if reference_top1 is not None:
        agreement = float(np.mean(top5[:, 0] == np.asarray(reference_top1)) * 100)
    return {"top1": top1, "top5": in_top5, "agreement": agreement, "n": int(n)}


def top5_of(logits: np.ndarray) -> np.ndarray:
    """Indices of the 5 largest logits per row, best first (ties: edgecnn's one rule)."""
    from edgecnn.measure.accuracy import ranked_classes

    return ranked_classes(logits).astype(np.int32)


def padded_batches(indices: Sequence[int], batch: int) -> Iterable[tuple[list[int], int]]:
    """Chunks of ``batch`` indices, the last padded by repeating its last index; yields (chunk, real)."""
    indices = list(indices)
    for start in range(0, len(indices), batch):
        chunk = indices[start:start + batch]
        real = len(chunk)
        chunk = chunk + [chunk[-1]] * (batch - real)
        yield chunk, real


def fmt(value, digits: int = 2, na: str = NA) -> str:
    """A table cell: numbers rounded, missing values (None, NaN) as ``n/a``."""
    if value is None:
        return na
    if isinstance(value, str):
        return value
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        return f"{int(value):,}"
    try:
        number = float(value)
    except (TypeError, ValueError):
        return str(value)
    if math.isnan(number):
        return na
    return f"{number:,.{digits}f}"


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence]) -> str:
    """GitHub markdown table; cells go through :func:`fmt`; numeric columns right-aligned."""
    cells = [[fmt(c) for c in row] for row in rows]
    numeric = []
    for col in range(len(headers)):
        values = [row[col] for row in rows if col < len(row)]
        numeric.append(bool(values) and all(
            isinstance(v, (int, float, np.integer, np.floating)) or v is None or v == NA for v in values
        ))
    lines = ["| " + " | ".join(headers) + " |"]
    lines.append("| " + " | ".join("---:" if n else "---" for n in numeric) + " |")
    for row in cells:
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def ratio(numerator, denominator) -> float:
    """numerator / denominator, NaN when either is missing or the denominator is not positive."""
    try:
        n, d = float(numerator), float(denominator)
    except (TypeError, ValueError):
        return math.nan
    if math.isnan(n) or math.isnan(d) or d <= 0:
        return math.nan
    return n / d


def hand_written_findings(path) -> str:
    """The "## Findings" section of an earlier results file (written by hand after a run, up to
    its environment block if one follows), so that a rerun keeps it; "" when there is none."""
    from pathlib import Path

    path = Path(path)
    earlier = path.read_text().split("\n## Findings", 1) if path.is_file() else []
    if len(earlier) != 2:
        return ""
    return "\n## Findings" + earlier[1].split("\n## Environment", 1)[0].rstrip("\n") + "\n"


def write_results(out, results: dict, render) -> str:
    """``out``.json (the run's data) and ``out``.md (``render(results)``), each written atomically;
    returns the markdown."""
    import json
    from pathlib import Path

    from edgecnn.fileio import write_text_atomic

    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(out.with_suffix(".json"), json.dumps(results, indent=1, default=str))
    text = render(results)
    write_text_atomic(out.with_suffix(".md"), text)
    return text
