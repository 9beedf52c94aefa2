"""Is it a PNG? The signature, a 13-byte IHDR first (not interlaced), every chunk's length and CRC,
image data that inflates to exactly the size the header implies (never more is inflated), IEND
last with nothing after it, and dimensions a client can decode without being flooded.
"""

from __future__ import annotations

import struct
import zlib

__all__ = ["MAX_PIXELS", "MAX_SIDE", "png_size"]

SIGNATURE = b"\x89PNG\r\n\x1a\n"
#: The largest image passed on: each side, and width times height (a 6.4 x 4.8 in figure at 100 dpi
#: is 0.3 megapixels; at 300 dpi, 2.8). At most 128 MB of pixel data are inflated (and counted).
MAX_SIDE, MAX_PIXELS = 8_192, 16_000_000
#: Bytes inflated at a time while the image data is counted.
_PIECE = 64 * 1024
_CHUNK = struct.Struct(">I4s")
_IHDR = struct.Struct(">IIBBBBB")
#: Bit depths each colour type allows (PNG specification, 11.2.2).
_DEPTHS = {0: {1, 2, 4, 8, 16}, 2: {8, 16}, 3: {1, 2, 4, 8}, 4: {8, 16}, 6: {8, 16}}
_CHANNELS = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}


def png_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) of a well-formed PNG within the bounds; None for anything else."""
    chunks = _chunks(data) if data.startswith(SIGNATURE) else None
    if not chunks or chunks[-1][0] != b"IEND" or b"IDAT" not in {kind for kind, _ in chunks}:
        return None
    header = _header(*chunks[0])
    if header is None or not _inflates(header, b"".join(body for kind, body in chunks if kind == b"IDAT")):
        return None
    return header[0], header[1]


def _inflates(header: tuple[int, int, int], compressed: bytes) -> bool:
    """The image data inflates to exactly the bytes its header implies (a filter byte and the pixels of
    each row), counted piece by piece: nothing is kept, and no more than that is ever inflated."""
    width, height, bits = header
    left = height * (1 + (width * bits + 7) // 8)
    inflater, pending = zlib.decompressobj(), compressed
    try:
        while pending and left >= 0:
            left -= len(inflater.decompress(pending, min(left + 1, _PIECE)))
            pending = inflater.unconsumed_tail
    except zlib.error:
        return False
    return left == 0 and inflater.eof and not inflater.unused_data


def _chunks(data: bytes) -> list[tuple[bytes, bytes]] | None:
    """Each chunk's type and body, up to IEND, when every one is whole with its CRC right and
    nothing follows IEND; None otherwise."""
    at, chunks = len(SIGNATURE), []
    while at < len(data):
        if at + _CHUNK.size + 4 > len(data):
            return None
        length, kind = _CHUNK.unpack_from(data, at)
        end = at + _CHUNK.size + length + 4
        if end > len(data) or not kind.isalpha():
            return None
        if zlib.crc32(data[at + 4 : end - 4]) != struct.unpack_from(">I", data, end - 4)[0]:
            return None
        chunks.append((kind, data[at + _CHUNK.size : end - 4]))
        at = end
        if kind == b"IEND":
            return chunks if at == len(data) else None
    return chunks


def _header(kind: bytes, body: bytes) -> tuple[int, int, int] | None:
    """Width, height and bits per pixel of a first chunk that is a valid, non-interlaced IHDR."""
    if kind != b"IHDR" or len(body) != _IHDR.size:
        return None
    width, height, depth, colour, compression, filtering, interlace = _IHDR.unpack(body)
    if not (0 < width <= MAX_SIDE and 0 < height <= MAX_SIDE and width * height <= MAX_PIXELS):
        return None
    if depth not in _DEPTHS.get(colour, set()) or (compression, filtering, interlace) != (0, 0, 0):
        return None
    return width, height, depth * _CHANNELS[colour]
