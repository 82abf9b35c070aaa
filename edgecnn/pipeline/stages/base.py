"""The stage interface: one object per kind of stage, run on the RunState."""

from __future__ import annotations

from typing import Protocol

from edgecnn.pipeline.state import RunState, StageOutcome
from edgecnn.recipe import Stage as RecipeStage


class Stage(Protocol):
    """A kind of stage. ``own_progress``: it shows its own progress (no spinner around it);
    ``after_report`` (optional, default False): it runs once report.json is written."""

    kind: str
    own_progress: bool

    def run(self, state: RunState, spec: RecipeStage) -> StageOutcome:
        """Do the work of recipe stage ``spec`` (its name and validated config) on ``state``."""
        ...
