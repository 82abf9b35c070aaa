"""Stage kinds, registered by kind: recipe stage ``distill``/``search``/``export``/``compile``/``measure``/``ship`` runs
the stage of that kind, every other recipe stage is a transform pass."""

from __future__ import annotations

from edgecnn.pipeline.stages.base import Stage
from edgecnn.pipeline.stages.compile import CompileStage
from edgecnn.pipeline.stages.distill import DistillStage
from edgecnn.pipeline.stages.export import ExportStage
from edgecnn.pipeline.stages.measure import MeasureStage
from edgecnn.pipeline.stages.search import SearchStage
from edgecnn.pipeline.stages.ship import ShipStage
from edgecnn.pipeline.stages.transform import TransformStage

STAGES: dict[str, Stage] = {s.kind: s for s in (TransformStage(), DistillStage(), SearchStage(), ExportStage(), CompileStage(), MeasureStage(),
                                                ShipStage())}


def stage_for(name: str) -> Stage:
    """The stage that runs recipe stage ``name``: the one of that kind, else the transform (a pass)."""
    return STAGES.get(name, STAGES[TransformStage.kind])


__all__ = ["STAGES", "Stage", "stage_for"]
