"""The ``.ecnn`` shipped format: an ONNX model, entropy-coded, that decodes bit-exactly.

``pack`` finds what makes weights compressible without being told (codebooks of shared
weights, zeros of pruned ones, int8 Q/DQ initializers) and codes it; ``unpack`` gives back an
ONNX model whose initializers are bit-identical to the packed one, so ONNX Runtime computes
exactly what was evaluated. Decoding needs only numpy + onnx: :mod:`edgecnn.pack.decoder` is a
single file an application can vendor. Layout: docs/ecnn-format.md. No torch on these paths.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional, Union

from edgecnn.errors import UserError
from edgecnn.fileio import write_bytes_atomic
from edgecnn.outputs import check_output_file, record_output, writing
from edgecnn.pack.decoder import EcnnError, decode_model  # noqa: F401
from edgecnn.pack.format import PackStats, encode_model  # noqa: F401

PathLike = Union[str, os.PathLike]


def _load_onnx(path: PathLike):
    import onnx

    path = Path(path)
    if not path.is_file():
        raise UserError(f"ONNX file not found: {path}; pass the path of an exported .onnx model")
    try:
        model = onnx.load(str(path))
    except Exception as exc:  # protobuf / external-data errors
        raise UserError(f"cannot read {path} as ONNX ({type(exc).__name__}); pass a valid .onnx file") from None
    if not model.graph.node or not model.graph.output:  # an empty file parses as an empty model
        raise UserError(f"{path} is not an ONNX model (no graph in it); pass an exported .onnx file")
    return model


def write_atomic(path: PathLike, data: bytes, force: bool = False, inputs=(), command: str = "pack") -> Path:
    """Write atomically (edgecnn.fileio) under the rules of edgecnn.outputs: never over an input,
    over an existing file only with ``force`` and only when edgecnn made it."""
    path = Path(path)
    check_output_file(path, force, inputs=inputs)
    with writing(path):
        write_bytes_atomic(path, data)
        record_output(path, command)
    return path


def pack_model(model, codec: str = "auto") -> tuple[bytes, PackStats]:
    """``onnx.ModelProto`` -> (.ecnn bytes, stats)."""
    return encode_model(model, codec=codec)


def pack_file(onnx_path: PathLike, out_path: PathLike, force: bool = False, codec: str = "auto", progress=None) -> PackStats:
    """Pack ``onnx_path`` into ``out_path`` (.ecnn). Returns per-tensor and per-section sizes.

    ``progress(done, total)`` is called after each tensor is planned.
    """
    check_output_file(out_path, force, inputs=[onnx_path])  # before the encoding work, not after it
    data, stats = encode_model(_load_onnx(onnx_path), codec=codec, progress=progress)
    write_atomic(out_path, data, force=force, inputs=[onnx_path])
    return stats


def read_ecnn(path: PathLike):
    """Decode a .ecnn file into an ``onnx.ModelProto`` (UserError if it is corrupt or truncated)."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f".ecnn file not found: {path}; pass a file written by 'edgecnn pack'")
    return decode_model(path.read_bytes())


def unpack_file(ecnn_path: PathLike, out_path: PathLike, force: bool = False) -> Path:
    """Decode ``ecnn_path`` and write the ONNX model to ``out_path``."""
    check_output_file(out_path, force, inputs=[ecnn_path])
    model = read_ecnn(ecnn_path)
    if not model.graph.node:
        raise UserError(f"{ecnn_path} holds no ONNX graph; pack an exported .onnx model again")
    return write_atomic(out_path, model.SerializeToString(), force=force, inputs=[ecnn_path], command="unpack")


def shipped_size(onnx_path: PathLike, codec: str = "auto") -> int:
    """Bytes of the .ecnn artifact ``onnx_path`` would ship as (packed in memory)."""
    data, _ = encode_model(_load_onnx(onnx_path), codec=codec)
    return len(data)


def shipped_size_of(model, codec: str = "auto") -> Optional[int]:
    """Same as :func:`shipped_size` for an in-memory ``onnx.ModelProto``."""
    return len(encode_model(model, codec=codec)[0])
