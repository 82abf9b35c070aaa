"""Does the ONNX file compute what the PyTorch model computes?

Every export is run in ONNX Runtime on the same inputs as the PyTorch model; the report
gives the max absolute error, the max error relative to each sample's largest logit, and
top-1 agreement. Samples whose two best reference logits are closer than the numerical
error are counted as ties, not as disagreements (a random-init net can have near-equal
logits, and float32 reordering may legitimately swap them).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterable, Optional, Union

import numpy as np

from edgecnn.errors import UserError


class ParityError(UserError):
    """The exported model does not compute what the PyTorch model computes."""


@dataclass
class ParityReport:
    samples: int
    max_abs_error: float
    max_rel_error: float  # max |onnx - torch| / max |torch| per sample
    mean_abs_error: float
    top1_agreement: float  # fraction of samples with the same top-1 class (ties included)
    disagreements: int  # top-1 differs and the reference was not a tie
    ties: int  # swapped with a near-equal runner-up (margin below the typical error): not counted
    atol: Optional[float] = None
    rtol: Optional[float] = None
    min_agreement: float = 1.0
    passed: bool = True
    reasons: list[str] = field(default_factory=list)

    def summary(self) -> str:
        verdict = "ok" if self.passed else "FAILED"
        return (
            f"parity {verdict}: {self.samples} inputs, max abs error {self.max_abs_error:.3g}, "
            f"max rel error {self.max_rel_error:.3g}, top-1 agreement {self.top1_agreement * 100:.1f}%"
            + (f" ({self.ties} ties)" if self.ties else "")
        )

    def to_dict(self) -> dict:
        return asdict(self)

    def raise_if_failed(self, what: str = "ONNX export") -> "ParityReport":
        if not self.passed:
            raise ParityError(f"{what} disagrees with PyTorch: {'; '.join(self.reasons)} ({self.summary()})")
        return self


def compare_outputs(
    reference: np.ndarray,
    candidate: np.ndarray,
    atol: Optional[float] = 1e-3,
    rtol: Optional[float] = 1e-3,
    min_agreement: float = 1.0,
) -> ParityReport:
    """Compare two (N, classes) output arrays. ``atol``/``rtol`` None skips the element check
    (quantized exports differ elementwise by design; their agreement is what matters)."""
    ref = np.asarray(reference, dtype=np.float64).reshape(len(reference), -1)
    out = np.asarray(candidate, dtype=np.float64).reshape(len(candidate), -1)
    if ref.shape != out.shape:
        raise ParityError(f"output shapes differ: PyTorch {ref.shape} vs ONNX {out.shape}; the export is broken")
    diff = np.abs(ref - out)
    scale = np.maximum(np.abs(ref).max(axis=1), 1e-12)
    per_sample_err = diff.max(axis=1)
    rel = per_sample_err / scale
    ref_top = ref.argmax(axis=1)
    out_top = out.argmax(axis=1)
    same = ref_top == out_top
    if ref.shape[1] > 1:
        order = np.argsort(ref, axis=1)
        runner_up = order[:, -2]
        margin = ref[np.arange(len(ref)), order[:, -1]] - ref[np.arange(len(ref)), runner_up]
    else:
        runner_up = ref_top
        margin = np.full(len(ref), np.inf)
    # A tie: the candidate picked the reference's runner-up, and the two were closer than twice
    # the typical (median) error of this comparison. A broken export has large errors on some
    # samples, but its flips are not to a near-equal runner-up, so they still count.
    typical_err = float(np.median(per_sample_err)) if len(per_sample_err) else 0.0
    tie = (~same) & (out_top == runner_up) & (margin <= 2 * typical_err + 1e-6 * scale)
    disagreements = int(((~same) & ~tie).sum())
    n = len(ref)
    agreement = float(same.mean()) if n else 1.0
    reasons = []
    if atol is not None and rtol is not None:
        bad = diff > (atol + rtol * np.abs(ref))
        if bad.any():
            reasons.append(
                f"{int(bad.sum())} outputs exceed atol {atol:g} + rtol {rtol:g} (max abs error {diff.max():.3g})"
            )
    decided = n - int(tie.sum())
    effective = 1.0 if decided == 0 else (decided - disagreements) / decided
    if effective < min_agreement:
        reasons.append(
            f"top-1 agrees on {effective * 100:.1f}% of non-tied inputs, needed {min_agreement * 100:.1f}%"
        )
    return ParityReport(
        samples=n,
        max_abs_error=float(diff.max()) if diff.size else 0.0,
        max_rel_error=float(rel.max()) if n else 0.0,
        mean_abs_error=float(diff.mean()) if diff.size else 0.0,
        top1_agreement=agreement,
        disagreements=disagreements,
        ties=int(tie.sum()),
        atol=atol,
        rtol=rtol,
        min_agreement=min_agreement,
        passed=not reasons,
        reasons=reasons,
    )


def random_inputs(shape, count: int = 4, seed: int = 0) -> np.ndarray:
    """Seeded standard-normal NCHW inputs (what a normalised image looks like statistically)."""
    rng = np.random.default_rng(seed)
    return rng.standard_normal((count, *tuple(shape)[1:]), dtype=np.float32)


def run_torch(model, inputs: np.ndarray, batch_size: int = 8) -> np.ndarray:
    """Outputs of a PyTorch module (or LoadedModel) on numpy NCHW inputs, as float32 numpy."""
    import torch

    module = getattr(model, "module", model)
    was_training = module.training
    module.eval()
    outs = []
    try:
        with torch.inference_mode():
            for start in range(0, len(inputs), batch_size):
                result = module(torch.from_numpy(np.ascontiguousarray(inputs[start:start + batch_size])))
                if isinstance(result, (tuple, list)):
                    result = result[0]
                outs.append(result.detach().float().cpu().numpy())
    finally:
        module.train(was_training)
    return np.concatenate(outs, axis=0)


def run_onnx(onnx_path: Union[str, Path], inputs: np.ndarray, batch_size: int = 8, threads: int = 0,
             optimize: bool = True) -> np.ndarray:
    """Outputs of an ONNX file in ONNX Runtime (CPU), batch by batch; a static batch-1 model is
    fed one input at a time. ``optimize=False`` turns graph optimizations off: a Q/DQ model then
    runs in its reference semantics (DequantizeLinear -> float op -> QuantizeLinear), not on
    ONNX Runtime's fused int8 kernels."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
    options.log_severity_level = 3
    if not optimize:
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])
    model_input = session.get_inputs()[0]
    static_batch = model_input.shape[0] if isinstance(model_input.shape[0], int) else None
    step = static_batch or batch_size
    dtype = np.float16 if model_input.type == "tensor(float16)" else np.float32
    outs = []
    for start in range(0, len(inputs), step):
        chunk = np.ascontiguousarray(inputs[start:start + step], dtype=dtype)
        if static_batch and len(chunk) != static_batch:
            pad = np.zeros((static_batch - len(chunk), *chunk.shape[1:]), dtype=dtype)
            result = session.run(None, {model_input.name: np.concatenate([chunk, pad])})[0][: len(chunk)]
        else:
            result = session.run(None, {model_input.name: chunk})[0]
        outs.append(np.asarray(result, dtype=np.float32))
    return np.concatenate(outs, axis=0)


def _as_array(inputs) -> np.ndarray:
    if hasattr(inputs, "detach"):  # a torch tensor
        return inputs.detach().cpu().numpy().astype(np.float32)
    if isinstance(inputs, np.ndarray):
        return inputs.astype(np.float32, copy=False)
    if isinstance(inputs, Iterable):
        batches = [b[0] if isinstance(b, tuple) else b for b in inputs]
        return np.concatenate([_as_array(b) for b in batches], axis=0)
    raise UserError(f"parity inputs must be an NCHW array or batches of them, got {type(inputs).__name__}")


def check_parity(
    onnx_path: Union[str, Path],
    model,
    inputs=None,
    atol: Optional[float] = 1e-3,
    rtol: Optional[float] = 1e-3,
    min_agreement: float = 1.0,
    raise_on_failure: bool = True,
    input_shape=None,
    count: int = 4,
    seed: int = 0,
) -> ParityReport:
    """Run ``model`` (nn.Module or LoadedModel) and the ONNX file on the same ``inputs``.

    ``inputs``: NCHW float32 array / tensor / iterable of batches (``(images, labels)``
    tuples accepted); None means ``count`` seeded random inputs of ``input_shape`` (read
    from the ONNX file when not given). Raises :class:`ParityError` with the numbers when
    the outputs disagree, unless ``raise_on_failure`` is False.
    """
    if inputs is None:
        if input_shape is None:
            input_shape = onnx_input_shape(onnx_path)
        inputs = random_inputs(input_shape, count=count, seed=seed)
    array = _as_array(inputs)
    if array.ndim != 4:
        raise UserError(f"parity inputs must be NCHW (4-D), got shape {array.shape}")
    reference = run_torch(model, array)
    candidate = run_onnx(onnx_path, array, threads=1)  # a few inputs: one thread avoids pool contention
    report = compare_outputs(reference, candidate, atol=atol, rtol=rtol, min_agreement=min_agreement)
    if raise_on_failure:
        report.raise_if_failed()
    return report


def onnx_input_shape(onnx_path: Union[str, Path], default_batch: int = 1) -> tuple[int, ...]:
    """The first input's shape with symbolic dims replaced (batch -> ``default_batch``)."""
    import onnx

    model = onnx.load(str(onnx_path), load_external_data=False)
    dims = model.graph.input[0].type.tensor_type.shape.dim
    shape = []
    for i, d in enumerate(dims):
        if d.HasField("dim_value") and d.dim_value > 0:
            shape.append(int(d.dim_value))
        elif i == 0:
            shape.append(default_batch)
        else:
            raise UserError(f"'{onnx_path}' has a symbolic input dimension {i} ({d.dim_param}); give the input shape")
    return tuple(shape)
