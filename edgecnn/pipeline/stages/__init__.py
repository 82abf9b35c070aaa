"""The stage runners, one per ``runner`` named in :mod:`edgecnn.recipe.stage_kinds`: a recipe
stage runs the runner its kind names (every transform pass runs the transform stage)."""

from __future__ import annotations

from edgecnn.pipeline.stages.base import Stage
from edgecnn.pipeline.stages.compile import CompileStage
from edgecnn.pipeline.stages.distill import DistillStage
from edgecnn.pipeline.stages.export import ExportStage
from edgecnn.pipeline.stages.measure import MeasureStage
from edgecnn.pipeline.stages.search import SearchStage
from edgecnn.pipeline.stages.ship import ShipStage
from edgecnn.pipeline.stages.transform import TransformStage
from edgecnn.recipe import stage_kind

STAGES: dict[str, Stage] = {s.kind: s for s in (TransformStage(), DistillStage(), SearchStage(), ExportStage(), CompileStage(), MeasureStage(),
                                                ShipStage())}


def stage_for(name: str) -> Stage:
    """The stage that runs recipe stage ``name``: the runner its kind names."""
    return STAGES[stage_kind(name).runner]


__all__ = ["STAGES", "Stage", "stage_for"]
