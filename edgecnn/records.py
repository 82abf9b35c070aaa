"""What stages hand each other and the report: an exported artifact per target and a result row
per measured checkpoint and target, typed, turned into report.json's dicts (docs/report-schema.md)
only by their ``to_dict``.

Neutral data with no edgecnn imports: the pipeline fills them, the report formats their dicts.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Optional

NOT_COMPILED = "not compiled"  # Artifact.engine before a compile stage ran (no "engine" key in report.json)


@dataclass
class Artifact:
    """One target's exported files. Paths are relative to the output folder."""

    onnx: str  # <target>/model.onnx
    precision: str  # "qdq" or "fp32"
    stage: str  # the checkpoint exported
    parity: Optional[str] = None  # the exporter's parity summary
    lint: Optional[str] = None  # the TensorRT Q/DQ placement lint, for targets that have one
    engine: Optional[str] = NOT_COMPILED  # the engine file; None when compile built none
    compile_note: Optional[str] = None  # why compile built no engine
    ecnn: Optional[str] = None  # the packed file the shipped column measures

    def to_dict(self) -> dict:
        """The report.json entry: keys whose value was never set are left out, ``engine: null`` is kept."""
        out: dict = {"onnx": self.onnx, "precision": self.precision, "stage": self.stage}
        for key in ("parity", "lint"):
            if getattr(self, key):
                out[key] = getattr(self, key)
        if self.engine != NOT_COMPILED:
            out["engine"] = self.engine
        if self.compile_note:
            out["compile_note"] = self.compile_note
        if self.ecnn is not None:
            out["ecnn"] = self.ecnn
        return out


@dataclass
class ResultRow:
    """One measured checkpoint on one target: every field is in report.json, None where not measured."""

    stage: str
    target: str  # a target name, or "fp32" for a checkpoint that is not quantized
    runtime: Optional[str] = None
    params: Optional[int] = None
    nonzeros: Optional[int] = None
    macs: Optional[int] = None
    onnx_bytes: Optional[int] = None
    shipped_bytes: Optional[int] = None
    latency_ms_median: Optional[float] = None
    latency_ms_p90: Optional[float] = None
    top1: Optional[float] = None
    top5: Optional[float] = None
    agreement: Optional[float] = None
    drop_upper95: Optional[float] = None  # one-sided 95 % upper bound of the top-1 drop from the baseline (edgecnn.stats)
    drop_bound: Optional[dict] = None  # that drop with both bounds, paired per image
    onnx: Optional[str] = None  # the ONNX file measured; None once an intermediate file is dropped
    ecnn: Optional[str] = None  # the packed .ecnn the shipped column measures

    def to_dict(self) -> dict:
        return asdict(self)


RESULT_FIELDS = tuple(f.name for f in fields(ResultRow))
