# long: one self-contained file an application copies next to its own code (numpy + onnx only)
"""Decoder of the ``.ecnn`` shipped format: ``.ecnn`` bytes -> ``onnx.ModelProto``.

This file depends only on the Python standard library, numpy and onnx, so an application can
copy it next to its own code (no edgecnn, no torch) and run::

    from decoder import load_ecnn
    model = load_ecnn("model.ecnn")            # onnx.ModelProto, initializers bit-exact
    session = onnxruntime.InferenceSession(model.SerializeToString())

Layout (all integers little-endian; full specification in docs/ecnn-format.md)::

    header   48 B   magic "ECNN" | version u16 | flags u16 | payload length u64 | sha256(payload)
    payload         sections: tag u8 | length varint | bytes
      'G'  lzma: ONNX ModelProto whose stripped initializers keep name/dims/type but no data
      'D'  lzma: tensor directory (one record per stripped initializer) + probability models
      'R'  lzma: raw little-endian bytes (byte-plane shuffled) of raw tensors, codebooks and
           the non-zero values of pruned-but-not-shared tensors
      'S'  entropy-coded symbols of every index / zero-run stream (interleaved rANS or Huffman)

A file whose length or checksum does not match is rejected before any decoding; a file that
passes the checksum but is inconsistent (it was not written by an encoder of this version)
is rejected by the consistency checks of each section.
"""

from __future__ import annotations

import hashlib
import lzma
import struct

import numpy as np

try:  # inside edgecnn the error is a UserError (one line, exit 2); vendored it is a ValueError
    from edgecnn.errors import UserError as _ErrorBase
except ImportError:  # pragma: no cover - exercised only when the file is vendored
    _ErrorBase = ValueError

MAGIC = b"ECNN"
VERSION = 1
HEADER = struct.Struct("<4sHHQ32s")  # magic, version, flags, payload length, sha256(payload)

# Tensor encodings in the directory.
ENC_RAW = 0  # raw little-endian bytes in the 'R' section
ENC_DENSE = 1  # codebook + one index symbol per element (zero, if present, is a codebook entry)
ENC_SPARSE = 2  # codebook of the non-zero values + zero-run stream + one index per non-zero
ENC_SPARSE_RAW = 3  # zero-run stream + raw bytes of the non-zero values (pruned, not shared)

# Entropy codecs of the 'S' section.
CODEC_RANS = 0
CODEC_HUFFMAN = 1

RANS_PROB_BITS = 15  # every probability model is scaled to a total of 2**15
RANS_LOW = 1 << 16  # rANS state lives in [2**16, 2**32); renormalisation moves 16-bit words
HUFFMAN_MAX_LEN = 16

# ONNX TensorProto data types whose initializers are stored by the tensor directory.
ONNX_DTYPES = {
    1: np.float32,
    2: np.uint8,
    3: np.int8,
    4: np.uint16,
    5: np.int16,
    6: np.int32,
    7: np.int64,
    9: np.bool_,
    10: np.float16,
    11: np.float64,
    12: np.uint32,
    13: np.uint64,
}


class EcnnError(_ErrorBase):
    """A file that is not a valid .ecnn of a supported version (corrupt, truncated, foreign)."""


# --------------------------------------------------------------------------- byte reading


class Reader:
    """Sequential reader of varints and fixed-size fields; running off the end is an error."""

    def __init__(self, data: bytes, what: str):
        self.data = memoryview(data)
        self.pos = 0
        self.what = what

    def bytes(self, n: int) -> bytes:
        if n < 0 or self.pos + n > len(self.data):
            raise EcnnError(f"corrupt .ecnn file: {self.what} ends early; re-create it with 'edgecnn pack'")
        out = self.data[self.pos : self.pos + n].tobytes()
        self.pos += n
        return out

    def varint(self) -> int:
        shift = value = 0
        while True:
            if self.pos >= len(self.data) or shift > 63:
                raise EcnnError(f"corrupt .ecnn file: bad integer in {self.what}; re-create it with 'edgecnn pack'")
            byte = self.data[self.pos]
            self.pos += 1
            value |= (byte & 0x7F) << shift
            shift += 7
            if byte < 0x80:
                return value

    def u8(self) -> int:
        return self.bytes(1)[0]

    def done(self) -> bool:
        return self.pos == len(self.data)


def _inflate(blob: bytes, what: str) -> bytes:
    try:
        return lzma.decompress(blob)
    except lzma.LZMAError:
        raise EcnnError(f"corrupt .ecnn file: section {what} does not decompress; re-create it with 'edgecnn pack'") from None


def unshuffle(data: bytes, itemsize: int) -> bytes:
    """Undo the byte-plane shuffle (all first bytes, then all second bytes, ...)."""
    if itemsize == 1:
        return data
    planes = np.frombuffer(data, np.uint8).reshape(itemsize, -1)
    return planes.T.tobytes()


# --------------------------------------------------------------------------- probability models


class Model:
    """A static distribution over symbols 0..K-1: rANS frequencies or Huffman code lengths."""

    __slots__ = ("freqs", "lengths")

    def __init__(self, freqs=None, lengths=None):
        self.freqs = freqs  # np.int64 [K], sum 2**RANS_PROB_BITS
        self.lengths = lengths  # np.int64 [K], 0 = symbol absent

    @property
    def size(self) -> int:
        return len(self.freqs if self.freqs is not None else self.lengths)


def read_model(r: Reader, codec: int) -> Model:
    k = r.varint()
    if not 1 <= k <= 65536:
        raise EcnnError("corrupt .ecnn file: bad alphabet size; re-create it with 'edgecnn pack'")
    if codec == CODEC_RANS:
        bits = r.u8()
        if not 1 <= bits <= RANS_PROB_BITS:
            raise EcnnError("corrupt .ecnn file: bad model precision; re-create it with 'edgecnn pack'")
        freqs = np.array([r.varint() for _ in range(k)], np.int64) << (RANS_PROB_BITS - bits)
        if int(freqs.sum()) != 1 << RANS_PROB_BITS:
            raise EcnnError("corrupt .ecnn file: model frequencies do not add up; re-create it with 'edgecnn pack'")
        return Model(freqs=freqs)
    lengths = np.frombuffer(r.bytes(k), np.uint8).astype(np.int64)
    if lengths.max() > HUFFMAN_MAX_LEN:
        raise EcnnError("corrupt .ecnn file: bad Huffman code length; re-create it with 'edgecnn pack'")
    return Model(lengths=lengths)


# --------------------------------------------------------------------------- rANS (interleaved lanes)


def rans_decode(r: Reader, models: list[Model], model_ids: np.ndarray) -> np.ndarray:
    """Decode ``len(model_ids)`` symbols; symbol t uses ``models[model_ids[t]]`` and lane t % L.

    The lanes are independent rANS coders, so one numpy step decodes L symbols at once.
    """
    total = len(model_ids)
    lanes = r.varint()
    if total == 0:
        return np.zeros(0, np.int64)
    if not 1 <= lanes <= 4096:
        raise EcnnError("corrupt .ecnn file: bad lane count; re-create it with 'edgecnn pack'")
    states = np.frombuffer(r.bytes(4 * lanes), "<u4").astype(np.uint64)
    counts = np.array([r.varint() for _ in range(lanes)], np.int64)
    words = np.frombuffer(r.bytes(2 * int(counts.sum())), "<u2").astype(np.uint64)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    ends = starts + counts
    words = np.append(words, np.uint64(0))  # a read past a lane's end is caught below

    m = 1 << RANS_PROB_BITS
    width = max(md.size for md in models)
    freq = np.zeros((len(models), width), np.uint64)
    cum = np.zeros((len(models), width), np.uint64)
    lut = np.zeros((len(models), m), np.int64)
    for i, md in enumerate(models):
        freq[i, : md.size] = md.freqs
        cum[i, : md.size] = np.concatenate([[0], np.cumsum(md.freqs)[:-1]])
        lut[i] = np.repeat(np.arange(md.size), md.freqs)

    out = np.empty(total, np.int64)
    ptr = starts.copy()
    mask, shift, low = np.uint64(m - 1), np.uint64(RANS_PROB_BITS), np.uint64(RANS_LOW)
    for begin in range(0, total, lanes):
        n = min(lanes, total - begin)
        mid = model_ids[begin : begin + n]
        x = states[:n]
        slot = x & mask
        sym = lut[mid, slot.astype(np.int64)]
        x = freq[mid, sym] * (x >> shift) + slot - cum[mid, sym]
        need = np.flatnonzero(x < low)
        if need.size:
            p = ptr[need]
            x[need] = (x[need] << np.uint64(16)) | words[np.minimum(p, len(words) - 1)]
            ptr[need] = p + 1
        states[:n] = x
        out[begin : begin + n] = sym
    if np.any(states != low) or np.any(ptr != ends):
        raise EcnnError("corrupt .ecnn file: entropy-coded stream is inconsistent; re-create it with 'edgecnn pack'")
    return out


# --------------------------------------------------------------------------- canonical Huffman


def canonical_codes(lengths: np.ndarray) -> np.ndarray:
    """Canonical code values for code lengths (shorter codes first, then by symbol)."""
    codes = np.zeros(len(lengths), np.int64)
    code = prev_len = 0
    for sym in sorted((s for s in range(len(lengths)) if lengths[s]), key=lambda s: (lengths[s], s)):
        code <<= int(lengths[sym]) - prev_len
        codes[sym] = code
        code += 1
        prev_len = int(lengths[sym])
    return codes


def huffman_decode(r: Reader, models: list[Model], model_ids: np.ndarray) -> np.ndarray:
    """Decode one MSB-first bit stream; a peek table of 2**maxlen entries per model."""
    total = len(model_ids)
    nbytes = r.varint()
    data = r.bytes(nbytes)
    tables = []
    for md in models:
        lengths = md.lengths
        if not lengths.any():
            tables.append((0, [], []))
            continue
        maxlen = int(lengths.max())
        if float(np.sum(2.0 ** -lengths[lengths > 0])) > 1.0:
            raise EcnnError("corrupt .ecnn file: Huffman code lengths are not a prefix code; re-create it with 'edgecnn pack'")
        codes = canonical_codes(lengths)
        syms = np.full(1 << maxlen, -1, np.int64)
        lens = np.zeros(1 << maxlen, np.int64)
        for s in np.flatnonzero(lengths):
            lo = int(codes[s]) << (maxlen - int(lengths[s]))
            hi = lo + (1 << (maxlen - int(lengths[s])))
            syms[lo:hi] = s
            lens[lo:hi] = lengths[s]
        tables.append((maxlen, syms.tolist(), lens.tolist()))
    out = [0] * total
    buf = nbits = pos = 0
    for t, mid in enumerate(model_ids.tolist()):
        maxlen, syms, lens = tables[mid]
        while nbits < maxlen:
            buf = (buf << 8) | (data[pos] if pos < nbytes else 0)
            pos += 1
            nbits += 8
        peek = (buf >> (nbits - maxlen)) & ((1 << maxlen) - 1)
        sym = syms[peek] if maxlen else -1
        if sym < 0:
            raise EcnnError("corrupt .ecnn file: bad Huffman code; re-create it with 'edgecnn pack'")
        nbits -= lens[peek]
        buf &= (1 << nbits) - 1
        out[t] = sym
    if (pos * 8 - nbits + 7) // 8 != nbytes:
        raise EcnnError("corrupt .ecnn file: Huffman stream length mismatch; re-create it with 'edgecnn pack'")
    return np.array(out, np.int64)


# --------------------------------------------------------------------------- zero runs


def runs_to_mask(runs: np.ndarray, escape: int, numel: int) -> np.ndarray:
    """Zero-run symbols -> boolean non-zero mask.

    Symbol s < escape: s zeros then one non-zero; symbol ``escape``: ``escape`` zeros and no
    non-zero (a filler, as in Deep Compression's relative indexing). Zeros after the last
    non-zero are implied by the tensor size.
    """
    step = np.where(runs == escape, escape, runs + 1)
    ends = np.cumsum(step)
    if len(ends) and ends[-1] > numel:
        raise EcnnError("corrupt .ecnn file: zero runs overflow their tensor; re-create it with 'edgecnn pack'")
    mask = np.zeros(numel, bool)
    mask[ends[runs != escape] - 1] = True
    return mask


# --------------------------------------------------------------------------- the file


def read_sections(data: bytes) -> dict[bytes, bytes]:
    """Check header, length and checksum; split the payload into its sections."""
    if len(data) < HEADER.size or data[:4] != MAGIC:
        raise EcnnError("not an .ecnn file (bad magic); pass a file written by 'edgecnn pack'")
    magic, version, flags, length, digest = HEADER.unpack_from(data)
    if version != VERSION:
        raise EcnnError(f".ecnn version {version} is not supported (this decoder reads version {VERSION}); re-pack the model")
    payload = data[HEADER.size :]
    if len(payload) != length:
        raise EcnnError(f"truncated or padded .ecnn file ({len(payload)} of {length} payload bytes); re-copy or re-pack it")
    if hashlib.sha256(payload).digest() != digest:
        raise EcnnError("corrupt .ecnn file (sha256 checksum mismatch); re-copy or re-pack it")
    r = Reader(payload, "payload")
    sections: dict[bytes, bytes] = {}
    while not r.done():
        tag = r.bytes(1)
        sections[tag] = r.bytes(r.varint())
    for tag in (b"G", b"D", b"R", b"S"):
        if tag not in sections:
            raise EcnnError(f"corrupt .ecnn file: section {tag.decode()} missing; re-create it with 'edgecnn pack'")
    return sections


def decode_tensors(sections: dict[bytes, bytes], stubs) -> list[np.ndarray]:
    """Rebuild the stripped initializers (numpy arrays in directory order)."""
    d = Reader(_inflate(sections[b"D"], "D"), "tensor directory")
    raw = Reader(_inflate(sections[b"R"], "R"), "raw section")
    codec = d.u8()
    if codec not in (CODEC_RANS, CODEC_HUFFMAN):
        raise EcnnError(f"corrupt .ecnn file: unknown entropy codec {codec}; re-create it with 'edgecnn pack'")
    models = [read_model(d, codec) for _ in range(d.varint())]
    count = d.varint()
    if count != len(stubs):
        raise EcnnError("corrupt .ecnn file: directory and graph disagree; re-create it with 'edgecnn pack'")
    plans, streams = _read_directory(d, raw, len(models), stubs)
    if not d.done() or not raw.done():
        raise EcnnError("corrupt .ecnn file: trailing bytes in a section; re-create it with 'edgecnn pack'")

    model_ids = np.repeat(np.array([s[0] for s in streams], np.int64), [s[1] for s in streams])
    sr = Reader(sections[b"S"], "symbol section")
    symbols = (rans_decode if codec == CODEC_RANS else huffman_decode)(sr, models, model_ids)
    if not sr.done():
        raise EcnnError("corrupt .ecnn file: trailing bytes in the symbol section; re-create it with 'edgecnn pack'")
    offsets = np.concatenate([[0], np.cumsum([s[1] for s in streams])])

    def stream(i: int) -> np.ndarray:
        return symbols[offsets[i] : offsets[i + 1]]

    return [_build_array(plan, stream).reshape(tuple(stub.dims)) for stub, plan in zip(stubs, plans)]


def _read_directory(d: Reader, raw: Reader, n_models: int, stubs) -> tuple[list, list]:
    """One plan per tensor, and the symbol streams (model id, symbol count) in coding order."""

    def model_ref() -> int:
        mid = d.varint()
        if mid >= n_models:
            raise EcnnError("corrupt .ecnn file: bad model reference; re-create it with 'edgecnn pack'")
        return mid

    plans, streams = [], []
    for stub in stubs:
        dtype = np.dtype(ONNX_DTYPES[stub.data_type]).newbyteorder("<")
        numel = int(np.prod(stub.dims, dtype=np.int64)) if len(stub.dims) else 1
        enc = d.u8()
        if enc == ENC_RAW:
            plans.append((ENC_RAW, dtype, numel, unshuffle(raw.bytes(numel * dtype.itemsize), dtype.itemsize)))
            continue
        if enc == ENC_SPARSE_RAW:
            escape, n_runs, nnz = d.varint(), d.varint(), d.varint()
            streams.append((model_ref(), n_runs))
            values = np.frombuffer(unshuffle(raw.bytes(nnz * dtype.itemsize), dtype.itemsize), dtype)
            plans.append((ENC_SPARSE_RAW, dtype, numel, values, len(streams) - 1, escape, nnz))
            continue
        if enc not in (ENC_DENSE, ENC_SPARSE):
            raise EcnnError(f"corrupt .ecnn file: unknown tensor encoding {enc}; re-create it with 'edgecnn pack'")
        k = d.varint()
        codebook = np.frombuffer(unshuffle(raw.bytes(k * dtype.itemsize), dtype.itemsize), dtype)
        if enc == ENC_DENSE:
            mid = model_ref()
            streams.append((mid, numel))
            plans.append((ENC_DENSE, dtype, numel, codebook, len(streams) - 1))
        else:
            escape, n_runs, nnz = d.varint(), d.varint(), d.varint()
            run_mid, idx_mid = model_ref(), model_ref()
            streams.append((run_mid, n_runs))
            streams.append((idx_mid, nnz))
            plans.append((ENC_SPARSE, dtype, numel, codebook, len(streams) - 2, escape, nnz))
    return plans, streams


def _build_array(plan: tuple, stream) -> np.ndarray:
    """The flat array of one tensor from its plan and the decoded symbol streams."""
    enc, dtype, numel = plan[:3]
    if enc == ENC_RAW:
        return np.frombuffer(plan[3], dtype)
    if enc == ENC_DENSE:
        codebook, sid = plan[3], plan[4]
        idx = stream(sid)
        if idx.size and idx.max() >= len(codebook):
            raise EcnnError("corrupt .ecnn file: index outside its codebook; re-create it with 'edgecnn pack'")
        return codebook[idx]
    if enc == ENC_SPARSE_RAW:
        values, sid, escape, nnz = plan[3], plan[4], plan[5], plan[6]
        mask = runs_to_mask(stream(sid), escape, numel)
        if int(mask.sum()) != nnz:
            raise EcnnError("corrupt .ecnn file: sparse tensor is inconsistent; re-create it with 'edgecnn pack'")
        flat = np.zeros(numel, dtype)
        flat[mask] = values
        return flat
    codebook, sid, escape, nnz = plan[3], plan[4], plan[5], plan[6]
    mask = runs_to_mask(stream(sid), escape, numel)
    idx = stream(sid + 1)
    if int(mask.sum()) != nnz or (idx.size and idx.max() >= len(codebook)):
        raise EcnnError("corrupt .ecnn file: sparse tensor is inconsistent; re-create it with 'edgecnn pack'")
    flat = np.zeros(numel, dtype)
    flat[mask] = codebook[idx]
    return flat


def decode_model(data: bytes):
    """``.ecnn`` bytes -> ``onnx.ModelProto`` with every initializer restored bit for bit."""
    import onnx

    sections = read_sections(bytes(data))
    model = onnx.ModelProto()
    try:
        model.ParseFromString(_inflate(sections[b"G"], "G"))
    except Exception:  # protobuf raises its own DecodeError
        raise EcnnError("corrupt .ecnn file: graph does not parse; re-create it with 'edgecnn pack'") from None
    stubs = [t for t in model.graph.initializer if t.data_location == 0 and _is_stub(t)]
    arrays = decode_tensors(sections, stubs)
    for stub, array in zip(stubs, arrays):
        stub.raw_data = np.ascontiguousarray(array).tobytes()
    return model


def _is_stub(tensor) -> bool:
    """A stripped initializer: a supported numeric type and no data in the graph section."""
    return (
        tensor.data_type in ONNX_DTYPES
        and not tensor.raw_data
        and not tensor.float_data
        and not tensor.int32_data
        and not tensor.int64_data
        and not tensor.double_data
        and not tensor.uint64_data
        and not tensor.external_data
    )


def load_ecnn(path):
    """Read a ``.ecnn`` file and return the decoded ``onnx.ModelProto``."""
    with open(path, "rb") as f:
        return decode_model(f.read())
