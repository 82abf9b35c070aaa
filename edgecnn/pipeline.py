"""The compression pipeline: recipe -> model -> stages -> ONNX per target -> measurements -> report.

:class:`Pipeline` runs a validated :class:`~edgecnn.recipe.Recipe`. Each model-changing
stage leaves a *checkpoint* (a copy of the model); ``export`` writes the final model for
every target, ``compile`` builds engines where the runtime exists, and ``measure`` gives
every checkpoint its params, non-zeros, MACs, ONNX and shipped bytes, latency, top-1/top-5
and top-1 agreement with the FP32 baseline.

Outputs are built in a temporary folder next to the output folder and renamed into place
at the end, so a failed run leaves nothing half-written and an existing folder as it was.
With no weights in the recipe the run uses the embedded digits baseline
(:mod:`edgecnn.data.embedded`) and says so everywhere.
"""

from __future__ import annotations

import copy
import datetime as _dt
import os
import shutil
import signal
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Optional

import numpy as np

from edgecnn import __version__, stages
from edgecnn.errors import UserError
from edgecnn.targets import get_target
from edgecnn.recipe import PIPELINE_STAGES, Recipe, default_output_dir
from edgecnn.report import SCHEMA_VERSION, current_umask, new_result, table_rows, write_report, write_text_atomic

# The console table keeps what fits in 100 columns; report.md has every column.
CONSOLE_COLUMNS = ("stage", "target", "nonzeros", "macs", "shipped_bytes", "latency_ms_median", "top1", "agreement")
EVAL_IN_MEMORY_BYTES = 512 * 2**20  # above this the evaluation set is streamed from disk


@dataclass
class Checkpoint:
    """The model as one stage left it."""

    stage: str
    module: Any
    fingerprint: str
    quantized: bool
    stats: dict = field(default_factory=dict)


class OutputFolder:
    """An output folder written atomically: build in ``.<name>.tmp-*`` beside it, then rename."""

    def __init__(self, path: Path, force: bool):
        self.path = Path(path)
        self.force = force
        self.tmp: Optional[Path] = None

    def check(self) -> None:
        """Refuse to overwrite an existing folder (or a file) unless --force."""
        if self.path.exists() and not self.path.is_dir():
            raise UserError(f"output path '{self.path}' is a file; choose another -o folder")
        if self.path.is_dir() and any(self.path.iterdir()) and not self.force:
            raise UserError(f"output folder '{self.path}' already exists; pass --force to replace it or choose another -o")

    def open(self) -> Path:
        self.check()
        parent = self.path.resolve().parent
        try:
            parent.mkdir(parents=True, exist_ok=True)
            self.tmp = Path(tempfile.mkdtemp(prefix=f".{self.path.name}.tmp-", dir=parent))
            os.chmod(self.tmp, 0o777 & ~current_umask())  # mkdtemp makes 0700; the result is a normal folder
        except OSError as exc:
            raise UserError(f"cannot create the output folder next to '{self.path}' ({exc.strerror}); choose another -o") from None
        return self.tmp

    def commit(self) -> None:
        """Swap the finished folder into place; the old one (with --force) is removed last."""
        old = None
        if self.path.exists():
            old = self.path.with_name(f".{self.path.name}.old-{os.getpid()}")
            os.replace(self.path, old)
        try:
            os.replace(self.tmp, self.path)
        except BaseException:
            if old is not None:
                os.replace(old, self.path)
            raise
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
        self.tmp = None

    def abort(self) -> None:
        if self.tmp is not None:
            shutil.rmtree(self.tmp, ignore_errors=True)
            self.tmp = None


def _raise_on_sigterm():
    """Turn SIGTERM into SystemExit so that a killed run still removes its temp folder."""
    if threading.current_thread() is not threading.main_thread():
        return None

    def handler(signum, frame):
        raise SystemExit(128 + signum)

    return signal.signal(signal.SIGTERM, handler)


def _fmt_summary(summary: dict, limit: int = 6) -> str:
    parts = []
    for key, value in list(summary.items())[:limit]:
        if isinstance(value, float):
            value = f"{value:.4g}"
        elif isinstance(value, (list, tuple, dict)):
            continue
        parts.append(f"{key}={value}")
    return ", ".join(parts)


def _evenly_spaced(count: int, limit: Optional[int]) -> list[int]:
    """Indices of ``limit`` images spread over the whole set: class-sorted folders keep every class."""
    if limit is None or limit >= count:
        return list(range(count))
    return sorted(set(np.linspace(0, count - 1, limit).round().astype(int).tolist()))


def _subset(dataset, indices: list[int]):
    sub = copy.copy(dataset)
    sub.items = [dataset.items[i] for i in indices]
    return sub


class Pipeline:
    """Runs one recipe. ``console`` is a rich Console (its recording becomes log.txt)."""

    def __init__(self, recipe: Recipe, output: Optional[Path] = None, force: bool = False, console=None, progress: bool = True):
        from rich.console import Console

        self.recipe = recipe
        self.output = Path(output or recipe.output or default_output_dir(recipe))
        self.force = force
        self.console = console or Console(record=True)
        self.progress = progress
        self.notes: list[str] = []
        self.stage_log: list[dict] = []
        self.checkpoints: list[Checkpoint] = []
        self.artifacts: dict[str, dict] = {}
        self.results: list[dict] = []
        self.data_info: dict = {}
        self.model_info: dict = {}
        self.latency_warnings: list[str] = []
        self._export_notes: dict[str, dict] = {}

    # --- planning -----------------------------------------------------------------------------

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
        lines.append(f"output: {self.output} (report.json, report.md, accuracy.png, recipe.resolved.yaml, log.txt, <target>/model.onnx)")
        return lines

    # --- run ----------------------------------------------------------------------------------

    def run(self) -> dict:
        out = OutputFolder(self.output, self.force)
        out.check()
        self._check_inputs()
        import torch

        start = time.perf_counter()
        work = out.open()
        threads = torch.get_num_threads()
        torch.set_num_threads(stages.busy_machine_threads())
        previous_sigterm = _raise_on_sigterm()
        try:
            self.work = work
            self._load()
            for stage in self.recipe.stages:
                self._run_stage(stage)
            if not any(s.name == "measure" for s in self.recipe.stages):
                self._profile_only()
            report = self._report(time.perf_counter() - start)
            write_text_atomic(work / "recipe.resolved.yaml", self.recipe.to_yaml())
            make_plot = getattr(self.recipe.stage("measure").config, "plot", True) if self.recipe.stage("measure") else False
            write_report(report, work, make_plot=make_plot)
            self._print_table(report)
            self.console.print(f"[bold green]wrote[/] {self.output}/ (report.md, report.json, {', '.join(sorted(self.artifacts)) or 'no ONNX'})")
            write_text_atomic(work / "log.txt", self.console.export_text(clear=False))
            out.commit()
        except BaseException:
            out.abort()
            raise
        finally:
            torch.set_num_threads(threads)
            if previous_sigterm is not None:
                signal.signal(signal.SIGTERM, previous_sigterm)
        return report

    def _check_inputs(self) -> None:
        """Cheap checks before any work: folders exist, flags fit together."""
        r = self.recipe
        for key in ("calib", "eval", "train"):
            value = getattr(r.data, key)
            if value is not None and not Path(value).expanduser().exists():
                raise UserError(f"data.{key}: '{value}' does not exist; give an image folder or a list file")
        if r.embedded:
            given = [k for k in ("calib", "eval") if getattr(r.data, k)]
            if given:
                flag = {"calib": "--calib", "eval": "--data"}[given[0]]
                raise UserError(
                    f"{flag} needs --weights: without weights edgecnn uses its embedded digits baseline, which your images do not fit"
                )
            if r.model.options.get("num_classes") not in (None, 10):
                raise UserError("--num-classes needs --weights: the embedded digits baseline has 10 classes")
        else:
            weights = r.model.weights
            if weights not in ("imagenet",) and not Path(weights).expanduser().is_file():
                raise UserError(f"weights file '{weights}' does not exist; give a .pth file or 'imagenet'")
            needs_calib = any(s.name in ("quantize", "shift", "channel_prune", "distill") for s in r.stages)
            if needs_calib and r.data.calib is None:
                raise UserError("quantization needs calibration images: pass --calib DIR (an image folder or a list file)")
        if any(s.name == "distill" for s in r.stages) and not r.embedded and r.data.train is None:
            raise UserError("stage distill needs labelled training images: set data.train in the recipe")

    # --- model and data -----------------------------------------------------------------------

    def _load(self) -> None:
        r = self.recipe
        t0 = time.perf_counter()
        if r.embedded:
            self._load_embedded()
        else:
            self._load_user()
        self.input_size = int(self.preprocess.input_size)
        self.input_shape = (1, 3, self.input_size, self.input_size)
        self._load_arrays()
        baseline = self._checkpoint("baseline", self.module)
        self.baseline = baseline
        self._stage_done("baseline", time.perf_counter() - t0, self.baseline_text, {})

    def _load_embedded(self) -> None:
        from edgecnn.data import embedded
        from edgecnn.data.images import ImageFolder
        from edgecnn.models import create, resolve_name

        r = self.recipe
        e = r.data.embedded
        name = resolve_name(r.model.name)
        options = {k: v for k, v in r.model.options.items() if v is not None and k != "num_classes"}

        def build():
            return create(name, num_classes=embedded.NUM_CLASSES, **options)

        build()  # fail fast on bad options before any training
        with self._progress_bar(f"training the {name} digits baseline", e.epochs) as advance:
            base = embedded.train_baseline(
                build, name, options, e.input_size, e.epochs, e.seed, e.max_train_images, progress=advance
            )
        self.module = base.module
        self.preprocess = base.preprocess
        self.labels = [f"digit_{d}" for d in range(embedded.NUM_CLASSES)]
        self.model_info = {
            "name": name,
            "options": options,
            "weights": f"embedded digits baseline (cache key {base.key})",
            "num_classes": embedded.NUM_CLASSES,
        }
        note = base.description
        self.console.print(f"[yellow]{note}[/]")
        self.notes.append(note)
        calib = ImageFolder(base.folders.train)
        if e.max_train_images:
            calib = _subset(calib, _evenly_spaced(len(calib), e.max_train_images))
        evalset = ImageFolder(base.folders.test)
        if e.max_test_images:
            evalset = _subset(evalset, _evenly_spaced(len(evalset), e.max_test_images))
        self.calib_set, self.eval_set, self.train_set = calib, evalset, calib
        self.data_info = {
            "source": "embedded-digits",
            "note": note,
            "calib": "embedded digits, train split",
            "eval": "embedded digits, held-out test split",
            "train": "embedded digits, train split",
        }
        how = "loaded from cache" if base.cached else f"trained in {base.train_seconds:.0f} s"
        self.baseline_text = f"digits baseline {how}: {base.torch_top1:.1f} % top-1 in PyTorch on {base.folders.n_test} test images"

    def _load_user(self) -> None:
        from edgecnn.data.images import ImageFolder
        from edgecnn.models import load_model

        r = self.recipe
        preprocess = r.model.preprocess
        if isinstance(preprocess, dict):
            from edgecnn.preprocess import Preprocess

            try:
                preprocess = Preprocess(**preprocess)
            except TypeError as exc:
                raise UserError(f"model.preprocess: {exc}") from None
        loaded = load_model(r.model.name, weights=r.model.weights, preprocess=preprocess, **r.model.options)
        self.module = loaded.module
        self.preprocess = loaded.preprocess
        self.labels = loaded.labels
        num_classes = getattr(loaded.module, "num_classes", None) or loaded.options.get("num_classes")
        self.model_info = {"name": loaded.name, "options": loaded.options, "weights": loaded.weights, "num_classes": num_classes}
        self.calib_set = ImageFolder(Path(r.data.calib).expanduser()) if r.data.calib else None
        self.eval_set = ImageFolder(Path(r.data.eval).expanduser()) if r.data.eval else None
        self.train_set = ImageFolder(Path(r.data.train).expanduser()) if r.data.train else None
        if self.eval_set is not None and not self.eval_set.labelled:
            self.notes.append(f"{r.data.eval} has no labels: top-1/top-5 not measured, agreement with FP32 only")
        self.data_info = {"source": "user", "note": None, "calib": r.data.calib, "eval": r.data.eval, "train": r.data.train}
        self.baseline_text = f"{loaded.name}, weights: {loaded.weights}"

    def _load_arrays(self) -> None:
        """Calibration and evaluation images, preprocessed once."""
        from edgecnn.data.images import iter_batches

        r = self.recipe
        self.calib_arrays = None
        if self.calib_set is not None:
            sub = _subset(self.calib_set, _evenly_spaced(len(self.calib_set), r.data.calib_images))
            self.calib_arrays = np.concatenate([x for x, _ in iter_batches(sub, self.preprocess, r.data.batch_size)])
        self.data_info["calib_images"] = 0 if self.calib_arrays is None else int(len(self.calib_arrays))
        self.eval_arrays = self.eval_labels = None
        self.eval_stream = None
        if self.eval_set is not None:
            sub = _subset(self.eval_set, _evenly_spaced(len(self.eval_set), r.data.eval_images))
            self.data_info["eval_images"] = len(sub)
            if len(sub) * 3 * self.input_size**2 * 4 > EVAL_IN_MEMORY_BYTES:
                self.eval_stream = sub
            else:
                xs, ys = [], []
                for x, y in iter_batches(sub, self.preprocess, r.data.batch_size):
                    xs.append(x)
                    ys.append(y)
                self.eval_arrays = np.concatenate(xs)
                self.eval_labels = np.concatenate(ys) if ys[0] is not None else None
        else:
            self.data_info["eval_images"] = 0
        self.data_info["labelled"] = bool(self.eval_set is not None and self.eval_set.labelled)

    def _torch_batches(self, arrays: Optional[np.ndarray]):
        import torch

        if arrays is None:
            return None
        bs = self.recipe.data.batch_size
        return [torch.from_numpy(arrays[i : i + bs]) for i in range(0, len(arrays), bs)]

    # --- stages -------------------------------------------------------------------------------

    def _checkpoint(self, stage: str, module) -> Checkpoint:
        module.eval()
        stats = stages.profile(module, self.input_size)
        ck = Checkpoint(stage, copy.deepcopy(module), stages.fingerprint(module), stages.is_quantized(module), stats)
        for p in ck.module.parameters():
            p.requires_grad_(False)
        self.checkpoints.append(ck)
        return ck

    def _stage_done(self, name: str, seconds: float, text: str, summary: dict, layers: Optional[list] = None) -> None:
        self.stage_log.append({"name": name, "seconds": round(seconds, 3), "text": text, "summary": summary, "layers": layers or []})
        self.console.print(f"[green]✓[/] {name:<14} {text}  [dim]({seconds:.1f} s)[/]")

    def _run_stage(self, stage) -> None:
        t0 = time.perf_counter()
        summary, layers = {}, []
        if stage.name == "measure":  # has its own progress bar (one live display at a time)
            text = self._measure(stage.config)
        elif stage.name == "distill":  # the trainer shows its own progress
            text, summary, layers = self._transform(stage)
        else:
            with self.console.status(f"{stage.name} ..."):
                if stage.name == "export":
                    text = self._export(stage.config)
                elif stage.name == "compile":
                    text = self._compile(stage.config)
                else:
                    text, summary, layers = self._transform(stage)
        self._stage_done(stage.name, time.perf_counter() - t0, text, summary, layers)

    def _transform(self, stage):
        """A pass or distillation: runs on the current model and leaves a checkpoint."""
        import torch
        from edgecnn.passes.registry import PassContext

        calib = self._torch_batches(self.calib_arrays)
        example = torch.from_numpy(self.calib_arrays[:1]) if self.calib_arrays is not None else torch.zeros(self.input_shape)
        ctx = PassContext(example_input=example, calib_batches=calib, teacher=self.baseline.module, progress=False)
        if stage.name == "distill":
            if self.train_set is None:
                raise UserError("stage distill needs labelled training images: set data.train in the recipe")
            model, result = stages.distill(self.module, self.baseline.module, self.train_set, self.preprocess, stage.config, flip=not self.recipe.embedded)
            ctx.report(SimpleNamespace(summary={"steps": result.steps, "epochs": result.epochs_done, **{k: v for k, v in result.final.items() if isinstance(v, (int, float))}}, rows=[]))
        else:
            model = stages.run_transform(stage.name, self.module, stage.config, ctx)
        if model is None:
            model = self.module
        self.module = model
        name = stage.name
        if any(c.stage == name for c in self.checkpoints):
            name = f"{name}#{sum(c.stage.split('#')[0] == stage.name for c in self.checkpoints) + 1}"
        ck = self._checkpoint(name, model)
        summary: dict = {}
        layers: list = []
        for rep in ctx.reports:
            summary.update(rep.summary)
            layers.extend(rep.rows)
        prev = self.checkpoints[-2].stats
        text = _fmt_summary(summary) or stage.name
        if ck.stats["nonzeros"] != prev["nonzeros"]:
            text += f"; non-zeros {prev['nonzeros']:,} -> {ck.stats['nonzeros']:,}"
        if ck.fingerprint == self.checkpoints[-2].fingerprint:
            text += " (model unchanged)"
        return text, summary, layers

    def _metadata(self, precision: Optional[str], target: str) -> dict:
        """ONNX metadata_props: preprocessing, labels, weights, the recipe, the target."""
        from edgecnn.export.metadata import model_metadata

        loaded = SimpleNamespace(preprocess=self.preprocess, name=self.model_info["name"], weights=self.model_info["weights"], labels=self.labels)
        extra = {"edgecnn.target": target}
        if precision:  # Q/DQ exports write their own precision (int8, w6a8, ...)
            extra["edgecnn.precision"] = precision
        return model_metadata(loaded, recipe=self.recipe.to_dict(), extra=extra)

    def _parity_inputs(self) -> np.ndarray:
        if self.eval_arrays is not None:
            return self.eval_arrays[:16]
        if self.calib_arrays is not None:
            return self.calib_arrays[:16]
        return np.random.default_rng(0).standard_normal((4, *self.input_shape[1:]), dtype=np.float32)

    def _export_one(self, ck: Checkpoint, path: Path, target: str, config, parity: bool = True) -> Path:
        """Export one checkpoint; FP32 files are parity-checked by the exporter, Q/DQ ones in _export."""
        path.parent.mkdir(parents=True, exist_ok=True)
        if ck.quantized:
            result = stages.export_quantized(
                ck.module, path, target, self.input_shape, config.opset, config.batch, self._metadata(None, target),
                parity_inputs=self._parity_inputs(), parity=parity,
            )
            self._export_notes[str(path)] = result
        else:
            stages.export_fp32(
                ck.module, path, self.input_shape, config.opset, config.batch, self._metadata("fp32", target),
                parity_inputs=self._parity_inputs(), parity=parity,
            )
        return path

    def _export(self, config) -> str:
        final = self.checkpoints[-1]
        parts = []
        for target in self.recipe.targets:
            path = self._export_one(final, self.work / target / "model.onnx", target, config, parity=config.parity)
            entry = {"onnx": f"{target}/model.onnx", "precision": "qdq" if final.quantized else "fp32", "stage": final.stage}
            notes = self._export_notes.get(str(path), {})
            if notes.get("parity"):
                entry["parity"] = notes["parity"]
            if notes.get("lint"):
                entry["lint"] = notes["lint"]
            self.artifacts[target] = entry
            parts.append(f"{target} {stages.onnx_bytes(path) / 1e3:,.0f} kB")
        return "ONNX " + ", ".join(parts) + (" (parity checked)" if config.parity else "")

    def _compile(self, config) -> str:
        parts = []
        for target, entry in self.artifacts.items():
            res = stages.compile_target(self.work / entry["onnx"], target, self.work / target, config.fp16)
            engine_kind = get_target(target).engine
            if res["engine"] is None and engine_kind is not None and config.require:
                raise UserError("compile: TensorRT is not installed; install it or set compile.require: false")
            entry["engine"] = os.path.relpath(res["engine"], self.work) if res["engine"] else None
            if res["note"]:
                entry["compile_note"] = res["note"]
                if engine_kind is not None:
                    self.notes.append(res["note"])
            parts.append(f"{target}: {'engine ' + entry['engine'] if entry['engine'] else 'no engine'}")
        return "; ".join(parts)

    # --- measure ------------------------------------------------------------------------------

    def _predict(self, onnx_path: Path, threads: Optional[int]) -> Optional[np.ndarray]:
        if self.eval_arrays is not None:
            return stages.predict_onnx(onnx_path, self.eval_arrays, threads or 0)
        if self.eval_stream is not None:
            from edgecnn.data.images import iter_batches

            return np.concatenate([stages.predict_onnx(onnx_path, x, threads or 0) for x, _ in iter_batches(self.eval_stream, self.preprocess, 64)])
        if self.calib_arrays is not None:
            return stages.predict_onnx(onnx_path, self.calib_arrays, threads or 0)
        return None

    def _labels_array(self) -> Optional[np.ndarray]:
        if self.eval_arrays is not None:
            return self.eval_labels
        if self.eval_stream is not None and self.eval_stream.labelled:
            return np.array([label for _, label in self.eval_stream.items], dtype=np.int64)
        return None

    def _measure_onnx(self, path: Path, config) -> dict:
        values: dict = {"onnx_bytes": stages.onnx_bytes(path), "shipped_bytes": stages.shipped_bytes(path)}
        lat = stages.latency(path, config.latency_runs, config.warmup, config.warmup_seconds, config.threads)
        values.update(latency_ms_median=lat["median"], latency_ms_p90=lat["p90"], runtime=lat["runtime"])
        self.latency_warnings.extend(f"{path.name}: {w}" for w in lat["warnings"])
        logits = self._predict(path, config.threads)
        if logits is not None:
            labels = self._labels_array()
            if labels is not None:
                top5 = np.argsort(-logits, axis=1)[:, :5]
                values["top1"] = float((top5[:, 0] == labels).mean() * 100.0)
                values["top5"] = float((top5 == labels[:, None]).any(axis=1).mean() * 100.0)
            if self._baseline_pred is None:
                self._baseline_pred = logits.argmax(1)
            values["agreement"] = float((logits.argmax(1) == self._baseline_pred).mean() * 100.0)
        return values

    def _measure(self, config) -> str:
        self._baseline_pred = None
        export_cfg = self.recipe.stage("export").config if self.recipe.stage("export") else None
        opset = export_cfg.opset if export_cfg else 17
        fake_cfg = SimpleNamespace(opset=opset, batch=1)
        final = self.checkpoints[-1]
        chosen = self.checkpoints if config.checkpoints == "all" else [self.checkpoints[0], final]
        seen: dict[tuple[str, str], dict] = {}
        todo = []
        for ck in chosen:
            targets = self.recipe.targets if ck.quantized else ["fp32"]
            for target in targets:
                todo.append((ck, target))
        with self._progress_bar("measuring", len(todo)) as advance:
            for n, (ck, target) in enumerate(todo, 1):
                key = (ck.fingerprint, target)
                if key in seen:
                    values = dict(seen[key])
                    values["onnx"] = seen[key]["onnx"]
                else:
                    if ck is final and target in self.artifacts:
                        path = self.work / self.artifacts[target]["onnx"]
                    elif ck is final and target == "fp32" and self.artifacts:
                        path = self.work / next(iter(self.artifacts.values()))["onnx"]
                    else:
                        rel = "fp32/model.onnx" if ck is self.checkpoints[0] else f"checkpoints/{ck.stage.replace('#', '-')}-{target}.onnx"
                        path = self._export_one(ck, self.work / rel, target if target != "fp32" else self.recipe.targets[0], fake_cfg)
                    values = self._measure_onnx(path, config)
                    values["onnx"] = os.path.relpath(path, self.work)
                    seen[key] = values
                self.results.append(new_result(ck.stage, target, **ck.stats, **values))
                advance(n, len(todo), f"{ck.stage} {target}")
        if any(get_target(t).backend == "tensorrt" for t in self.recipe.targets) and not stages.tensorrt_available():
            self.notes.append(
                "trt rows: the TensorRT Q/DQ model timed in ONNX Runtime CPU here (TensorRT is not installed); "
                "time the engine on the device with 'edgecnn compile' and 'edgecnn bench'"
            )
        if self.latency_warnings:
            self.notes.append(
                f"latency varied more than usual in {len(self.latency_warnings)} of {len(seen)} measurements "
                "(a busy machine?): quote the medians"
            )
        checkpoints_dir = self.work / "checkpoints"
        if checkpoints_dir.is_dir():  # intermediate files served their purpose: ship only the artifacts
            shutil.rmtree(checkpoints_dir)
            for row in self.results:
                if row["onnx"] and row["onnx"].startswith("checkpoints/"):
                    row["onnx"] = None
        last = self.results[-1]
        base = self.results[0]
        acc = f", top-1 {last['top1']:.1f} % (baseline {base['top1']:.1f} %)" if last.get("top1") is not None else ""
        lat = f"{last['latency_ms_median']:.3f} ms" if last.get("latency_ms_median") is not None else "-"
        return f"{len(self.results)} rows; final {last['target']}: {lat}{acc}"

    def _profile_only(self) -> None:
        for ck in self.checkpoints:
            self.results.append(new_result(ck.stage, "fp32" if not ck.quantized else self.recipe.targets[0], **ck.stats))

    # --- report -------------------------------------------------------------------------------

    def _report(self, seconds: float) -> dict:
        import platform

        threads = self.recipe.stage("measure").config.threads if self.recipe.stage("measure") else None
        latency_note = f"batch 1, ONNX Runtime CPU on {platform.machine()} ({os.cpu_count()} cores{', ' + str(threads) + ' threads' if threads else ''})"
        return {
            "schema_version": SCHEMA_VERSION,
            "tool": {"name": "edgecnn", "version": __version__},
            "created_utc": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "total_seconds": round(seconds, 2),
            "model": {**self.model_info, "input_shape": list(self.input_shape), "preprocess": self.preprocess.to_dict()},
            "data": self.data_info,
            "targets": list(self.recipe.targets),
            "recipe": "recipe.resolved.yaml",
            "latency_note": latency_note,
            "stages": self.stage_log,
            "results": self.results,
            "artifacts": self.artifacts,
            "notes": self.notes,
        }

    def _print_table(self, report: dict) -> None:
        from rich.table import Table

        header, rows = table_rows(report, CONSOLE_COLUMNS)
        table = Table(title=f"{report['model']['name']}: results (full table in report.md)", title_justify="left")
        for i, title in enumerate(header):
            table.add_column(title, justify="left" if i < 2 else "right")
        for cells in rows:
            table.add_row(*cells)
        self.console.print(table)
        for note in self.notes:
            self.console.print(f"[dim]note: {note}[/]")

    # --- progress -----------------------------------------------------------------------------

    def _progress_bar(self, description: str, total: int):
        """A context manager yielding ``advance(done, total, text)`` backed by a rich bar."""
        from contextlib import contextmanager

        from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

        @contextmanager
        def bar():
            if not self.progress or not self.console.is_terminal:  # no bars in logs and pipes
                yield lambda *a: None
                return
            with Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"), TextColumn("{task.fields[info]}"), TimeElapsedColumn(), console=self.console, transient=True) as prog:
                task = prog.add_task(description, total=total, info="")

                def advance(done, total_, text=""):
                    prog.update(task, completed=done, total=total_, info=text)

                yield advance

        return bar()


def run_recipe(recipe: Recipe, output: Optional[Path] = None, force: bool = False, console=None, progress: bool = True) -> dict:
    """Run ``recipe`` end to end and return the report dict (also written to the output folder)."""
    return Pipeline(recipe, output, force, console, progress).run()


__all__ = ["Pipeline", "OutputFolder", "run_recipe", "PIPELINE_STAGES"]
