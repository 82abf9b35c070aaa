"""The export stage: the final model as ONNX, one file per target (FP32, or Q/DQ in the target's encoding)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Union

from edgecnn import cpu
from edgecnn.errors import UserError
from edgecnn.export.metadata import model_metadata
from edgecnn.export.onnx_export import export_onnx
from edgecnn.export.qdq import export_qdq_report
from edgecnn.models import LoadedModel
from edgecnn.pipeline.checkpoint import Checkpoint
from edgecnn.pipeline.state import ExportedFile, RunState, StageOutcome
from edgecnn.recipe import Stage as RecipeStage
from edgecnn.records import Artifact
from edgecnn.targets import get_target, resolve_target_name


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


def stores_u8_weights(path: Path) -> bool:
    """Does the Q/DQ file keep any weight as u8 codes (the U8U8 form of full 8-bit weights)?"""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    u8 = {i.name for i in model.graph.initializer if i.data_type == onnx.TensorProto.UINT8 and len(i.dims) >= 2}
    return any(n.op_type == "DequantizeLinear" and n.input[0] in u8 for n in model.graph.node)


def host_target_note(path: Path, target: str, cpu_class: str) -> Optional[str]:
    """One line when this CPU has its own target of the family that runs this file's u8 weights
    on faster kernels (``ort-x86`` 8-bit weights on a VNNI CPU), else None."""
    spec = get_target(target)
    own = resolve_target_name(spec.family, cpu_class) if spec.family else target
    if own == target or get_target(own).weight_dtype != "int8" or not stores_u8_weights(path):
        return None
    return (f"{target} stores full 8-bit weights as u8 (U8U8: exact on every CPU of the family); this CPU ({cpu_class}) "
            f"runs the s8 form of {own} on faster kernels: --target {spec.family} builds it (docs/quantization.md)")


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
            if final.quantized:
                note = host_target_note(done.path, target, cpu.host_class())
                if note and note not in state.notes:
                    state.notes.append(note)
        return StageOutcome("ONNX " + ", ".join(parts) + (" (parity checked)" if config.parity else ""))
