"""Entropy coders of the .ecnn format (encoder side): interleaved static rANS and canonical Huffman.

No library in our dependency set does static-model entropy coding of integer symbol streams
with per-symbol model switching (zlib/lzma are byte-oriented LZ coders), so both coders are
hand-written here; the decoders live in :mod:`edgecnn.pack.decoder` so that an app vendors a
single file. rANS reaches the empirical entropy within a fraction of a percent; Huffman loses
up to one bit per symbol on skewed streams (measured in bench/deep_compression.py).
"""

from __future__ import annotations

import heapq
import math

import numpy as np

from edgecnn.pack.decoder import (
    CODEC_HUFFMAN,
    CODEC_RANS,
    HUFFMAN_MAX_LEN,
    RANS_LOW,
    RANS_PROB_BITS,
    Model,
    canonical_codes,
)


def varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def entropy_bits(counts: np.ndarray) -> float:
    """Empirical (order-0) entropy of a stream with these symbol counts, in bits."""
    counts = np.asarray(counts, np.float64)
    total = counts.sum()
    nz = counts[counts > 0]
    return float(-(nz * np.log2(nz / total)).sum()) if total else 0.0


# --------------------------------------------------------------------------- rANS


def quantize_freqs(counts: np.ndarray, bits: int) -> np.ndarray:
    """Integer frequencies summing to 2**bits, >= 1 for every present symbol, close to counts."""
    counts = np.asarray(counts, np.int64)
    total_target = 1 << bits
    present = counts > 0
    if present.sum() > total_target:
        raise ValueError("alphabet larger than the model precision")
    freqs = np.where(present, np.maximum(1, np.round(counts * total_target / max(1, counts.sum()))), 0).astype(np.int64)
    # Fix the rounding error one unit at a time where it costs the fewest bits.
    while (diff := int(freqs.sum()) - total_target) != 0:
        if diff > 0:
            cand = np.flatnonzero(freqs > 1)
            cost = counts[cand] * np.log2(freqs[cand] / (freqs[cand] - 1))
            pick = cand[np.argsort(cost)[:diff]]
            freqs[pick] -= 1
        else:
            cand = np.flatnonzero(present)
            gain = counts[cand] * np.log2((freqs[cand] + 1) / freqs[cand])
            pick = cand[np.argsort(-gain)[:-diff]]
            freqs[pick] += 1
    return freqs


def coded_bits(counts: np.ndarray, freqs: np.ndarray, bits: int) -> float:
    present = counts > 0
    return float(-(counts[present] * np.log2(freqs[present] / (1 << bits))).sum())


def rans_model(counts: np.ndarray) -> tuple[Model, bytes, float]:
    """Best-precision rANS model for a stream: (model, serialized table, estimated payload bits).

    Coarser precision costs a little coding efficiency but makes the table (stored in the
    file) smaller: small streams pick 8-10 bits, large ones 15.
    """
    counts = np.asarray(counts, np.int64)
    best = None
    min_bits = max(1, math.ceil(math.log2(max(2, int((counts > 0).sum())))))
    for bits in range(max(min_bits, 6), RANS_PROB_BITS + 1):
        freqs = quantize_freqs(counts, bits)
        table = varint(len(counts)) + bytes([bits]) + b"".join(varint(int(f)) for f in freqs)
        cost = coded_bits(counts, freqs, bits) + 8 * len(table)
        if best is None or cost < best[0]:
            best = (cost, bits, freqs, table)
    cost, bits, freqs, table = best
    model = Model(freqs=freqs << (RANS_PROB_BITS - bits))
    return model, table, cost - 8 * len(table)


def rans_encode(symbols: np.ndarray, model_ids: np.ndarray, models: list[Model], lanes: int) -> bytes:
    """Interleaved rANS: symbol t goes to lane t % lanes; returns the 'S' section body."""
    total = len(symbols)
    out = bytearray(varint(lanes))
    if total == 0:
        return bytes(out)
    width = max(m.size for m in models)
    freq = np.zeros((len(models), width), np.uint64)
    cum = np.zeros((len(models), width), np.uint64)
    for i, md in enumerate(models):
        freq[i, : md.size] = md.freqs
        cum[i, : md.size] = np.concatenate([[0], np.cumsum(md.freqs)[:-1]])
    f_all = freq[model_ids, symbols]
    c_all = cum[model_ids, symbols]
    if np.any(f_all == 0):
        raise ValueError("symbol with zero frequency in its model")
    x = np.full(lanes, RANS_LOW, np.uint64)
    emitted_lanes, emitted_words = [], []
    shift_out = np.uint64(32 - RANS_PROB_BITS)
    pb = np.uint64(RANS_PROB_BITS)
    steps = (total + lanes - 1) // lanes
    for step in range(steps - 1, -1, -1):
        begin = step * lanes
        n = min(lanes, total - begin)
        f = f_all[begin : begin + n]
        c = c_all[begin : begin + n]
        xs = x[:n]
        emit = np.flatnonzero(xs >= (f << shift_out))
        if emit.size:
            emitted_lanes.append(emit)
            emitted_words.append((xs[emit] & np.uint64(0xFFFF)).astype(np.uint16))
            xs[emit] >>= np.uint64(16)
        x[:n] = ((xs // f) << pb) + (xs % f) + c
    lanes_arr = np.concatenate(emitted_lanes) if emitted_lanes else np.zeros(0, np.int64)
    words_arr = np.concatenate(emitted_words) if emitted_words else np.zeros(0, np.uint16)
    # The decoder reads each lane's words in the reverse order of emission.
    order = np.lexsort((-np.arange(len(lanes_arr)), lanes_arr))
    counts = np.bincount(lanes_arr, minlength=lanes)
    out += x.astype("<u4").tobytes()
    for c in counts:
        out += varint(int(c))
    out += words_arr[order].astype("<u2").tobytes()
    return bytes(out)


def choose_lanes(total: int) -> int:
    """More lanes decode faster in numpy but cost ~6 bytes each; 1 lane per 16k symbols, <= 64."""
    return int(min(64, max(1, total // 16384)))


# --------------------------------------------------------------------------- canonical Huffman


def huffman_lengths(counts: np.ndarray, max_len: int = HUFFMAN_MAX_LEN) -> np.ndarray:
    """Huffman code lengths (0 for absent symbols), limited to ``max_len`` by flattening counts."""
    counts = np.asarray(counts, np.int64)
    present = np.flatnonzero(counts)
    lengths = np.zeros(len(counts), np.int64)
    if len(present) == 1:
        lengths[present] = 1
        return lengths
    work = counts.copy()
    while True:
        heap = [(int(work[s]), i, [int(s)]) for i, s in enumerate(present)]
        heapq.heapify(heap)
        depth = np.zeros(len(counts), np.int64)
        tie = len(heap)
        while len(heap) > 1:
            c1, _, s1 = heapq.heappop(heap)
            c2, _, s2 = heapq.heappop(heap)
            for s in s1 + s2:
                depth[s] += 1
            heapq.heappush(heap, (c1 + c2, tie, s1 + s2))
            tie += 1
        if depth.max() <= max_len:
            return depth
        work = np.where(work > 0, (work + 1) // 2, 0)


def huffman_table(counts: np.ndarray) -> tuple[Model, bytes, float]:
    lengths = huffman_lengths(counts)
    table = varint(len(counts)) + lengths.astype(np.uint8).tobytes()
    return Model(lengths=lengths), table, float((np.asarray(counts) * lengths).sum())


def huffman_encode(symbols: np.ndarray, model_ids: np.ndarray, models: list[Model]) -> bytes:
    """One MSB-first bit stream; returns the 'S' section body (byte length + bytes)."""
    width = max(m.size for m in models)
    code_tab = np.zeros((len(models), width), np.int64)
    len_tab = np.zeros((len(models), width), np.int64)
    for i, md in enumerate(models):
        code_tab[i, : md.size] = canonical_codes(md.lengths)
        len_tab[i, : md.size] = md.lengths
    codes = code_tab[model_ids, symbols]
    lens = len_tab[model_ids, symbols]
    if np.any(lens == 0) and len(symbols):
        raise ValueError("symbol without a Huffman code")
    bits = []
    for chunk in range(0, len(symbols), 1 << 20):  # bound the (n, 16) bit matrix
        c = codes[chunk : chunk + (1 << 20)]
        ln = lens[chunk : chunk + (1 << 20)]
        pos = np.arange(HUFFMAN_MAX_LEN)
        shift = ln[:, None] - 1 - pos[None, :]
        matrix = (c[:, None] >> np.maximum(shift, 0)) & 1
        bits.append(matrix[shift >= 0].astype(np.uint8))
    packed = np.packbits(np.concatenate(bits)) if bits else np.zeros(0, np.uint8)
    return varint(len(packed)) + packed.tobytes()


CODECS = {CODEC_RANS: "rans", CODEC_HUFFMAN: "huffman"}
