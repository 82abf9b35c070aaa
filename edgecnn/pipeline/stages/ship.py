"""The ship stage: an app-ready bundle per target (:mod:`edgecnn.ship`), made from the finished
output folder, so it runs after report.json is written (``after_report`` in its stage kind)."""

from __future__ import annotations

from edgecnn.errors import UserError
from edgecnn.pipeline.state import RunState, StageOutcome
from edgecnn.recipe import Stage as RecipeStage


class ShipStage:
    kind = "ship"
    own_progress = False

    def run(self, state: RunState, spec: RecipeStage) -> StageOutcome:
        from edgecnn.ship import build_bundle

        config = spec.config
        parts = []
        for target in config.targets or list(state.artifacts):
            if target not in state.artifacts:
                raise UserError(f"ship: target {target} was not exported; choose from {', '.join(state.artifacts)}")
            bundle = build_bundle(state.work, state.work / f"bundle-{target}", target=target, golden=config.golden,
                                  labels=config.labels, origin=".. (the output folder holding this bundle)")
            parts.append(f"bundle-{target}/ (golden: {bundle.golden['top5'][0]['label']})")
        return StageOutcome("checked " + ", ".join(parts))
