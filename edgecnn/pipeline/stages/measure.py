"""The measure stage: ONNX bytes, shipped bytes, latency, top-1/top-5 and agreement with FP32 per row.

One row per checkpoint (``checkpoints: all``) or for the baseline and the final model; an FP32
checkpoint is measured once as ``fp32``, a quantized one once per target. How a target's
accuracy is measured on this CPU, and whether its CPU latency means anything, comes from the
target table (``cpu_accuracy``, ``cpu_latency_meaningful``, and ``cpu_classes`` against this
host's CPU class from :mod:`edgecnn.cpu`: an ``ort-x86-vnni`` row on an AVX2-only host is
measured in reference semantics and gets no latency).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Optional

import numpy as np

from edgecnn import cpu
from edgecnn.data.images import iter_batches
from edgecnn.export.parity import run_onnx
from edgecnn.measure.accuracy import ranked_classes
from edgecnn.measure.latency import measure_in_subprocess
from edgecnn.pack import pack_file
from edgecnn.pipeline.checkpoint import Checkpoint
from edgecnn.pipeline.stages.export import export_checkpoint
from edgecnn.pipeline.state import RunState, StageOutcome
from edgecnn.recipe import Stage as RecipeStage
from edgecnn.records import ResultRow
from edgecnn.report import accuracy_drops
from edgecnn.stats import drop_bound
from edgecnn.targets import cpu_runtime, get_target

FP32 = "fp32"  # the row target of a checkpoint that is not quantized


def cpu_accuracy(target: str) -> str:
    """How accuracy of a ``target`` row is measured here: "optimized" or "reference" Q/DQ semantics."""
    return "optimized" if target == FP32 else get_target(target).accuracy_semantics_on(cpu.host_class())


def cpu_latency_meaningful(target: str) -> bool:
    return target == FP32 or get_target(target).latency_meaningful_on(cpu.host_class())


def measurement_notes(targets: list[str]) -> list[str]:
    """Notes for the report: targets measured in reference semantics, targets with no CPU latency."""
    notes = []
    host = cpu.host_class()
    for name in targets:
        target = get_target(name)
        if target.cpu_accuracy == "optimized" and not target.runs_on(host):
            notes.append(
                f"{name} rows: top-1 and agreement in reference Q/DQ semantics, no latency: this CPU (class {host}) "
                f"does not run {name}'s int8 kernels (it is for {', '.join(target.cpu_classes)})"
            )
        if target.cpu_accuracy == "reference":
            notes.append(
                f"{name} rows: top-1 and agreement measured in reference Q/DQ semantics (ONNX Runtime with graph "
                "optimizations off: DequantizeLinear -> float op -> QuantizeLinear), what the device computes; "
                "ONNX Runtime's fused x86 int8 kernels saturate with signed-int8 activations on CPUs without VNNI"
            )
        if not target.cpu_latency_meaningful:
            notes.append(
                f"{name} rows: no latency: CPU time of a {name} Q/DQ model says nothing about its "
                f"{target.engine or target.backend} engine; time the engine on the device with 'edgecnn compile' and 'edgecnn bench'"
            )
    return notes


def _labels(state: RunState) -> Optional[np.ndarray]:
    if state.eval_arrays is not None:
        return state.eval_labels
    if state.eval_stream is not None and state.eval_stream.labelled:
        return np.array([label for _, label in state.eval_stream.items], dtype=np.int64)
    return None


def row_runtime(target: str) -> str:
    """The runtime a row is measured in on this CPU: FP32 rows in ONNX Runtime (the one baseline),
    a CPU target's rows in its own runtime (ONNX Runtime or OpenVINO)."""
    return cpu_runtime(None if target == FP32 else get_target(target))


def _predict(state: RunState, path: Path, threads: int, optimize: bool, backend: str = "ort") -> Optional[np.ndarray]:
    """Logits on the evaluation images (else calibration images); None without images. ``optimize``:
    on the runtime's own kernels (``backend``'s); otherwise ONNX Runtime's reference semantics."""
    if optimize and backend != "ort":
        from edgecnn.measure.accuracy import onnx_predictor

        predict, _ = onnx_predictor(path, threads, backend=backend)

        def run(x):
            return np.concatenate([predict(np.ascontiguousarray(x[i:i + 32])) for i in range(0, len(x), 32)])
    else:
        def run(x):
            return run_onnx(path, x, batch_size=32, threads=threads, optimize=optimize)

    if state.eval_arrays is not None:
        return run(state.eval_arrays)
    if state.eval_stream is not None:
        return np.concatenate([run(x) for x, _ in iter_batches(state.eval_stream, state.preprocess, 64)])
    if state.calib_arrays is not None:
        return run(state.calib_arrays)
    return None


class _Rows:
    """Measures rows, reusing the numbers of an identical checkpoint and the exported artifacts."""

    def __init__(self, state: RunState, config, opset: int):
        self.state, self.config, self.opset = state, config, opset
        self.seen: dict[tuple[str, str], dict] = {}
        self.baseline_pred: Optional[np.ndarray] = None
        self.baseline_correct: Optional[np.ndarray] = None

    @property
    def latency_measurements(self) -> int:
        return sum(v.get("latency_ms_median") is not None for v in self.seen.values())

    def values(self, ck: Checkpoint, target: str) -> dict:
        key = (ck.fingerprint, target)
        if key not in self.seen:
            path = self._onnx(ck, target)
            ecnn = path.with_suffix(".ecnn")  # every row's shipped column measures a real file beside its ONNX
            values = self._measure(path, target, ecnn)
            values["onnx"] = os.path.relpath(path, self.state.work)
            values["ecnn"] = os.path.relpath(ecnn, self.state.work)
            for artifact in self.state.artifacts.values():  # e.g. the fp32 row of a float final stage
                if ck is self.state.final and artifact.onnx == values["onnx"]:
                    artifact.ecnn = values["ecnn"]
            self.seen[key] = values
        return dict(self.seen[key])

    def _onnx(self, ck: Checkpoint, target: str) -> Path:
        state = self.state
        if ck is state.final and target in state.artifacts:
            return state.work / state.artifacts[target].onnx
        if ck is state.final and target == FP32 and state.artifacts:
            return state.work / next(iter(state.artifacts.values())).onnx
        rel = "fp32/model.onnx" if ck is state.baseline else f"checkpoints/{ck.stage.replace('#', '-')}-{target}.onnx"
        export_target = target if target != FP32 else state.recipe.targets[0]
        return export_checkpoint(state, ck, state.work / rel, export_target, self.opset, 1, parity=True).path

    def _measure(self, path: Path, target: str, ecnn: Path) -> dict:
        config, state = self.config, self.state
        pack_file(path, ecnn, force=True)  # written into the output folder: the shipped column measures a real file
        shipped = ecnn.stat().st_size
        values: dict = {"onnx_bytes": path.stat().st_size, "shipped_bytes": shipped}
        if cpu_latency_meaningful(target):
            lat = _time(path, backend=row_runtime(target), threads=config.threads or 0, warmup_s=config.warmup_seconds,
                        iterations=config.latency_runs, warmup=config.warmup)
            values.update(latency_ms_median=float(lat.median_ms), latency_ms_p90=float(lat.p90_ms), runtime=lat.runtime)
            state.latency_warnings.extend(f"{path.name}: {w}" for w in lat.warnings)
        logits = _predict(state, path, config.threads or 0, optimize=cpu_accuracy(target) == "optimized",
                          backend=row_runtime(target))
        if logits is not None:
            labels = _labels(state)
            if labels is not None:
                top5 = ranked_classes(logits)
                values["top1"] = float((top5[:, 0] == labels).mean() * 100.0)
                values["top5"] = float((top5 == labels[:, None]).any(axis=1).mean() * 100.0)
                correct = top5[:, 0] == labels
                if self.baseline_correct is None:
                    self.baseline_correct = correct
                elif len(correct) > 1:  # paired on the same images: the drop and its one-sided 95 % bounds
                    bound = drop_bound(self.baseline_correct, correct)
                    values["drop_upper95"] = bound.upper
                    values["drop_bound"] = bound.to_dict()
            if self.baseline_pred is None:
                self.baseline_pred = logits.argmax(1)
            values["agreement"] = float((logits.argmax(1) == self.baseline_pred).mean() * 100.0)
        return values


def _time(path: Path, **settings):
    """Here, or on the device of ``compress --measure-on`` (the same library timer, run by its agent)."""
    from edgecnn.measure.on_device import measuring_device, time_on_device

    device = measuring_device()
    if device is None:
        return measure_in_subprocess(path, **settings)
    from edgecnn.measure.latency import LatencySettings

    return time_on_device(device, path, LatencySettings(**settings))


class MeasureStage:
    kind = "measure"
    own_progress = True  # its own progress bar (one live display at a time)

    def run(self, state: RunState, spec: RecipeStage) -> StageOutcome:
        config = spec.config
        export = state.recipe.stage("export")
        rows = _Rows(state, config, export.config.opset if export else 17)
        chosen = state.checkpoints if config.checkpoints == "all" else [state.baseline, state.final]
        todo = [(ck, target) for ck in chosen for target in (state.recipe.targets if ck.quantized else [FP32])]
        with state.console.bar("measuring", len(todo)) as step:
            for n, (ck, target) in enumerate(todo):
                step(n, len(todo), f"{ck.stage} {target}")
                state.results.append(ResultRow(ck.stage, target, **ck.stats, **rows.values(ck, target)))
            step(len(todo), len(todo))
        _note_device(state)
        measured_targets = [t for t in state.recipe.targets if any(row.target == t for row in state.results)]
        state.notes.extend(measurement_notes(measured_targets))
        if state.latency_warnings:
            state.notes.append(
                f"latency varied more than usual in {len(state.latency_warnings)} of {rows.latency_measurements} measurements "
                "(a busy machine?): quote the medians"
            )
        _drop_intermediate_files(state)
        # Without an evaluation set agreement is measured on calibration images: the report says so.
        state.data_info["agreement_on"] = "evaluation images" if state.eval_set is not None else "calibration images"
        metric = "top1" if any(r.top1 is not None for r in state.results) else "agreement"
        for warning in accuracy_drops([r.to_dict() for r in state.results], config.warn_drop, metric):
            state.warn(warning)
        last, base = state.results[-1], state.results[0]
        acc = f", top-1 {last.top1:.1f} % (baseline {base.top1:.1f} %)" if last.top1 is not None else ""
        lat = f"{last.latency_ms_median:.3f} ms" if last.latency_ms_median is not None else "-"
        return StageOutcome(f"{len(state.results)} rows; final {last.target}: {lat}{acc}")


def _drop_intermediate_files(state: RunState) -> None:
    """Checkpoint ONNX exports served their purpose; their packed .ecnn files stay, because each
    row's shipped column names a file that exists (and ``edgecnn unpack`` gives the ONNX back)."""
    checkpoints_dir = state.work / "checkpoints"
    if checkpoints_dir.is_dir():
        for path in checkpoints_dir.iterdir():
            if path.suffix != ".ecnn":
                shutil.rmtree(path) if path.is_dir() else path.unlink()
        for row in state.results:
            if row.onnx and row.onnx.startswith("checkpoints/"):
                row.onnx = None


def _note_device(state: RunState) -> None:
    from edgecnn.measure.on_device import identity, measuring_device, probe_device

    device = measuring_device()
    if device is not None:
        state.notes.append(f"latency measured on {identity(probe_device(device))}")
