"""Top-1/top-5 accuracy on an image folder, streaming, with the model's own preprocessing.

ONNX files are evaluated in ONNX Runtime with the preprocessing stored in their metadata
(torch-free: this runs on the device). Any other model plugs in as a ``predict(images) ->
logits`` function (``edgecnn eval`` does that for zoo models). With a reference model, the
report also gives how often the two agree on top-1: for a compressed model that number is
more sensitive than accuracy on a small sample.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Optional, Union

import numpy as np

from edgecnn.errors import UserError

Predict = Callable[[np.ndarray], np.ndarray]


def ranked_classes(logits: np.ndarray, k: int = 5) -> np.ndarray:
    """The ``k`` best classes per row, best first; equal logits rank by class index (as ``argmax``).

    An int8 model's logits are quantized, so two classes often tie at the top: every top-1 /
    top-5 / agreement edgecnn reports breaks ties by this one rule, so one file scores the same
    in every tool and the count does not depend on a sort's arbitrary order."""
    logits = np.asarray(logits)
    return np.argsort(-logits, axis=1, kind="stable")[:, :min(k, logits.shape[1])]


@dataclass
class AccuracyReport:
    model: str
    data: str
    samples: int
    labelled: bool
    top1: Optional[float]  # fraction
    top5: Optional[float]
    reference: Optional[str] = None
    agreement: Optional[float] = None  # top-1 agreement with the reference model
    reference_top1: Optional[float] = None
    preprocess: Optional[dict] = None
    # "reference": ONNX Runtime with graph optimizations off, so Q/DQ run as DequantizeLinear ->
    # float op -> QuantizeLinear (the ONNX definition); "runtime": ORT's own int8 kernels.
    semantics: Optional[str] = None
    note: Optional[str] = None  # why top-1 is missing although the data has labels
    cpu_class: Optional[str] = None  # edgecnn.cpu class of the CPU whose ONNX Runtime ran the file
    warning: Optional[str] = None  # one line: the numbers are not those of the file's deployment
    max_abs_logit_diff: Optional[float] = None  # largest |logit - reference logit| over the images
    device: Optional[str] = None  # where the model ran, when not on this machine

    def to_dict(self) -> dict:
        return asdict(self)

    def summary(self) -> str:
        name = Path(self.model).name if self.model.endswith(".onnx") else self.model
        parts = [f"{name} on {self.samples} images"]
        if self.top1 is not None:
            parts.append(f"top-1 {self.top1 * 100:.2f}%, top-5 {self.top5 * 100:.2f}%")
        if self.agreement is not None:
            ref = f" (reference top-1 {self.reference_top1 * 100:.2f}%)" if self.reference_top1 is not None else ""
            parts.append(f"top-1 agreement with {Path(self.reference).name} {self.agreement * 100:.2f}%{ref}")
        if self.max_abs_logit_diff is not None:
            parts.append(f"max abs logit difference {self.max_abs_logit_diff:.4g}")
        if self.device:
            parts.append(f"ran on {self.device}")
        if self.semantics == "reference":
            parts.append("reference semantics (ONNX Runtime graph optimizations off)")
        if self.cpu_class:
            parts.append(f"CPU class {self.cpu_class}")
        if self.note:
            parts.append(f"no top-1: {self.note}")
        return ": ".join(parts[:1]) + (": " + "; ".join(parts[1:]) if len(parts) > 1 else "")


def onnx_predictor(onnx_path: Union[str, Path], threads: int = 0, opt_level: str = "all",
                   backend: str = "ort") -> tuple[Predict, list]:
    """(predict function, input shape) for an ONNX file in ONNX Runtime (or OpenVINO's CPU plugin,
    ``backend="openvino"``); a fixed-batch model is fed in chunks of its batch (the last one padded)."""
    from edgecnn.measure.latency import open_runner

    runner = open_runner(onnx_path, backend, threads, opt_level)
    static = runner.static_batch

    def predict(images: np.ndarray) -> np.ndarray:
        if not static:
            return np.asarray(runner.run(images), dtype=np.float32)
        outs = []
        for start in range(0, len(images), static):
            chunk = images[start:start + static]
            if len(chunk) < static:
                pad = np.zeros((static - len(chunk), *chunk.shape[1:]), dtype=chunk.dtype)
                outs.append(np.asarray(runner.run(np.concatenate([chunk, pad])), dtype=np.float32)[: len(chunk)])
            else:
                outs.append(np.asarray(runner.run(chunk), dtype=np.float32))
        return np.concatenate(outs)

    return predict, runner.input_shape


def onnx_preprocess(onnx_path: Union[str, Path], override=None):
    """The preprocessing for an ONNX file: ``override`` if given, else its metadata; the input
    size follows the file's input when they differ (resize/crop scaled to keep the ratio)."""
    from edgecnn.export.metadata import preprocess_from_metadata, read_metadata

    preprocess = override if override is not None else preprocess_from_metadata(read_metadata(onnx_path))
    if preprocess is None:
        raise UserError(
            f"'{onnx_path}' has no edgecnn preprocessing metadata; pass --preprocess torchvision|caffe|tf "
            "(and --preprocess-set KEY=VALUE) or re-export it with edgecnn export"
        )
    return preprocess


def _fit_size(preprocess, input_shape):
    dims = [d for d in input_shape[2:] if isinstance(d, int) and d > 0]
    if len(dims) == 2 and dims[0] == dims[1] and dims[0] != preprocess.input_size:
        return preprocess.replace(input_size=dims[0])
    return preprocess


def check_input_size(input_shape, preprocess, what: str) -> None:
    """UserError when an ONNX file with a fixed spatial size cannot take these images."""
    dims = [d for d in list(input_shape)[2:] if isinstance(d, int) and d > 0]
    if len(dims) == 2 and tuple(dims) != (preprocess.input_size, preprocess.input_size):
        raise UserError(
            f"{what} takes {dims[0]}x{dims[1]} inputs but the images are preprocessed to "
            f"{preprocess.input_size}x{preprocess.input_size}; compare models exported at the same --input-size"
        )


def subset(dataset, limit: Optional[int]):
    """Keep ``limit`` images spread evenly over the dataset (folders are sorted by class, so
    the first N images would cover only the first few classes)."""
    if limit is None or limit >= len(dataset):
        return dataset
    if limit < 1:
        raise UserError(f"--limit {limit} is not valid; give a positive number of images")
    keep = np.unique(np.linspace(0, len(dataset) - 1, int(limit)).round().astype(int))
    dataset.items = [dataset.items[i] for i in keep]
    return dataset


def evaluate(
    predict: Predict,
    data: Union[str, Path],
    preprocess,
    model_name: str = "model",
    reference: Optional[Predict] = None,
    reference_name: Optional[str] = None,
    limit: Optional[int] = None,
    batch_size: int = 32,
    progress: bool = True,
    num_outputs: Optional[int] = None,
    labels: Optional[list] = None,
) -> AccuracyReport:
    """Stream the images of ``data`` through ``predict`` (and ``reference``) and count hits.

    Top-1 is reported only when every class maps to a model output (:mod:`edgecnn.data.labels`);
    otherwise the run refuses, or with a reference reports agreement alone and says why.
    """
    from edgecnn.data.images import ImageFolder, iter_batches
    from edgecnn.data.labels import drop_labels, resolve_labels

    dataset = subset(ImageFolder(data), limit)
    if not dataset.labelled and reference is None:
        raise UserError(f"'{data}' has no labels (no class sub-folders); give labelled data or a --reference model")
    note = resolve_labels(dataset, num_outputs, labels)
    if note is not None:
        if reference is None:
            raise UserError(f"{note}; or pass --reference FP32.onnx to measure agreement only")
        drop_labels(dataset)
    seen = top1 = top5 = agree = ref_top1 = 0
    max_diff: Optional[float] = None
    bar = _progress(progress, len(dataset), f"eval {Path(model_name).name}")
    try:
        for images, labels in iter_batches(dataset, preprocess, batch_size):
            logits = predict(images)
            if logits.ndim != 2:
                logits = logits.reshape(len(images), -1)
            best = ranked_classes(logits)
            if labels is not None:
                top1 += int((best[:, 0] == labels).sum())
                top5 += int((best == labels[:, None]).any(axis=1).sum())
            if reference is not None:
                ref_logits = reference(images).reshape(len(images), -1)
                ref_best = ref_logits.argmax(axis=1)
                if ref_logits.shape == logits.shape:
                    max_diff = max(max_diff or 0.0, float(np.abs(logits - ref_logits).max()))
                agree += int((ref_best == best[:, 0]).sum())
                if labels is not None:
                    ref_top1 += int((ref_best == labels).sum())
            seen += len(images)
            bar.advance(len(images))
    finally:
        bar.close()
    labelled = dataset.labelled
    return AccuracyReport(
        model=str(model_name),
        data=str(data),
        samples=seen,
        labelled=labelled,
        top1=top1 / seen if labelled and seen else None,
        top5=top5 / seen if labelled and seen else None,
        reference=reference_name,
        agreement=agree / seen if reference is not None and seen else None,
        reference_top1=ref_top1 / seen if reference is not None and labelled and seen else None,
        preprocess=preprocess.to_dict() if hasattr(preprocess, "to_dict") else None,
        note=note,
        max_abs_logit_diff=max_diff,
    )


def evaluate_onnx(
    onnx_path: Union[str, Path],
    data: Union[str, Path],
    reference: Union[str, Path, None] = None,
    limit: Optional[int] = None,
    batch_size: int = 32,
    threads: int = 0,
    preprocess=None,
    progress: bool = True,
    semantics: str = "auto",
    overrides=(),
    device=None,
) -> AccuracyReport:
    """Accuracy of an ONNX file on an image folder (and agreement with a reference ONNX).

    ``semantics``: "reference" runs the file with ONNX Runtime's graph optimizations off (each
    Q/DQ computed as ONNX defines it: what TensorRT computes, up to rounding), "runtime" with
    the runtime's own fused int8 kernels (ONNX Runtime's; OpenVINO's for an OpenVINO target), "auto" chooses reference for a file whose metadata names a
    target measured that way (``cpu_accuracy`` in :mod:`edgecnn.targets`: ``trt``).
    ``overrides`` (``KEY=VALUE``, the CLI's --preprocess-set) apply last, on top of the
    metadata or preset fitted to the file's input size, so each one takes effect or is refused.
    ``device`` (an :class:`edgecnn.devices.Device` other than local) runs the file there, on
    that CPU's kernels, and compares every logit with this file in reference semantics here
    (or with ``reference``): the agreement and the largest logit difference.
    """
    if device is not None and device.kind != "local":
        return _evaluate_on_device(onnx_path, data, device, reference, limit, batch_size, threads, preprocess,
                                   progress, semantics, overrides)
    from edgecnn.export.metadata import labels_from_metadata, read_metadata

    from edgecnn import cpu

    asked = semantics
    semantics = resolve_semantics(onnx_path, semantics)
    host = cpu.host_class()
    warning = None
    unfit = _file_target(onnx_path)
    reason = unfit.unfit_reason(host) if unfit is not None else None
    if reason and semantics == "runtime":
        if host in unfit.saturates_on:
            raise UserError(f"{Path(onnx_path).name}: {reason}; measure it with --semantics reference "
                            f"(or auto), or on a {' / '.join(unfit.cpu_classes)} CPU")
        warning = f"{reason}; these numbers are this CPU's kernels, not the deployment's"
    elif reason and asked == "auto":
        warning = f"{reason}; measured in reference semantics instead"
    predict, shape = onnx_predictor(onnx_path, threads, opt_level="disable" if semantics == "reference" else "all",
                                    backend=runtime_backend(onnx_path, semantics))
    prep = _fit_size(onnx_preprocess(onnx_path, preprocess), shape)
    if overrides:
        prep = prep.with_overrides(overrides)
        check_input_size(shape, prep, f"'{onnx_path}'")
    ref_predict = None
    if reference is not None:
        ref_predict, ref_shape = onnx_predictor(reference, threads)
        check_input_size(ref_shape, prep, f"reference '{reference}'")
    report = evaluate(predict, data, prep, str(onnx_path), ref_predict, str(reference) if reference else None,
                      limit, batch_size, progress, num_outputs=_onnx_outputs(onnx_path),
                      labels=labels_from_metadata(read_metadata(onnx_path)))
    report.semantics = semantics
    report.cpu_class = host
    report.warning = warning
    return report


def _evaluate_on_device(onnx_path, data, device, reference, limit, batch_size, threads, preprocess, progress,
                        semantics, overrides) -> AccuracyReport:
    from edgecnn.export.metadata import labels_from_metadata, read_metadata

    cpu_class = getattr(device, "cpu_class", None)  # None: the kind does not know its CPU before it runs
    semantics = resolve_semantics(onnx_path, semantics, cpu_class)
    ref_path = reference if reference is not None else onnx_path
    ref_predict, shape = onnx_predictor(ref_path, threads, opt_level="all" if reference is not None else "disable")
    prep = _fit_size(onnx_preprocess(onnx_path, preprocess), shape)
    if overrides:
        prep = prep.with_overrides(overrides)
    check_input_size(shape, prep, f"'{ref_path}'")
    opt_level = "disable" if semantics == "reference" else "all"
    backend = runtime_backend(onnx_path, semantics)
    from edgecnn.measure.on_device import probe_device

    probe_device(device, backend)
    with device.stream(device.put(Path(onnx_path)), threads, opt_level, backend) as stream:
        report = evaluate(stream.send, data, prep, str(onnx_path), ref_predict,
                          str(reference) if reference else "reference semantics", limit, batch_size, progress,
                          num_outputs=_onnx_outputs(onnx_path), labels=labels_from_metadata(read_metadata(onnx_path)))
    report.semantics = semantics
    report.device = device.name
    report.cpu_class = cpu_class
    return report


SEMANTICS = ("auto", "reference", "runtime")


def resolve_semantics(onnx_path: Union[str, Path], semantics: str = "auto", cpu_class: Optional[str] = None) -> str:
    """"reference" or "runtime" for ``onnx_path`` run on a CPU of ``cpu_class`` (default: this
    host's; a device passes its own), see :func:`evaluate_onnx`."""
    if semantics not in SEMANTICS:
        raise UserError(f"unknown semantics '{semantics}'; choose one of {', '.join(SEMANTICS)}")
    if semantics != "auto":
        return semantics
    from edgecnn import cpu

    target = _file_target(onnx_path)
    if target is None:
        return "runtime"
    return "runtime" if target.accuracy_semantics_on(cpu_class or cpu.host_class()) == "optimized" else "reference"


def runtime_backend(onnx_path: Union[str, Path], semantics: str) -> str:
    """The runtime that computes ``onnx_path`` in ``semantics``: its target's CPU runtime for
    "runtime" (ORT or OpenVINO), ONNX Runtime with optimizations off for "reference"."""
    from edgecnn.targets import cpu_runtime

    return cpu_runtime(_file_target(onnx_path)) if semantics == "runtime" else "ort"


def _file_target(onnx_path: Union[str, Path]):
    from edgecnn.export.metadata import read_metadata, target_from_metadata

    return target_from_metadata(read_metadata(onnx_path))


def _onnx_outputs(onnx_path) -> Optional[int]:
    import onnx

    model = onnx.load(str(onnx_path), load_external_data=False)
    dims = model.graph.output[0].type.tensor_type.shape.dim
    last = dims[-1] if dims else None
    return int(last.dim_value) if last is not None and last.HasField("dim_value") else None


class _progress:
    """A rich progress bar on stderr, or nothing."""

    def __init__(self, enabled: bool, total: int, label: str):
        self._bar = None
        if enabled:
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn

            self._bar = Progress("[progress.description]{task.description}", BarColumn(), MofNCompleteColumn(),
                                 TimeRemainingColumn(), console=Console(stderr=True), transient=True)
            self._bar.start()
            self._task = self._bar.add_task(label, total=total)

    def advance(self, count: int):
        if self._bar is not None:
            self._bar.advance(self._task, count)

    def close(self):
        if self._bar is not None:
            self._bar.stop()
