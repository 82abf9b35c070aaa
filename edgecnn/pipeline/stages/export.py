"""The export stage: the final model as ONNX, one file per target (FP32, or Q/DQ in the target's encoding)."""

from __future__ import annotations

from pathlib import Path
from typing import Union

from edgecnn.errors import UserError
from edgecnn.export.metadata import model_metadata
from edgecnn.export.onnx_export import export_onnx
from edgecnn.export.qdq import export_qdq_report
from edgecnn.models import LoadedModel
from edgecnn.pipeline.checkpoint import Checkpoint
from edgecnn.pipeline.state import ExportedFile, RunState, StageOutcome
from edgecnn.recipe import Stage as RecipeStage
from edgecnn.records import Artifact
from edgecnn.targets import get_target


def export_metadata(state: RunState, ck: Checkpoint, precision: Union[str, None], target: str) -> dict:
    """ONNX metadata_props: preprocessing, labels, weights, the recipe, the target."""
    info = state.model_info
    loaded = LoadedModel(ck.module, info["name"], preprocess=state.preprocess, labels=state.labels, weights=info["weights"])
    extra = {"edgecnn.target": target}
    if precision:  # Q/DQ exports write their own precision (int8, w6a8, ...)
        extra["edgecnn.precision"] = precision
    return model_metadata(loaded, recipe=state.recipe.to_dict(), extra=extra)


def export_checkpoint(state: RunState, ck: Checkpoint, path: Path, target: str, opset: int, batch, parity: bool,
                      fp16_rest: bool = False) -> ExportedFile:
    """One checkpoint as ONNX for ``target``; the exporters check parity (and lint Q/DQ for their targets).

    ``fp16_rest`` applies to Q/DQ files for targets built into a TensorRT engine only.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    if not ck.quantized:
        export_onnx(ck.module, path, input_shape=tuple(state.input_shape), opset=opset, batch=batch,
                    metadata=export_metadata(state, ck, "fp32", target), parity_inputs=state.parity_inputs(), parity=parity)
        return ExportedFile(path)
    result = export_qdq_report(
        ck.module, path, target, input_shape=tuple(state.input_shape), opset=opset,
        metadata=export_metadata(state, ck, None, target), parity_inputs=state.parity_inputs(), parity=parity, batch=batch,
        fp16_rest=fp16_rest and get_target(target).engine == "tensorrt",
    )
    lint = None
    if get_target(target).trt_lint:
        lint = "TensorRT Q/DQ placement lint: no violations" if not result.violations else f"{len(result.violations)} violations"
    return ExportedFile(Path(result.path), result.parity.summary() if result.parity is not None else None, lint)


class ExportStage:
    kind = "export"
    own_progress = False

    def run(self, state: RunState, spec: RecipeStage) -> StageOutcome:
        config = spec.config
        final = state.final
        if config.fp16_rest and not any(get_target(t).engine == "tensorrt" for t in state.recipe.targets):
            raise UserError("export.fp16_rest applies to TensorRT targets only; add --target trt or drop fp16_rest")
        parts = []
        for target in state.recipe.targets:
            done = export_checkpoint(state, final, state.work / target / "model.onnx", target, config.opset, config.batch,
                                     config.parity, config.fp16_rest)
            state.artifacts[target] = Artifact(f"{target}/model.onnx", "qdq" if final.quantized else "fp32", final.stage,
                                               parity=done.parity, lint=done.lint)
            parts.append(f"{target} {done.path.stat().st_size / 1e3:,.0f} kB")
        return StageOutcome("ONNX " + ", ".join(parts) + (" (parity checked)" if config.parity else ""))
