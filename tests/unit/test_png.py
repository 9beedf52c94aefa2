"""The PNG check the gateway applies to images from an interpreter: only well-formed PNGs within
the bounds pass, and whatever passes decodes (differentially, against Pillow)."""

from __future__ import annotations

import io
import struct
import zlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from gateway.backend.png import MAX_SIDE, png_size


def chunk(kind: bytes, body: bytes, crc: int | None = None) -> bytes:
    crc = zlib.crc32(kind + body) if crc is None else crc
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", crc)


def ihdr(width: int = 3, height: int = 2, depth: int = 8, colour: int = 2) -> bytes:
    return chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, depth, colour, 0, 0, 0))


def png(width: int = 3, height: int = 2, *, extra: bytes = b"") -> bytes:
    raw = b"".join(b"\x00" + b"\x10\x20\x30" * width for _ in range(height))
    idat = chunk(b"IDAT", zlib.compress(raw))
    return b"\x89PNG\r\n\x1a\n" + ihdr(width, height) + extra + idat + chunk(b"IEND", b"")


def test_a_well_formed_png_gives_its_size() -> None:
    assert png_size(png(5, 4)) == (5, 4)
    assert png_size(png(extra=chunk(b"tEXt", b"Software\x00matplotlib"))) == (3, 2)


@pytest.mark.parametrize(
    "data",
    [
        png()[:-1],  # cut
        png() + b"<script>",  # something after IEND
        png().replace(b"IDAT", b"IDAx"),  # no IDAT (and a wrong CRC)
        b"\x89PNG\r\n\x1a\n" + ihdr() + chunk(b"IEND", b""),  # no IDAT
        b"\x89PNG\r\n\x1a\n" + chunk(b"IDAT", b"x") + ihdr() + chunk(b"IEND", b""),  # IHDR not first
        b"\x89PNG\r\n\x1a\n" + struct.pack(">I4sII", 13, b"IHDR", 1, 1) + b"<script>alert(1)</script>",
        png(extra=chunk(b"tEXt", b"x", crc=0)),  # a wrong CRC
        png(extra=chunk(b"t3Xt", b"x")),  # not a chunk type
        b"\x89PNG\r\n\x1a\n" + ihdr(MAX_SIDE + 1, 1) + chunk(b"IDAT", b"") + chunk(b"IEND", b""),
        b"\x89PNG\r\n\x1a\n" + ihdr(10_000, 10_000) + chunk(b"IDAT", b"") + chunk(b"IEND", b""),
        b"\x89PNG\r\n\x1a\n" + ihdr(0, 5) + chunk(b"IDAT", b"") + chunk(b"IEND", b""),
        b"\x89PNG\r\n\x1a\n" + ihdr(depth=3) + chunk(b"IDAT", b"") + chunk(b"IEND", b""),
        b"GIF89a" + png()[8:],
        b"",
    ],
)
def test_anything_else_is_refused(data: bytes) -> None:
    assert png_size(data) is None


def recrc(data: bytes) -> bytes:
    """`data` with every chunk's CRC made right again (so the mutation reaches the checks after it)."""
    out, at = bytearray(data[:8]), 8
    while at + 8 <= len(data):
        (length,) = struct.unpack_from(">I", data, at)
        body = data[at + 4 : at + 8 + length]
        if at + 12 + length > len(data):
            return bytes(out + data[at:])
        out += data[at : at + 4] + body + struct.pack(">I", zlib.crc32(body))
        at += 12 + length
    return bytes(out + data[at:])


@settings(max_examples=500, deadline=None)
@given(st.data())
def test_whatever_passes_decodes_as_the_size_it_claims(data: st.DataObject) -> None:
    original = bytearray(png(4, 3, extra=chunk(b"tEXt", b"k\x00v")))
    for _ in range(data.draw(st.integers(1, 3))):
        at = data.draw(st.integers(8, len(original) - 1))
        original[at] = data.draw(st.integers(0, 255))
    mutated = recrc(bytes(original))
    size = png_size(mutated)
    if size is None:
        return
    picture = Image.open(io.BytesIO(mutated))
    picture.load()
    assert picture.size == size


def test_an_image_whose_data_inflates_beyond_its_header_is_refused() -> None:
    bomb = zlib.compress(b"\x00" * 10_000_000)
    data = b"\x89PNG\r\n\x1a\n" + ihdr(3, 2) + chunk(b"IDAT", bomb) + chunk(b"IEND", b"")
    assert png_size(data) is None
    short = (
        b"\x89PNG\r\n\x1a\n" + ihdr(3, 2) + chunk(b"IDAT", zlib.compress(b"\x00" * 5)) + chunk(b"IEND", b"")
    )
    assert png_size(short) is None


def test_a_small_file_claiming_a_huge_image_is_refused_without_inflating_it() -> None:
    bomb = zlib.compress(b"\x00" * (1 + 8192 * 3) * 4000)  # 98 MB of pixels in about 100 kB
    data = b"\x89PNG\r\n\x1a\n" + ihdr(8192, 4000) + chunk(b"IDAT", bomb) + chunk(b"IEND", b"")
    assert len(data) < 200_000 and png_size(data) is None  # 32.8 megapixels: above the bound
    within = (
        b"\x89PNG\r\n\x1a\n" + ihdr(4000, 4000) + chunk(b"IDAT", zlib.compress(b"\x00" * (1 + 12000) * 4000))
    )
    assert png_size(within + chunk(b"IEND", b"")) == (4000, 4000)
