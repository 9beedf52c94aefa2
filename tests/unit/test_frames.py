"""The multiplexed-stream decoder and the bounded capture."""

import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.backend.frames import STDERR, STDOUT, BoundedCapture, FrameDecoder, FrameError


def frame(stream: int, payload: bytes) -> bytes:
    return struct.pack(">BxxxL", stream, len(payload)) + payload


def decode(data: bytes, chunk: int) -> tuple[bytes, bytes]:
    decoder, out, err = FrameDecoder(), bytearray(), bytearray()
    for i in range(0, len(data), chunk):
        for stream, piece in decoder.feed(data[i : i + chunk]):
            (out if stream == STDOUT else err).extend(piece)
    assert decoder.idle
    return bytes(out), bytes(err)


@given(
    frames=st.lists(st.tuples(st.sampled_from([STDOUT, STDERR]), st.binary(max_size=300)), max_size=20),
    chunk=st.integers(min_value=1, max_value=64),
)
def test_decoding_is_independent_of_how_bytes_arrive(frames: list[tuple[int, bytes]], chunk: int) -> None:
    data = b"".join(frame(s, p) for s, p in frames)
    expected_out = b"".join(p for s, p in frames if s == STDOUT)
    expected_err = b"".join(p for s, p in frames if s == STDERR)
    assert decode(data, chunk) == (expected_out, expected_err)


def test_a_huge_announced_frame_is_streamed_not_buffered() -> None:
    decoder = FrameDecoder()
    pieces = list(decoder.feed(struct.pack(">BxxxL", STDOUT, 2**31) + b"abc"))
    assert pieces == [(STDOUT, b"abc")]
    assert not decoder.idle


@pytest.mark.parametrize(
    "header",
    [b"\x07\x00\x00\x00\x00\x00\x00\x01", b"\x01\x01\x00\x00\x00\x00\x00\x01"],
    ids=["bad-stream", "bad-padding"],
)
def test_garbage_header_is_an_error(header: bytes) -> None:
    with pytest.raises(FrameError):
        list(FrameDecoder().feed(header + b"x"))


def test_capture_keeps_the_first_bytes_and_counts_all() -> None:
    capture = BoundedCapture(5)
    for piece in (b"abc", b"defg", b"hij"):
        capture.write(piece)
    assert capture.getvalue() == b"abcde"
    assert capture.total == 10
    assert capture.truncated


def test_capture_at_exact_limit_is_not_truncated() -> None:
    capture = BoundedCapture(3)
    capture.write(b"abc")
    assert not capture.truncated and capture.getvalue() == b"abc"
