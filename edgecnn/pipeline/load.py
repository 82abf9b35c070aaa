"""Before any stage: cheap input checks, then the model, its preprocessing and the images.

With no weights in the recipe the run uses the embedded digits baseline
(:mod:`edgecnn.data.embedded`) and says so everywhere.
"""

from __future__ import annotations

import copy
import time
from pathlib import Path
from typing import Optional

import numpy as np

from edgecnn.data import embedded
from edgecnn.data.images import ImageFolder, check_image_source, iter_batches
from edgecnn.data.labels import drop_labels, resolve_labels
from edgecnn.errors import UserError
from edgecnn.models import create, load_model, resolve_name
from edgecnn.models.input_size import output_classes
from edgecnn.pipeline.state import RunState, StageOutcome
from edgecnn.preprocess import Preprocess
from edgecnn.recipe import Recipe, stage_kind


def _needing(r: Recipe, need: str) -> list[str]:
    """The recipe's stages whose kind needs ``need`` (``calib``, ``train``, ``labelled_eval``)."""
    return [s.name for s in r.stages if need in stage_kind(s.name).needs]

EVAL_IN_MEMORY_BYTES = 512 * 2**20  # above this the evaluation set is streamed from disk


def check_inputs(r: Recipe) -> None:
    """Cheap checks before any work: folders exist, flags fit together."""
    flags = {"calib": "--calib", "eval": "--data", "train": "--train"}
    for key in ("calib", "eval", "train"):
        value = getattr(r.data, key)
        if value is None:
            continue
        if not Path(value).expanduser().exists():
            raise UserError(f"data.{key} ({flags[key]}): '{value}' does not exist; give an image folder or a list file")
    if r.embedded:
        given = [k for k in ("calib", "eval") if getattr(r.data, k)]
        if given:
            flag = {"calib": "--calib", "eval": "--data"}[given[0]]
            raise UserError(
                f"{flag} needs --weights: without weights edgecnn uses its embedded digits baseline, which your images do not fit"
            )
        if ":" in r.model.name or r.model.name.endswith(".py"):
            raise UserError(f"model '{r.model.name}' needs --weights PATH: without weights edgecnn trains its embedded digits baseline, for zoo models only")
        if r.model.options.get("num_classes") not in (None, 10):
            raise UserError("--num-classes needs --weights: the embedded digits baseline has 10 classes")
    else:
        weights = r.model.weights
        if weights not in ("imagenet",) and not Path(weights).expanduser().is_file():
            raise UserError(f"weights file '{weights}' does not exist; give a .pth file or 'imagenet'")
        if _needing(r, "calib") and r.data.calib is None:
            raise UserError("quantization needs calibration images: pass --calib DIR (an image folder or a list file)")
        if _needing(r, "labelled_eval") and r.data.eval is None:
            raise UserError(f"stage {_needing(r, 'labelled_eval')[0]} needs labelled images to measure the top-1 drop: "
                            "pass --data DIR (class sub-folders)")
    if _needing(r, "train") and not r.embedded and r.data.train is None:
        raise UserError(f"stage {_needing(r, 'train')[0]} needs labelled training images: set data.train in the recipe")
    for key in ("calib", "eval", "train"):
        value = getattr(r.data, key)
        if value is not None:
            # A search reads its recovery photos at any folder depth; everything else reads an ImageFolder.
            recursive = key == "train" and r.stage("search") is not None and r.stage("distill") is None
            check_image_source(value, f"data.{key} ({flags[key]})", recursive=recursive)
    search = r.stage("search")
    if search is not None and getattr(search.config, "choose_on", None):  # photos a search chooses on
        check_image_source(search.config.choose_on, "search.choose_on (--choose-on)", recursive=True)


def load(state: RunState) -> None:
    """Model, preprocessing, image sets and arrays into ``state``; the baseline checkpoint."""
    t0 = time.perf_counter()
    if state.recipe.embedded:
        _load_embedded(state)
    else:
        _load_user(state)
    _load_arrays(state)
    state.add_checkpoint("baseline", state.module)
    state.stage_done("baseline", time.perf_counter() - t0, StageOutcome(state.baseline_text))


def evenly_spaced(count: int, limit: Optional[int]) -> list[int]:
    """Indices of ``limit`` images spread over the whole set: class-sorted folders keep every class."""
    if limit is None or limit >= count:
        return list(range(count))
    return sorted(set(np.linspace(0, count - 1, limit).round().astype(int).tolist()))


def subset(dataset, indices: list[int]):
    sub = copy.copy(dataset)
    sub.items = [dataset.items[i] for i in indices]
    return sub


def _load_embedded(state: RunState) -> None:
    r = state.recipe
    e = r.data.embedded
    name = resolve_name(r.model.name)
    options = {k: v for k, v in r.model.options.items() if v is not None and k != "num_classes"}

    def build():
        return create(name, num_classes=embedded.NUM_CLASSES, **options)

    build()  # fail fast on bad options before any training
    with state.console.bar(f"training the {name} digits baseline", e.epochs) as step:
        base = embedded.train_baseline(build, name, options, e.input_size, e.epochs, e.seed, e.max_train_images, progress=step)
    state.module = base.module
    state.preprocess = base.preprocess
    state.labels = [f"digit_{d}" for d in range(embedded.NUM_CLASSES)]
    state.model_info = {
        "name": name,
        "options": options,
        "weights": f"embedded digits baseline (cache key {base.key})",
        "num_classes": embedded.NUM_CLASSES,
    }
    note = base.description
    state.console.print(f"[yellow]{note}[/]")
    state.notes.append(note)
    calib = ImageFolder(base.folders.train)
    if e.max_train_images:
        calib = subset(calib, evenly_spaced(len(calib), e.max_train_images))
    evalset = ImageFolder(base.folders.test)
    if e.max_test_images:
        evalset = subset(evalset, evenly_spaced(len(evalset), e.max_test_images))
    state.calib_set, state.eval_set, state.train_set = calib, evalset, calib
    state.data_info = {
        "source": "embedded-digits",
        "note": note,
        "calib": "embedded digits, train split",
        "eval": "embedded digits, held-out test split",
        "train": "embedded digits, train split",
    }
    how = "loaded from cache" if base.cached else f"trained in {base.train_seconds:.0f} s"
    state.baseline_text = f"digits baseline {how}: {base.torch_top1:.1f} % top-1 in PyTorch on {base.folders.n_test} test images"


def _load_user(state: RunState) -> None:
    r = state.recipe
    preprocess = r.model.preprocess
    if isinstance(preprocess, dict):
        try:
            preprocess = Preprocess(**preprocess)
        except TypeError as exc:
            raise UserError(f"model.preprocess: {exc}") from None
    loaded = load_model(r.model.name, weights=r.model.weights, preprocess=preprocess, **r.model.options)
    state.module = loaded.module
    state.preprocess = loaded.preprocess
    state.labels = loaded.labels
    num_classes = output_classes(loaded.module, int(loaded.preprocess.input_size))  # zoo models too (was None)
    state.model_info = {"name": loaded.name, "options": loaded.options, "weights": loaded.weights, "num_classes": num_classes}
    state.calib_set = ImageFolder(Path(r.data.calib).expanduser()) if r.data.calib else None
    state.eval_set = ImageFolder(Path(r.data.eval).expanduser()) if r.data.eval else None
    # A search reads its recovery photos itself (any folder depth, no labels); distill wants an ImageFolder.
    wants_set = r.data.train and (_needing(r, "train") or not any(stage_kind(s.name).searches for s in r.stages))
    state.train_set = ImageFolder(Path(r.data.train).expanduser()) if wants_set else None
    if state.eval_set is not None and not state.eval_set.labelled:
        state.notes.append(f"{r.data.eval} has no labels: top-1/top-5 not measured, agreement with FP32 only")
    state.data_info = {"source": "user", "note": None, "calib": r.data.calib, "eval": r.data.eval, "train": r.data.train}
    if state.eval_set is not None:  # no accuracy figure without labels that map to the model's outputs
        reason = resolve_labels(state.eval_set, num_classes, state.labels)
        if reason:
            drop_labels(state.eval_set)
            state.warn(f"top-1 not measured: {reason}; agreement with FP32 only")
        state.data_info["label_source"] = state.eval_set.label_source
    state.baseline_text = f"{loaded.name}, weights: {loaded.weights}"


def _load_arrays(state: RunState) -> None:
    """Calibration and evaluation images, preprocessed once."""
    data = state.recipe.data
    if state.calib_set is not None:
        sub = subset(state.calib_set, evenly_spaced(len(state.calib_set), data.calib_images))
        state.calib_arrays = np.concatenate([x for x, _ in iter_batches(sub, state.preprocess, data.batch_size)])
    state.data_info["calib_images"] = 0 if state.calib_arrays is None else int(len(state.calib_arrays))
    if state.eval_set is not None:
        sub = subset(state.eval_set, evenly_spaced(len(state.eval_set), data.eval_images))
        state.data_info["eval_images"] = len(sub)
        if len(sub) * 3 * state.input_size**2 * 4 > EVAL_IN_MEMORY_BYTES:
            state.eval_stream = sub
        else:
            xs, ys = [], []
            for x, y in iter_batches(sub, state.preprocess, data.batch_size):
                xs.append(x)
                ys.append(y)
            state.eval_arrays = np.concatenate(xs)
            state.eval_labels = np.concatenate(ys) if ys[0] is not None else None
    else:
        state.data_info["eval_images"] = 0
    state.data_info["labelled"] = bool(state.eval_set is not None and state.eval_set.labelled)
