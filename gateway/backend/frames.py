"""Decoding Docker's multiplexed stdout/stderr stream into bounded captures.

The stream is untrusted (it carries whatever the sandbox wrote), so the decoder never buffers
a whole frame: payload is handed on as it arrives and each capture keeps at most its cap.
"""

from __future__ import annotations

from collections.abc import Iterator

__all__ = ["STDERR", "STDOUT", "BoundedCapture", "FrameDecoder", "FrameError"]

STDIN, STDOUT, STDERR = 0, 1, 2
_HEADER = 8


class FrameError(ValueError):
    """The stream is not a valid multiplexed stream."""


class FrameDecoder:
    """Incremental decoder: feed bytes, get (stream, payload piece) pairs."""

    def __init__(self) -> None:
        self._header = bytearray()
        self._stream = 0
        self._remaining = 0

    @property
    def idle(self) -> bool:
        """True between frames, i.e. the stream may end here without losing data."""
        return self._remaining == 0 and not self._header

    def feed(self, data: bytes) -> Iterator[tuple[int, bytes]]:
        view = memoryview(data)
        while view:
            if self._remaining:
                piece = view[: self._remaining]
                self._remaining -= len(piece)
                view = view[len(piece) :]
                yield self._stream, bytes(piece)
                continue
            need = _HEADER - len(self._header)
            self._header += view[:need]
            view = view[need:]
            if len(self._header) < _HEADER:
                return
            stream = self._header[0]
            if stream not in (STDIN, STDOUT, STDERR) or any(self._header[1:4]):
                raise FrameError(f"bad frame header {bytes(self._header)!r}")
            self._stream = stream
            self._remaining = int.from_bytes(self._header[4:8], "big")
            self._header.clear()


class BoundedCapture:
    """Keeps the first `limit` bytes written to it and counts the rest."""

    def __init__(self, limit: int) -> None:
        if limit < 0:
            raise ValueError("limit cannot be negative")
        self.limit = limit
        self.total = 0
        self._buffer = bytearray()

    def write(self, data: bytes) -> None:
        self.total += len(data)
        room = self.limit - len(self._buffer)
        if room > 0:
            self._buffer += data[:room]

    @property
    def truncated(self) -> bool:
        return self.total > self.limit

    def getvalue(self) -> bytes:
        return bytes(self._buffer)
