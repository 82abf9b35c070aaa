"""The compile stage: build the runtime engine of each target that has one (``engine`` in the target table)."""

from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

from edgecnn.backends.tensorrt import build_engine
from edgecnn.errors import UserError
from edgecnn.pipeline.state import RunState, StageOutcome
from edgecnn.recipe import Stage as RecipeStage
from edgecnn.targets import QuantTarget, get_target


def tensorrt_available() -> bool:
    return importlib.util.find_spec("tensorrt") is not None


def _build_tensorrt(onnx_path: Path, engine: Path, fp16: bool) -> None:
    build_engine(onnx_path, engine, fp16=fp16, int8=True)


@dataclass(frozen=True)
class EngineBuilder:
    label: str  # the runtime's name in messages
    available: Callable[[], bool]  # is the runtime installed here?
    build: Callable[[Path, Path, bool], None]  # build(onnx_path, engine_path, fp16)


# Engine kind (QuantTarget.engine) -> how to build it.
ENGINES: dict[str, EngineBuilder] = {"tensorrt": EngineBuilder("TensorRT", tensorrt_available, _build_tensorrt)}


def compile_target(onnx_path: Path, target: QuantTarget, out_dir: Path, fp16: bool) -> tuple[Optional[Path], Optional[str]]:
    """(engine path or None, a note or None) for ``target``."""
    if target.engine is None:
        return None, "ONNX Runtime compiles the graph when it loads it; no engine file"
    builder = ENGINES[target.engine]
    if not builder.available():
        return None, f"{builder.label} is not installed here: engine not built (run 'edgecnn compile' on the device)"
    engine = Path(out_dir) / (Path(onnx_path).stem + ".engine")
    builder.build(onnx_path, engine, fp16)
    return engine, None


class CompileStage:
    kind = "compile"
    own_progress = False

    def run(self, state: RunState, spec: RecipeStage) -> StageOutcome:
        config = spec.config
        parts = []
        for name, artifact in state.artifacts.items():
            target = get_target(name)
            engine, note = compile_target(state.work / artifact.onnx, target, state.work / name, config.fp16)
            if engine is None and target.engine is not None and config.require:
                raise UserError(f"compile: {ENGINES[target.engine].label} is not installed; install it or set compile.require: false")
            artifact.engine = os.path.relpath(engine, state.work) if engine else None
            if note:
                artifact.compile_note = note
                if target.engine is not None:
                    state.notes.append(note)
            parts.append(f"{name}: {'engine ' + artifact.engine if artifact.engine else 'no engine'}")
        return StageOutcome("; ".join(parts))
