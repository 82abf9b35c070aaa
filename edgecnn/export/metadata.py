"""ONNX ``metadata_props``: what an application needs to feed the model and read its output.

An exported file carries its preprocessing (``edgecnn.preprocess.*`` keys written by
:meth:`edgecnn.preprocess.Preprocess.to_metadata`), its class labels, the edgecnn version and
the recipe that produced it, so ``edgecnn eval model.onnx`` and an app on a Jetson can use it
without the Python model. Torch-free: the bench/eval side reads it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional, Union

from edgecnn.errors import UserError
from edgecnn.fileio import save_atomic

KEY_VERSION = "edgecnn.version"
KEY_MODEL = "edgecnn.model"
KEY_WEIGHTS = "edgecnn.weights"
KEY_LABELS = "edgecnn.labels"
KEY_RECIPE = "edgecnn.recipe"
KEY_INPUT_NAME = "edgecnn.input_name"
KEY_OUTPUT_NAME = "edgecnn.output_name"
KEY_PRECISION = "edgecnn.precision"


def _as_text(value: Any) -> str:
    """metadata_props values are strings: lists/dicts/tuples become JSON, the rest str()."""
    if isinstance(value, str):
        return value
    if isinstance(value, (list, tuple, dict, bool)) or value is None:
        return json.dumps(value, separators=(",", ":"), sort_keys=isinstance(value, dict))
    return str(value)


def set_metadata(model_proto, values: dict) -> None:
    """Merge ``values`` into an in-memory ``onnx.ModelProto``'s metadata_props (keys replaced)."""
    existing = {p.key: p.value for p in model_proto.metadata_props}
    existing.update({str(k): _as_text(v) for k, v in values.items() if v is not None})
    del model_proto.metadata_props[:]
    for key in sorted(existing):
        entry = model_proto.metadata_props.add()
        entry.key, entry.value = key, existing[key]


def write_metadata(path_or_model, values: dict):
    """Add ``values`` to the metadata of an ONNX file (rewritten atomically) or a ModelProto.

    Returns the ModelProto when given one, else the path.
    """
    import onnx

    if isinstance(path_or_model, onnx.ModelProto):
        set_metadata(path_or_model, values)
        return path_or_model
    path = Path(path_or_model)
    if not path.is_file():
        raise UserError(f"ONNX file '{path}' does not exist; export one first with: edgecnn export MODEL -o {path.name}")
    model = onnx.load(str(path), load_external_data=False)
    set_metadata(model, values)
    atomic_save(model, path)
    return path


def read_metadata(path_or_model) -> dict[str, str]:
    """All metadata_props of an ONNX file or ModelProto as a plain ``{key: value}`` dict."""
    import onnx

    if isinstance(path_or_model, onnx.ModelProto):
        model = path_or_model
    else:
        path = Path(path_or_model)
        if not path.is_file():
            raise UserError(f"ONNX file '{path}' does not exist; check the path")
        try:
            model = onnx.load(str(path), load_external_data=False)
        except Exception as exc:  # protobuf raises DecodeError and friends
            raise UserError(f"'{path}' is not a readable ONNX file ({type(exc).__name__}); re-export it") from None
    return {p.key: p.value for p in model.metadata_props}


def target_from_metadata(metadata: dict[str, str]):
    """The target table entry a file's metadata names (edgecnn.targets), or None (FP32, foreign files)."""
    from edgecnn.targets import TARGETS

    return TARGETS.get(metadata.get("edgecnn.quant_target") or metadata.get("edgecnn.target") or "")


def labels_from_metadata(metadata: dict[str, str]) -> Optional[list[str]]:
    """Class labels stored by :func:`model_metadata`, or None."""
    text = metadata.get(KEY_LABELS)
    if not text:
        return None
    try:
        labels = json.loads(text)
    except json.JSONDecodeError:
        return None
    return [str(x) for x in labels] if isinstance(labels, list) else None


def preprocess_from_metadata(metadata: dict[str, str]):
    """The :class:`~edgecnn.preprocess.Preprocess` stored in the metadata, or None."""
    from edgecnn.preprocess import Preprocess

    return Preprocess.from_metadata(metadata)


def model_metadata(loaded=None, recipe: Union[None, str, dict] = None, extra: Optional[dict] = None) -> dict[str, str]:
    """Metadata for an export: edgecnn version, and from a LoadedModel its preprocessing, labels,
    name and weights; ``recipe`` (a dict or YAML/JSON text) records how the model was made."""
    from edgecnn import __version__

    values: dict[str, Any] = {KEY_VERSION: __version__}
    if loaded is not None and hasattr(loaded, "preprocess"):
        values.update(loaded.preprocess.to_metadata())
        values[KEY_MODEL] = loaded.name
        values[KEY_WEIGHTS] = getattr(loaded, "weights", None)
        if getattr(loaded, "labels", None):
            values[KEY_LABELS] = list(loaded.labels)
    if recipe is not None:
        values[KEY_RECIPE] = recipe if isinstance(recipe, str) else json.dumps(recipe, sort_keys=True, default=str)
    values.update(extra or {})
    return {k: _as_text(v) for k, v in values.items() if v is not None}


def atomic_save(model_proto, path: Union[str, Path]) -> Path:
    """Save a ModelProto as one self-contained file, atomically (edgecnn.fileio).

    A model over protobuf's 2 GiB limit cannot be one file; none of edgecnn's models is near it.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return save_atomic(path, lambda tmp: save_onnx(model_proto, tmp))


def save_onnx(model_proto, path: Union[str, Path]) -> None:
    """``onnx.save_model`` as one self-contained file (no external data)."""
    import onnx

    onnx.save_model(model_proto, str(path), save_as_external_data=False)
