"""Fast XZ streams for the .ecnn raw section (any XZ decoder, ``lzma.decompress`` included, reads them).

Float weights are mostly noise: after the byte-plane shuffle their low mantissa planes have
~8 bits of entropy per byte, and LZMA spends seconds per megabyte gaining nothing on them.
Such segments are written as *stored* XZ streams (LZMA2 uncompressed chunks, no compression
work); the others go through liblzma. ``lzma.decompress`` decodes concatenated streams as
one, so the decoder and the file format are unchanged.
"""

from __future__ import annotations

import lzma
import struct
import zlib

import numpy as np

from edgecnn.pack.entropy import varint

STREAM_MAGIC = b"\xfd7zXZ\x00"
FOOTER_MAGIC = b"YZ"
CHECK_NONE_FLAGS = b"\x00\x00"
LZMA2_FILTER_ID = 0x21
LZMA2_DICT_1MIB = 16  # dictionary-size byte: (2 | 0) << (16 // 2 + 11) = 1 MiB
CHUNK = 1 << 16  # an LZMA2 uncompressed chunk holds at most 64 KiB
STORE_ABOVE_BITS = 7.9  # order-0 entropy (bits/byte) above which LZMA cannot pay for itself
SMALL = 1 << 20  # segments up to this size get liblzma's strongest preset
STRONG = 9 | lzma.PRESET_EXTREME
FAST = 1


def _filters(preset: int, size: int) -> list:
    """LZMA2 at ``preset`` with a dictionary no larger than the data (preset 9 would allocate 64 MiB per call)."""
    dict_size = max(1 << 12, 1 << max(0, size - 1).bit_length())
    return [{"id": lzma.FILTER_LZMA2, "preset": preset, "dict_size": min(dict_size, 1 << 26)}]


def _pad4(n: int) -> bytes:
    return b"\x00" * (-n % 4)


def _crc(data: bytes) -> bytes:
    return struct.pack("<I", zlib.crc32(data) & 0xFFFFFFFF)


def stored_stream(data: bytes) -> bytes:
    """One XZ stream (check: none) whose single block holds ``data`` in LZMA2 uncompressed chunks."""
    flags = CHECK_NONE_FLAGS
    header = STREAM_MAGIC + flags + _crc(flags)
    filter_flags = varint(LZMA2_FILTER_ID) + varint(1) + bytes([LZMA2_DICT_1MIB])
    body = bytes([0x00]) + filter_flags  # block flags: one filter, no optional sizes
    size = 1 + len(body) + 4
    body += _pad4(size)
    block_header = bytes([(1 + len(body) + 4) // 4 - 1]) + body
    block_header += _crc(block_header)
    chunks = bytearray()
    for i, start in enumerate(range(0, len(data), CHUNK)):
        piece = data[start : start + CHUNK]
        chunks += bytes([0x01 if i == 0 else 0x02]) + struct.pack(">H", len(piece) - 1) + piece
    chunks.append(0x00)  # end of LZMA2 data
    unpadded = len(block_header) + len(chunks)
    block = block_header + bytes(chunks) + _pad4(unpadded)
    index = b"\x00" + varint(1) + varint(unpadded) + varint(len(data))
    index += _pad4(len(index))
    index += _crc(index)
    backward = struct.pack("<I", len(index) // 4 - 1) + flags
    footer = _crc(backward) + backward + FOOTER_MAGIC
    return header + block + index + footer


def order0_bits_per_byte(data: bytes) -> float:
    if not data:
        return 0.0
    counts = np.bincount(np.frombuffer(data, np.uint8), minlength=256)
    p = counts[counts > 0] / len(data)
    return float(-(p * np.log2(p)).sum())


def is_noise(data: bytes) -> bool:
    """Large enough and close enough to 8 bits/byte that LZMA would only spend time on it."""
    return len(data) >= 4096 and order0_bits_per_byte(data) >= STORE_ABOVE_BITS


def compress_segment(data: bytes) -> bytes:
    """The cheapest good XZ stream for one segment: stored when it is noise, LZMA otherwise."""
    if is_noise(data):
        return stored_stream(data)
    preset = STRONG if len(data) <= SMALL else FAST
    return lzma.compress(data, format=lzma.FORMAT_XZ, check=lzma.CHECK_NONE, filters=_filters(preset, len(data)))


def estimate_compressed(data: bytes) -> int:
    """Bytes :func:`compress_segment` would write, cheaply (a fast preset for large segments)."""
    if is_noise(data):
        return len(data) + 64
    preset = 6 if len(data) <= SMALL else FAST
    return len(lzma.compress(data, format=lzma.FORMAT_XZ, check=lzma.CHECK_NONE, filters=_filters(preset, len(data))))
