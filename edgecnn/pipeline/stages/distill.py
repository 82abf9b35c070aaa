"""The distill stage: knowledge distillation of the current model from the baseline, in place."""

from __future__ import annotations

from edgecnn.data.torch_data import ImageDataset
from edgecnn.errors import UserError
from edgecnn.passes.hooks import after_step_hooks, regularizers
from edgecnn.pipeline.stages.transform import finish_transform
from edgecnn.pipeline.state import RunState, StageOutcome
from edgecnn.recipe import Stage as RecipeStage
from edgecnn.train.distill import distill


class DistillStage:
    kind = "distill"
    own_progress = True  # the trainer shows its own progress

    def run(self, state: RunState, spec: RecipeStage) -> StageOutcome:
        if state.train_set is None:
            raise UserError("stage distill needs labelled training images: set data.train in the recipe")
        data = ImageDataset(state.train_set, state.preprocess, train=True, flip=not state.recipe.embedded)
        result = distill(state.module, state.baseline.module, data, spec.config,
                         after_step=after_step_hooks(state.module), regularizers=regularizers(state.module, spec.config.shift_l1))
        final = {k: v for k, v in result.final.items() if isinstance(v, (int, float))}
        summary = {"steps": result.steps, "epochs": result.epochs_done, **final}
        return finish_transform(state, spec.name, state.module, summary, [])
