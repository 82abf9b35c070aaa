"""Runs a recipe: check inputs, load, run each stage in order (timed), write the report.

Outputs are built in a temporary folder next to the output folder and renamed into place at
the end (:class:`~edgecnn.pipeline.output.OutputFolder`), so a failed run leaves nothing
half-written and an existing folder as it was.
"""

from __future__ import annotations

import datetime as _dt
import os
import platform
import signal
import threading
import time
from pathlib import Path
from typing import Optional

import torch

from edgecnn import __version__, cpu
from edgecnn.errors import UserError
from edgecnn.fileio import write_text_atomic
from edgecnn.measure.sysinfo import environment
from edgecnn.pipeline.console import RunConsole
from edgecnn.pipeline.load import check_inputs, load
from edgecnn.pipeline.output import OutputFolder
from edgecnn.pipeline.stages import stage_for
from edgecnn.pipeline.state import RunState
from edgecnn.recipe import Recipe, default_output_dir, stage_kind
from edgecnn.records import ResultRow
from edgecnn.report import SCHEMA_VERSION, table_rows, write_report
from edgecnn.targets import get_target

# The console table keeps what fits in 100 columns; report.md has every column.
CONSOLE_COLUMNS = ("stage", "target", "nonzeros", "macs", "shipped_bytes", "latency_ms_median", "top1", "drop_upper95",
                   "agreement")
OUTPUT_FILES = ("report.json, report.md, accuracy.png, recipe.resolved.yaml, log.txt, <target>/model.onnx, <target>/model.ecnn, "
                "fp32/model.onnx + .ecnn, checkpoints/<stage>-<target>.ecnn")


def configured_torch_threads() -> int:
    """Torch threads for a run: ``EDGECNN_TORCH_THREADS`` if set, else torch's default.

    The count is fixed up front, never derived from the machine's load: float reductions
    (training, calibration) depend on the thread count, and a recipe must reproduce the same
    artifact bit for bit. On an oversubscribed machine set EDGECNN_TORCH_THREADS=1 (one thread
    is much faster than two fighting over a busy core).
    """
    value = os.environ.get("EDGECNN_TORCH_THREADS", "").strip()
    if not value:
        return torch.get_num_threads()
    if not value.isdigit() or int(value) < 1:
        raise UserError(f"EDGECNN_TORCH_THREADS={value!r} is not a positive integer; unset it or set e.g. 1")
    return int(value)


def _raise_on_sigterm():
    """Turn SIGTERM into SystemExit so that a killed run still removes its temp folder."""
    if threading.current_thread() is not threading.main_thread():
        return None

    def handler(signum, frame):
        raise SystemExit(128 + signum)

    return signal.signal(signal.SIGTERM, handler)


class Pipeline:
    """Runs one recipe. ``console`` is the screen's rich Console; log.txt records the permanent lines."""

    def __init__(self, recipe: Recipe, output: Optional[Path] = None, force: bool = False, console=None, progress: bool = True):
        self.recipe = recipe
        self.output = Path(output or recipe.output or default_output_dir(recipe))
        self.force = force
        self.console = RunConsole(console, progress)

    def plan(self) -> list[str]:
        """What a run would do, one line each (``--dry-run``)."""
        r = self.recipe
        lines = [f"model: {r.model.name} {r.model.options or ''}".rstrip()]
        if r.embedded:
            e = r.data.embedded
            lines.append(
                f"weights: none given -> embedded digits baseline ({e.epochs} epochs at {e.input_size} px, seed {e.seed}, "
                "cached); accuracy is on digits, not ImageNet"
            )
        else:
            lines.append(f"weights: {r.model.weights}")
            lines.append(f"calibration: {r.data.calib or '-'} (up to {r.data.calib_images} images)")
            lines.append(f"evaluation: {r.data.eval or '- (no labelled data: agreement with FP32 only)'}")
        for i, stage in enumerate(r.stages, 1):
            cfg = stage.config.model_dump(mode="json", exclude_defaults=True)
            lines.append(f"stage {i}: {stage.name} {cfg if cfg else ''}".rstrip())
        lines.append(f"targets: {', '.join(r.targets)}")
        lines.append(f"output: {self.output} ({OUTPUT_FILES})")
        return lines

    def input_files(self) -> list[str]:
        """What the run reads (model file, weights, image folders, recipe): its output never replaces them."""
        from edgecnn.outputs import model_input_files

        r = self.recipe
        ship = r.stage("ship")
        found = [*model_input_files(r.model.name, r.model.weights), r.data.calib, r.data.train, r.data.eval, r.source,
                 getattr(ship.config, "labels", None) if ship else None]
        return [f for f in found if f and os.path.exists(os.path.expanduser(str(f)))]

    def run(self) -> dict:
        out = OutputFolder(self.output, self.force, inputs=self.input_files())
        out.check()
        check_inputs(self.recipe)
        start = time.perf_counter()
        work = out.open()
        threads = torch.get_num_threads()
        previous_sigterm = _raise_on_sigterm()
        try:
            torch.set_num_threads(configured_torch_threads())
            state = RunState(self.recipe, self.console, work)
            self._run_stages(state)
            report = build_report(state, time.perf_counter() - start)
            report["data"].update(_paths_from_output(report["data"], self.output))
            self._write(state, report)
            out.commit()
        except BaseException:
            out.abort()
            raise
        else:  # said only once the folder is in place (the commit re-checks the output path)
            self.console.print(f"[bold green]wrote[/] {self.output}/ (report.md, report.json, {', '.join(sorted(state.artifacts)) or 'no ONNX'})")
        finally:
            torch.set_num_threads(threads)
            if previous_sigterm is not None:
                signal.signal(signal.SIGTERM, previous_sigterm)
        return report

    def _run_stages(self, state: RunState, after_report: bool = False) -> None:
        if not after_report:
            load(state)
        for spec in self.recipe.stages:
            if stage_kind(spec.name).after_report != after_report:
                continue
            stage = stage_for(spec.name)
            t0 = time.perf_counter()
            if stage.own_progress:
                outcome = stage.run(state, spec)
            else:
                with self.console.status(f"{spec.name} ..."):
                    outcome = stage.run(state, spec)
            state.stage_done(spec.name, time.perf_counter() - t0, outcome)
        if not after_report and self.recipe.stage("measure") is None:  # the numbers that need no ONNX
            for ck in state.checkpoints:
                state.results.append(ResultRow(ck.stage, "fp32" if not ck.quantized else self.recipe.targets[0], **ck.stats))

    def _write(self, state: RunState, report: dict) -> None:
        work = state.work
        write_text_atomic(work / "recipe.resolved.yaml", self.recipe.to_yaml())
        measure = self.recipe.stage("measure")
        write_report(report, work, make_plot=measure.config.plot if measure else False)
        self._run_stages(state, after_report=True)  # e.g. ship: it reads the written report
        print_table(self.console, report)
        write_text_atomic(work / "log.txt", self.console.log_text())


def _paths_from_output(data: dict, output) -> dict:
    """The data folders relative to the output folder, so that ``ship`` and other readers of the
    folder find them from any working directory (the typed paths stay as typed)."""
    found = {}
    for key in ("calib", "eval", "train"):
        value = data.get(key)
        if data.get("source") == "user" and value and os.path.exists(os.path.expanduser(str(value))):
            found[key] = os.path.relpath(os.path.abspath(os.path.expanduser(str(value))), os.path.abspath(output))
    return {"from_output": found} if found else {}


def build_report(state: RunState, seconds: float) -> dict:
    """report.json (docs/report-schema.md) from the state of a finished run: the one place the
    typed artifacts and result rows become dicts."""
    recipe = state.recipe
    measure = recipe.stage("measure")
    threads = measure.config.threads if measure else None
    latency_note = (f"batch 1, ONNX Runtime CPU on {platform.machine()} ({os.cpu_count()} cores"
                    f"{', ' + str(threads) + ' threads' if threads else ''}; CPU class {cpu.host_class()})")
    return {
        "schema_version": SCHEMA_VERSION,
        "tool": {"name": "edgecnn", "version": __version__},
        "created_utc": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "total_seconds": round(seconds, 2),
        "model": {**state.model_info, "input_shape": list(state.input_shape), "preprocess": state.preprocess.to_dict()},
        "data": state.data_info,
        "targets": list(recipe.targets),
        "cpu_class": cpu.host_class(),
        "cpu_accuracy": {t: get_target(t).accuracy_semantics_on(cpu.host_class()) for t in recipe.targets},
        "recipe": "recipe.resolved.yaml",
        "latency_note": latency_note,
        "stages": state.stage_log,
        "results": [row.to_dict() for row in state.results],
        "artifacts": {target: artifact.to_dict() for target, artifact in state.artifacts.items()},
        "notes": state.notes,
        "warnings": state.warnings,
        "skipped_layers": state.skipped,
        "warn_drop": measure.config.warn_drop if measure else None,
        "environment": environment(threads),
    }


def print_table(console: RunConsole, report: dict) -> None:
    from rich.table import Table

    header, rows = table_rows(report, CONSOLE_COLUMNS)
    table = Table(title=f"{report['model']['name']}: results (full table in report.md)", title_justify="left")
    for i, title in enumerate(header):
        table.add_column(title, justify="left" if i < 2 else "right")
    for cells in rows:
        table.add_row(*cells)
    console.print(table)
    for note in report["notes"]:
        console.print(f"[dim]note: {note}[/]")


def run_recipe(recipe: Recipe, output: Optional[Path] = None, force: bool = False, console=None, progress: bool = True) -> dict:
    """Run ``recipe`` end to end and return the report dict (also written to the output folder)."""
    return Pipeline(recipe, output, force, console, progress).run()
