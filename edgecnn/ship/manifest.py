"""A bundle's manifest and the facts both building and checking a bundle read (below both, so
that neither imports the other): file hashes, the model's inputs and outputs, whether this
CPU computes a target's golden output correctly."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

from edgecnn.errors import UserError
from edgecnn.fileio import file_sha256 as sha256  # noqa: F401 (this module's API: bundle and check use it)

BUNDLE_FORMAT = "edgecnn-bundle"
MANIFEST = "manifest.json"


def read_manifest(folder: Path) -> Optional[dict]:
    """The manifest of a bundle edgecnn wrote, or None (missing, unreadable, or someone else's file)."""
    path = Path(folder) / MANIFEST
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return manifest if isinstance(manifest, dict) and manifest.get("format") == BUNDLE_FORMAT else None


def onnx_io(onnx_path: Path) -> tuple[list, Optional[int]]:
    """(input dims, number of outputs of the first output's last axis or None if dynamic)."""
    import onnx

    model = onnx.load(str(onnx_path), load_external_data=False)
    initializers = {i.name for i in model.graph.initializer}
    inp = next(i for i in model.graph.input if i.name not in initializers)
    dims = [d.dim_value if d.HasField("dim_value") else d.dim_param for d in inp.type.tensor_type.shape.dim]
    out_dims = model.graph.output[0].type.tensor_type.shape.dim
    last = out_dims[-1] if len(out_dims) else None
    return dims, (last.dim_value if last is not None and last.HasField("dim_value") else None)


def refuse_saturating_host(target: str, what: str) -> None:
    """One line, exit 2, where this CPU's int8 kernels compute ``target``'s artifacts wrongly."""
    from edgecnn import cpu
    from edgecnn.targets import TARGETS

    known, host = TARGETS.get(target), cpu.host_class()
    if known is not None and host in known.saturates_on:
        raise UserError(f"cannot {what} on this CPU: {known.unfit_reason(host)}; run it on a "
                        f"{' / '.join(known.cpu_classes)} CPU, or ship the target for {host}")
