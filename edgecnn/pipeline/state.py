"""RunState: everything one run knows, declared in one place, passed from stage to stage.

Loading fills the model and data fields; each transform stage appends a checkpoint; export
fills ``artifacts``; measure fills ``results``; every stage may add ``notes``. Nothing else
carries state between stages.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import numpy as np

from edgecnn.data.images import ImageFolder
from edgecnn.pipeline.checkpoint import Checkpoint, make_checkpoint
from edgecnn.pipeline.console import RunConsole
from edgecnn.preprocess import Preprocess
from edgecnn.records import Artifact, ResultRow
from edgecnn.recipe import Recipe


@dataclass
class StageOutcome:
    """What a stage reports: its one console line, the pass summary and per-layer rows."""

    text: str
    summary: dict = field(default_factory=dict)
    layers: list = field(default_factory=list)


@dataclass
class ExportedFile:
    """One ONNX file written by export (or for measure): the exporter's parity and lint results."""

    path: Path
    parity: Optional[str] = None
    lint: Optional[str] = None


@dataclass
class RunState:
    recipe: Recipe
    console: RunConsole
    work: Path  # the temporary output folder being built (renamed into place at the end)
    # The model and how it sees images (set by loading).
    module: Any = None  # the current model: every transform stage replaces it
    preprocess: Optional[Preprocess] = None
    labels: Optional[list] = None
    model_info: dict = field(default_factory=dict)  # report.json "model" (name, options, weights, classes)
    baseline_text: str = ""
    # Data (set by loading): image sets, and the images preprocessed once.
    data_info: dict = field(default_factory=dict)  # report.json "data"
    calib_set: Optional[ImageFolder] = None
    eval_set: Optional[ImageFolder] = None
    train_set: Optional[ImageFolder] = None
    calib_arrays: Optional[np.ndarray] = None
    eval_arrays: Optional[np.ndarray] = None
    eval_labels: Optional[np.ndarray] = None
    eval_stream: Optional[ImageFolder] = None  # an evaluation set too big to keep in memory
    # What the stages produce.
    checkpoints: list[Checkpoint] = field(default_factory=list)
    artifacts: dict[str, Artifact] = field(default_factory=dict)  # target -> its exported files
    results: list[ResultRow] = field(default_factory=list)  # one per measured checkpoint and target
    stage_log: list[dict] = field(default_factory=list)  # report.json "stages"
    notes: list[str] = field(default_factory=list)
    latency_warnings: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)  # on the console when they arise, on top of report.md
    skipped: list[dict] = field(default_factory=list)  # layers a pass or the MAC count did not handle

    @property
    def input_size(self) -> int:
        return int(self.preprocess.input_size)

    @property
    def input_shape(self) -> tuple[int, int, int, int]:
        return (1, 3, self.input_size, self.input_size)

    @property
    def baseline(self) -> Checkpoint:
        return self.checkpoints[0]

    @property
    def final(self) -> Checkpoint:
        return self.checkpoints[-1]

    def add_checkpoint(self, stage: str, module) -> Checkpoint:
        """A frozen copy of ``module`` as ``stage`` left it; a repeated stage gets ``#2``, ``#3``."""
        name = stage
        if any(c.stage == stage for c in self.checkpoints):
            name = f"{stage}#{sum(c.stage.split('#')[0] == stage for c in self.checkpoints) + 1}"
        ck = make_checkpoint(name, module, self.input_size)
        self.note_skipped("the MAC count skips", name, ck.stats.pop("skipped", None))
        self.checkpoints.append(ck)
        return ck

    def warn(self, text: str) -> None:
        """Something that may make a number wrong or the model worse: said now and in the report."""
        self.warnings.append(text)
        self.console.print(f"[bold yellow]warning:[/] {text}")

    def note_skipped(self, what: str, stage: str, entries) -> None:
        """Layers (``{"layer", "kind"}``) that ``what`` did not handle; each is warned about once."""
        new = [e for e in entries or [] if not any(s["layer"] == e.get("layer") and s["what"] == what for s in self.skipped)]
        if new:
            from edgecnn.report import skipped_text

            self.skipped.extend({**e, "stage": stage, "what": what} for e in new)
            self.warn(skipped_text(what, new))

    def stage_done(self, name: str, seconds: float, outcome: StageOutcome) -> None:
        self.stage_log.append({"name": name, "seconds": round(seconds, 3), "text": outcome.text,
                               "summary": outcome.summary, "layers": outcome.layers})
        self.console.print(f"[green]✓[/] {name:<14} {outcome.text}  [dim]({seconds:.1f} s)[/]")

    def torch_batches(self, arrays: Optional[np.ndarray]):
        """``arrays`` cut into torch batches of the recipe's batch size (None stays None)."""
        import torch

        if arrays is None:
            return None
        bs = self.recipe.data.batch_size
        return [torch.from_numpy(arrays[i : i + bs]) for i in range(0, len(arrays), bs)]

    def parity_inputs(self) -> np.ndarray:
        """Images the exporters check ONNX against PyTorch on: evaluation, else calibration, else noise."""
        if self.eval_arrays is not None:
            return self.eval_arrays[:16]
        if self.calib_arrays is not None:
            return self.calib_arrays[:16]
        return np.random.default_rng(0).standard_normal((4, *self.input_shape[1:]), dtype=np.float32)
