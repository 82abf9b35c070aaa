"""The search as one step of a compression run: labelled images in, the chosen model out.

The labelled images are split (:mod:`edgecnn.data.split`): the search and its checks see the
search part only, and the caller measures the final accuracy on the evaluation part it
gets back. Pruning and shift are searched only when recovery images are given (``train``);
without them they are left out of the space, with a note, because their accuracy
collapses without training.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import torch.nn as nn

from edgecnn.search import pareto
from edgecnn.search.budget import Budget
from edgecnn.search.run import SearchConfig, search, summary
from edgecnn.targets import get_target


@dataclass
class StageResult:
    model: nn.Module  # the chosen model (the float model when nothing fits the limit)
    summary: dict  # report.json "search" section: candidates, uniform settings, front, per-layer table
    layers: list[dict]  # per-layer choice rows (report.md)
    evaluation: list  # (path, label) of the evaluation part: report accuracy on these only
    notes: list[str] = field(default_factory=list)


def collapse_warning(prune: bool, shift: bool, recovered: bool) -> Optional[str]:
    """The warning printed before a run that prunes channels or shifts with nothing training the model back."""
    if recovered or not (prune or shift):
        return None
    what = " and ".join(w for w, on in (("channel pruning", prune), ("shift", shift)) if on)
    return (f"warning: {what} with no recovery training: accuracy will collapse (SqueezeNet 1.1 with --shift alone "
            f"keeps 0.3 % top-1). Recover it with --max-drop PTS --train DIR (a search that distils on the photos in "
            f"DIR), or add a distill stage with data.train to the recipe.")


def run_search_stage(module: nn.Module, preprocess, labelled, config: SearchConfig, work: Path,
                     train: Optional[str] = None, cache_root: Optional[Path] = None, log=print,
                     budget: Optional[Budget] = None) -> StageResult:
    """Search ``module`` for the fastest configuration within ``config.max_drop`` on the search part
    of ``labelled`` (an ImageFolder with labels). The time ``budget`` (default: ``config.search_time``
    from now) counts from here: reading the images is part of the search."""
    budget = budget or Budget(config.search_time)
    from edgecnn.data.split import split_items
    from edgecnn.search.prepare import choose_set, make_recovery, recovery_images, search_data

    notes = []
    root = Path(labelled.root)
    split = split_items(list(labelled.items), root if root.is_dir() else root.parent)
    notes.append(f"search/evaluation split of {root}: {len(split.search)} search images, "
                 f"{len(split.evaluation)} evaluation images ({split.rule})")
    if (config.prune_densities or config.shift) and not train:
        notes.append("pruning and shift left out of the search: no recovery images (--train)")
        config = config.model_copy(update={"prune_densities": [], "shift": False})
    budget.phase = f"reading {len(split.search)} search images"
    data = search_data(split.search, preprocess, 32)
    if config.objective == "size":
        return _size_stage(module, preprocess, data, config, work, split, notes, train, cache_root, log, budget)
    budget.phase = "reading the reserved photos to choose on"
    data.choose = choose_set(config, preprocess, work)
    if data.choose is not None:
        notes.append(f"ties between candidates decided on {data.choose.describe()} ({data.choose.reserved.rule}); "
                     "none of them in recovery training")
    if train:
        data.recovery = make_recovery(module, recovery_images(Path(train), 4000, data.choose and data.choose.reserved, log),
                                      preprocess, config, cache_root or work / "teacher-cache", work, log)
    outcome = search(copy.deepcopy(module), data, config, work, log, budget=budget)
    notes += _time_budget_notes(config, budget)
    info = summary(outcome)
    info["front_search_part"] = _front(outcome)
    budget.phase = "top-1 of each configuration on the evaluation part (reported, never chosen on)"
    _on_evaluation_part(info, outcome, split.evaluation, preprocess, config.threads, get_target(config.target).backend)
    chosen = outcome.chosen_model if outcome.chosen_model is not None else copy.deepcopy(module).eval()
    if outcome.note:
        notes.append(outcome.note)
    if outcome.chosen_model is None:
        notes.append(f"no configuration kept the top-1 drop within {config.max_drop} points: the float model is kept")
    return StageResult(chosen, info, info["chosen_layers"], split.evaluation, notes)


def _on_evaluation_part(info: dict, outcome, evaluation: list, preprocess, threads: int, backend: str = "ort") -> None:
    """Top-1 on the evaluation part of every configuration the search measured, after the choice
    (``top1_evaluation`` per row), and whether the proxy ranks them as that top-1 does."""
    from edgecnn.search.prepare import arrays
    from edgecnn.search.proxy import rank_agreement
    from edgecnn.search.run import top1_of

    rows = [(info["uniform"][p], c) for p, c in outcome.uniform.items() if p != "fp32"]
    rows += [(row, c) for row, c in zip(info["verified"], outcome.result.verified) if c.drop is not None]
    rows = [(row, outcome.artifacts[id(c)]) for row, c in rows if id(c) in outcome.artifacts]
    if not rows or not evaluation:
        return
    images, labels = arrays(evaluation, preprocess)
    for row, path in rows:
        row["top1_evaluation"] = float((top1_of(path, images, threads, backend=backend) == labels).mean() * 100)
    ranked = [row for row, _ in rows if row.get("choose")]
    if ranked:
        info["choose"]["rank_vs_evaluation_top1"] = rank_agreement([r["choose"]["agree"] for r in ranked],
                                                                   [r["top1_evaluation"] for r in ranked])


def _time_budget_notes(config: SearchConfig, budget: Budget) -> list[str]:
    """One line saying what ``--search-time`` left out, when it left anything out."""
    if not budget.skipped:
        return []
    return [f"search time budget ({config.search_time:g} min) spent during {budget.spent_in}; not done: "
            + "; ".join(budget.skipped)]


def _size_stage(module, preprocess, data, config: SearchConfig, work: Path, split, notes: list, train, cache_root, log,
                budget: Budget) -> StageResult:
    """The size objective (edgecnn.search.size): the smallest shipped .ecnn within the budget."""
    from edgecnn.search.prepare import make_recovery, recovery_images
    from edgecnn.search.size import size_search, summary as size_summary

    if config.shift:
        notes.append("shift left out of the size search: it does not make the shipped file smaller")
    recovery = None
    if train and config.prune_densities:
        recovery = make_recovery(module, recovery_images(Path(train), 4000), preprocess, config,
                                 cache_root or work / "teacher-cache", work, log)
    outcome = size_search(copy.deepcopy(module), data.images, data.labels, config, work / "size", recovery, log, budget)
    info = size_summary(outcome, config.max_drop)
    info["time_budget"] = budget.summary()
    notes += _time_budget_notes(config, budget)
    if outcome.chosen_model is None:
        notes.append(f"no weight-sharing configuration kept the top-1 drop within {config.max_drop} points: the float model is kept")
    chosen = outcome.chosen_model if outcome.chosen_model is not None else copy.deepcopy(module).eval()
    return StageResult(chosen, info, outcome.layers, split.evaluation, notes + outcome.notes)


def _decision_ms(cand) -> float:
    """The time the choice was made with (pooled over same-kernel artifacts in the final timing),
    so the plot never draws the chosen point beaten by one the choice saw as no faster."""
    return cand.info.get("pooled_ms", cand.measured_ms)


def _front(outcome) -> dict:
    """Front on the search part: top-1 there (FP32's minus the measured drop) vs measured ms."""
    base = outcome.fp32_top1
    points = []
    for precision, cand in outcome.uniform.items():
        kind = "fp32" if precision == "fp32" else ("chosen" if cand is outcome.result.chosen else "uniform")
        label = f"chosen: {precision.upper()}" if kind == "chosen" else precision.upper()
        points.append({"label": label, "ms": _decision_ms(cand), "top1": base - (cand.drop or 0.0), "kind": kind})
    for i, cand in enumerate(outcome.result.verified):
        if cand.drop is None:  # not verified (time budget): no measured point to plot
            continue
        kind = "chosen" if cand is outcome.result.chosen else ("rejected" if cand.feasible is False else "candidate")
        points.append({"label": "chosen" if kind == "chosen" else f"candidate {i}", "ms": _decision_ms(cand),
                       "top1": base - (cand.drop if cand.drop is not None and cand.drop != float("inf") else 100.0), "kind": kind})
    return pareto.summary(points, next((p["label"] for p in points if p["kind"] == "chosen"), None))
