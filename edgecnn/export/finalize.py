"""The steps every export (FP32, Q/DQ, FP16) starts and ends with, written once.

Start: refuse to overwrite without ``--force``, insist on ``.onnx``. End: ``onnx.checker``
(full check), then the file is written next to its destination, verified there (parity
against PyTorch or against the FP32 model) and only then renamed onto the destination, so
a failed check never leaves a file a user could mistake for a good one.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Optional, TypeVar, Union

from edgecnn.errors import UserError
from edgecnn.export.metadata import save_onnx
from edgecnn.fileio import atomic_path

Report = TypeVar("Report")


def check_output(path: Union[str, Path], overwrite: bool) -> Path:
    """The output path as a Path; UserError when it exists without ``overwrite`` or is not .onnx."""
    path = Path(path)
    if path.exists() and not overwrite:
        raise UserError(f"'{path}' already exists; pass --force to overwrite it or choose another -o path")
    if path.suffix.lower() != ".onnx":
        raise UserError(f"output '{path}' should end in .onnx; e.g. -o {path.with_suffix('.onnx').name}")
    return path


def check_input_shape(input_shape) -> tuple[int, ...]:
    shape = tuple(int(s) for s in input_shape)
    if len(shape) != 4:
        raise UserError(f"input shape must be N,C,H,W (4 numbers), got {input_shape}")
    return shape


def finalize(
    proto,
    path: Path,
    what: str,
    verify: Optional[Callable[[Path], Report]] = None,
    before_write: Optional[Callable[[object], None]] = None,
    suffix: str = ".check.onnx",
) -> Optional[Report]:
    """Check ``proto`` (``what`` names it in the error), run ``before_write`` on it (a lint),
    save it beside ``path``, run ``verify`` on that file, then move it onto ``path``.
    Returns what ``verify`` returned (None without one)."""
    import onnx
    import onnx.shape_inference

    try:
        onnx.checker.check_model(proto, full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as exc:  # full_check infers shapes too
        raise UserError(f"{what} fails onnx.checker: {str(exc).splitlines()[0]}") from None
    if before_write is not None:
        before_write(proto)
    path.parent.mkdir(parents=True, exist_ok=True)
    report = None
    with atomic_path(path, suffix=suffix) as staging:  # verified in place, renamed only when it passes
        save_onnx(proto, staging)
        if verify is not None:
            report = verify(staging)
    return report
