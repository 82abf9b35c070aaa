"""Transform stages: a registered pass (or distillation) runs on the current model and leaves a checkpoint."""

from __future__ import annotations

import torch

from edgecnn.passes.registry import PassContext, pass_for
from edgecnn.pipeline.state import RunState, StageOutcome
from edgecnn.recipe import Stage as RecipeStage


def run_transform(stage: str, model, config, ctx: PassContext):
    """Run the pass registered under the type of ``config`` (stage ``stage``'s validated config);
    returns the transformed model (or None: changed in place)."""
    return pass_for(config).fn(model, config, ctx)


def fmt_summary(summary: dict, limit: int = 6) -> str:
    """The first scalar values of a pass summary, for the console line."""
    parts = []
    for key, value in list(summary.items())[:limit]:
        if isinstance(value, float):
            value = f"{value:.4g}"
        elif isinstance(value, (list, tuple, dict)):
            continue
        parts.append(f"{key}={value}")
    return ", ".join(parts)


def finish_transform(state: RunState, stage: str, model, summary: dict, layers: list) -> StageOutcome:
    """``model`` becomes the current model and a checkpoint; the line says what changed."""
    state.module = model
    ck = state.add_checkpoint(stage, model)
    state.note_skipped(f"{ck.stage} left unchanged", ck.stage, summary.get("skipped_layers"))
    prev = state.checkpoints[-2]
    text = fmt_summary(summary) or stage
    if ck.stats["nonzeros"] != prev.stats["nonzeros"]:
        text += f"; non-zeros {prev.stats['nonzeros']:,} -> {ck.stats['nonzeros']:,}"
    if ck.fingerprint == prev.fingerprint:
        text += " (model unchanged)"
    return StageOutcome(text, summary, layers)


class TransformStage:
    kind = "transform"
    own_progress = False

    def run(self, state: RunState, spec: RecipeStage) -> StageOutcome:
        calib = state.torch_batches(state.calib_arrays)
        example = torch.from_numpy(state.calib_arrays[:1]) if state.calib_arrays is not None else torch.zeros(state.input_shape)
        ctx = PassContext(example_input=example, calib_batches=calib, teacher=state.baseline.module, progress=False)
        model = run_transform(spec.name, state.module, spec.config, ctx)
        summary: dict = {}
        layers: list = []
        for report in ctx.reports:
            summary.update(report.summary)
            layers.extend(report.rows)
        return finish_transform(state, spec.name, state.module if model is None else model, summary, layers)
