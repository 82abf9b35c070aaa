"""Encoder of the .ecnn format: ONNX ModelProto -> bytes (layout in docs/ecnn-format.md).

Every numeric initializer is stored one of three ways, whichever is smallest:

* ``raw``: lossless little-endian bytes, byte-plane shuffled and lzma-compressed together
  (biases, float weights with many distinct values, shape constants);
* ``dense``: a codebook of its few distinct values (bit patterns, so -0.0 and NaN survive)
  plus one entropy-coded index per element (int8 Q/DQ weights, shared weights without zeros);
* ``sparse_raw``: zero runs as below plus the raw bytes of the non-zero values (pruned
  float weights that are not shared);
* ``sparse``: the codebook of its non-zero values, the positions of the non-zeros as
  entropy-coded zero runs (Deep Compression's relative indexing, but with an entropy coder
  instead of fixed 4-bit fields) and one entropy-coded index per non-zero.

The graph without initializer data is lzma-compressed. All index and run streams share one
entropy coder (interleaved rANS by default; canonical Huffman when it happens to be smaller).
"""

from __future__ import annotations

import hashlib
import lzma
from dataclasses import dataclass, field

import numpy as np

from edgecnn.pack import entropy, xz
from edgecnn.pack.decoder import (
    CODEC_HUFFMAN,
    CODEC_RANS,
    ENC_DENSE,
    ENC_RAW,
    ENC_SPARSE,
    ENC_SPARSE_RAW,
    HEADER,
    MAGIC,
    ONNX_DTYPES,
    VERSION,
)

MAX_CODEBOOK = 4096  # distinct values; larger codebooks never beat raw on real weights
RUN_ESCAPES = (7, 15, 31, 63, 127, 255)
LZMA_FILTERS = [{"id": lzma.FILTER_LZMA2, "preset": 9 | lzma.PRESET_EXTREME}]


def deflate(data: bytes) -> bytes:
    return lzma.compress(data, format=lzma.FORMAT_XZ, check=lzma.CHECK_NONE, filters=LZMA_FILTERS)


BIG_TENSOR = 1 << 16  # bytes; above this, raw data is costed and compressed plane by plane
SMALL_SECTION = 1 << 20  # a raw section up to this size is one strong LZMA stream


def _planes(data: bytes, itemsize: int) -> list[bytes]:
    """The byte planes of shuffled data (one piece when there is a single plane)."""
    if itemsize == 1 or len(data) % itemsize:
        return [data]
    step = len(data) // itemsize
    return [data[i * step : (i + 1) * step] for i in range(itemsize)]


def _raw_cost(shuffled: bytes, itemsize: int) -> int:
    """Estimated bytes of shuffled raw data in the 'R' section."""
    if len(shuffled) <= BIG_TENSOR:
        return len(lzma.compress(shuffled, preset=6))
    return sum(xz.estimate_compressed(plane) for plane in _planes(shuffled, itemsize))


def raw_section(plans: list) -> bytes:
    """The 'R' section: one strong LZMA stream when small, else one XZ stream per segment.

    Large float tensors are split into byte planes so that noise-like planes are stored
    instead of being pushed through LZMA (seconds per megabyte for nothing): packing a
    14 MB FP32 model takes seconds, not half a minute. Small sections (Deep Compression
    models) are encoded exactly as before.
    """
    joined = b"".join(p.raw for p in plans)
    if len(joined) <= SMALL_SECTION:
        return deflate(joined)
    segments, pending = [], bytearray()
    for plan in plans:
        if len(plan.raw) <= BIG_TENSOR:
            pending += plan.raw
            continue
        if pending:
            segments.append(bytes(pending))
            pending = bytearray()
        segments.extend(_planes(plan.raw, plan.itemsize))
    if pending:
        segments.append(bytes(pending))
    return b"".join(xz.compress_segment(seg) for seg in segments if seg)


def shuffle(data: bytes, itemsize: int) -> bytes:
    """Byte-plane shuffle: float exponents line up, which lzma compresses much better."""
    if itemsize == 1:
        return data
    return np.frombuffer(data, np.uint8).reshape(-1, itemsize).T.tobytes()


@dataclass
class TensorStat:
    name: str
    dtype: str
    numel: int
    encoding: str  # raw / dense / sparse / sparse_raw
    nonzeros: int
    distinct: int  # -1: more than MAX_CODEBOOK (not counted exactly)
    bytes: float  # bytes attributed to the tensor (entropy estimate for coded streams)


@dataclass
class PackStats:
    """What went where; sizes in bytes."""

    total: int = 0
    codec: str = ""
    sections: dict = field(default_factory=dict)
    tensors: list = field(default_factory=list)
    alternatives: dict = field(default_factory=dict)  # codec -> total file bytes


@dataclass
class _Plan:
    encoding: int
    record: bytes = b""
    raw: bytes = b""
    streams: list = field(default_factory=list)  # (symbols np.int64, alphabet size)
    stream_slots: list = field(default_factory=list)  # directory placeholders, filled with model ids
    stat: TensorStat = None
    itemsize: int = 1  # of the values in ``raw`` (byte-plane shuffled when > 1)


def _bit_view(flat: np.ndarray) -> np.ndarray:
    return flat.view({1: np.uint8, 2: np.uint16, 4: np.uint32, 8: np.uint64}[flat.dtype.itemsize])


def _codebook(values: np.ndarray, bits: np.ndarray):
    """Distinct bit patterns ordered by numeric value; returns (codebook values, index per element)."""
    uniq_bits, inverse = np.unique(bits, return_inverse=True)
    uniq_vals = uniq_bits.view(values.dtype)
    order = np.argsort(uniq_vals, kind="stable") if values.dtype.kind == "f" else np.arange(len(uniq_vals))
    rank = np.empty_like(order)
    rank[order] = np.arange(len(order))
    return uniq_vals[order], rank[inverse.ravel()]


def _zero_runs(mask: np.ndarray, escape: int) -> np.ndarray:
    """Non-zero mask -> zero-run symbols (see decoder.runs_to_mask)."""
    pos = np.flatnonzero(mask)
    gaps = np.diff(np.concatenate([[-1], pos])) - 1
    fillers = gaps // escape
    out_len = len(gaps) + int(fillers.sum())
    runs = np.full(out_len, escape, np.int64)
    ends = np.cumsum(fillers + 1) - 1  # where each real run symbol lands
    runs[ends] = gaps % escape
    return runs


def _distinct(bits: np.ndarray) -> int:
    """Number of distinct bit patterns, or MAX_CODEBOOK + 1 when a sample already shows more."""
    if bits.size > 16 * MAX_CODEBOOK:
        sample = bits[:: bits.size // (8 * MAX_CODEBOOK)]
        if len(np.unique(sample)) > MAX_CODEBOOK:
            return MAX_CODEBOOK + 1
    return len(np.unique(bits))


def _stream_cost(symbols: np.ndarray, alphabet: int) -> float:
    counts = np.bincount(symbols, minlength=alphabet)
    return entropy.entropy_bits(counts) / 8 + 1.2 * int((counts > 0).sum()) + 4


def _plan_tensor(name: str, array: np.ndarray) -> _Plan:
    dtype = array.dtype.newbyteorder("<")
    flat = np.ascontiguousarray(array, dtype=dtype).ravel()
    raw_bytes = flat.tobytes()
    numel = flat.size
    bits = _bit_view(flat)
    candidates = []
    raw_cost = _raw_cost(shuffle(raw_bytes, dtype.itemsize), dtype.itemsize) if numel else 0
    candidates.append((raw_cost, "raw"))
    distinct = None
    best_runs = None
    if numel >= 32 and dtype.kind in "fiub":
        mask = bits != 0
        if 0 < mask.sum() < 0.9 * numel:
            for escape in RUN_ESCAPES:
                runs = _zero_runs(mask, escape)
                cost = _stream_cost(runs, escape + 1)
                if best_runs is None or cost < best_runs[0]:
                    best_runs = (cost, escape, runs)
            nz_raw = shuffle(flat[mask].tobytes(), dtype.itemsize)
            candidates.append((best_runs[0] + _raw_cost(nz_raw, dtype.itemsize), "sparse_raw", best_runs, nz_raw, mask))
        distinct = _distinct(bits)
        if distinct <= MAX_CODEBOOK:
            codebook, index = _codebook(flat, bits)
            book_cost = distinct * dtype.itemsize
            candidates.append((_stream_cost(index, distinct) + book_cost, "dense"))
            zero_slot = np.flatnonzero(_bit_view(codebook) == 0)
            if zero_slot.size and distinct > 1 and best_runs is not None:
                nz_index = index[mask]
                nz_index = nz_index - (nz_index > zero_slot[0])
                cost = best_runs[0] + _stream_cost(nz_index, distinct - 1) + book_cost
                candidates.append((cost, "sparse", best_runs, nz_index, mask))
    best = min(candidates, key=lambda c: c[0])
    nonzeros = int(np.count_nonzero(bits))
    known = distinct is not None and distinct <= MAX_CODEBOOK
    stat = TensorStat(name, str(array.dtype), numel, best[1], nonzeros, distinct if known else -1, best[0])
    if best[1] == "raw":
        return _Plan(ENC_RAW, bytes([ENC_RAW]), shuffle(raw_bytes, dtype.itemsize), stat=stat, itemsize=dtype.itemsize)
    if best[1] == "sparse_raw":
        _, _, (_, escape, runs), nz_raw, mask = best
        record = bytes([ENC_SPARSE_RAW]) + entropy.varint(escape) + entropy.varint(len(runs)) + entropy.varint(int(mask.sum()))
        return _Plan(ENC_SPARSE_RAW, record, nz_raw, [(runs, escape + 1)], stat=stat, itemsize=dtype.itemsize)
    codebook_bytes = shuffle(codebook.tobytes(), dtype.itemsize)
    if best[1] == "dense":
        return _Plan(ENC_DENSE, bytes([ENC_DENSE]) + entropy.varint(distinct), codebook_bytes, [(index, distinct)], stat=stat)
    _, _, (_, escape, runs), nz_index, mask = best
    nz_book = codebook[_bit_view(codebook) != 0]
    record = bytes([ENC_SPARSE]) + entropy.varint(len(nz_book)) + entropy.varint(escape)
    record += entropy.varint(len(runs)) + entropy.varint(int(mask.sum()))
    return _Plan(
        ENC_SPARSE,
        record,
        shuffle(nz_book.tobytes(), dtype.itemsize),
        [(runs, escape + 1), (nz_index, len(nz_book))],
        stat=stat,
    )


def strip_initializers(model) -> tuple[object, list]:
    """Copy of the model whose numeric initializers carry no data, plus those arrays in order."""
    import onnx
    from onnx import numpy_helper

    graph_model = onnx.ModelProto()
    graph_model.CopyFrom(model)
    arrays = []
    for tensor in graph_model.graph.initializer:
        if tensor.data_type not in ONNX_DTYPES or tensor.data_location != 0:
            continue
        array = numpy_helper.to_array(tensor)
        arrays.append((tensor.name, array))
        dims, dtype, name, doc = list(tensor.dims), tensor.data_type, tensor.name, tensor.doc_string
        tensor.Clear()
        tensor.name, tensor.data_type, tensor.doc_string = name, dtype, doc
        tensor.dims.extend(dims)
    return graph_model, arrays


def encode_model(model, codec: str = "auto", progress=None) -> tuple[bytes, PackStats]:
    """Encode an in-memory ``onnx.ModelProto``; ``codec`` is 'auto' (smaller of both), 'rans' or 'huffman'."""
    graph_model, arrays = strip_initializers(model)
    plans = []
    for name, array in arrays:
        plans.append(_plan_tensor(name, array))
        if progress:
            progress(len(plans), len(arrays))
    graph_section = deflate(graph_model.SerializeToString())
    raw_section_bytes = raw_section(plans)

    results = {}
    codecs = {"auto": (CODEC_RANS, CODEC_HUFFMAN), "rans": (CODEC_RANS,), "huffman": (CODEC_HUFFMAN,)}[codec]
    for codec_id in codecs:
        results[codec_id] = _encode_with_codec(codec_id, plans, graph_section, raw_section_bytes)
    best_id = min(results, key=lambda c: len(results[c][0]))
    data, sections = results[best_id]
    stats = PackStats(
        total=len(data),
        codec=entropy.CODECS[best_id],
        sections=sections,
        tensors=[p.stat for p in plans],
        alternatives={entropy.CODECS[c]: len(r[0]) for c, r in results.items()},
    )
    return data, stats


def _encode_with_codec(codec_id: int, plans: list[_Plan], graph_section: bytes, raw_section: bytes):
    models, tables, symbol_parts, id_parts = [], [], [], []
    directory = bytearray()
    for plan in plans:
        directory += plan.record
        for symbols, alphabet in plan.streams:
            counts = np.bincount(symbols, minlength=alphabet)
            if codec_id == CODEC_RANS:
                model, table, _ = entropy.rans_model(counts)
            else:
                model, table, _ = entropy.huffman_table(counts)
            directory += entropy.varint(len(models))
            models.append(model)
            tables.append(table)
            symbol_parts.append(symbols)
            id_parts.append(np.full(len(symbols), len(models) - 1, np.int64))
    head = bytes([codec_id]) + entropy.varint(len(models)) + b"".join(tables) + entropy.varint(len(plans))
    directory_section = deflate(head + bytes(directory))
    symbols = np.concatenate(symbol_parts) if symbol_parts else np.zeros(0, np.int64)
    model_ids = np.concatenate(id_parts) if id_parts else np.zeros(0, np.int64)
    if codec_id == CODEC_RANS:
        symbol_section = entropy.rans_encode(symbols, model_ids, models, entropy.choose_lanes(len(symbols)))
    else:
        symbol_section = entropy.huffman_encode(symbols, model_ids, models) if len(symbols) else entropy.varint(0)
    sections = {b"G": graph_section, b"D": directory_section, b"R": raw_section, b"S": symbol_section}
    payload = b"".join(tag + entropy.varint(len(body)) + body for tag, body in sections.items())
    header = HEADER.pack(MAGIC, VERSION, 0, len(payload), hashlib.sha256(payload).digest())
    return header + payload, {tag.decode(): len(body) for tag, body in sections.items()}
