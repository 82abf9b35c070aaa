"""The stage interface: one object per kind of stage, run on the RunState."""

from __future__ import annotations

from typing import Protocol

from edgecnn.pipeline.state import RunState, StageOutcome
from edgecnn.recipe import Stage as RecipeStage


class Stage(Protocol):
    """A stage runner. ``own_progress``: it shows its own progress (no spinner around it). When it
    runs (and what it needs) is its kind's entry in :mod:`edgecnn.recipe.stage_kinds`."""

    kind: str
    own_progress: bool

    def run(self, state: RunState, spec: RecipeStage) -> StageOutcome:
        """Do the work of recipe stage ``spec`` (its name and validated config) on ``state``."""
        ...
