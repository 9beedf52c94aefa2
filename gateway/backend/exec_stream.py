"""Reading a `docker exec` output stream: the engine's multiplexed frames into bounded captures,
until the command ends or its deadline passes."""

from __future__ import annotations

import select
import socket
import ssl
import time
from typing import Any

from gateway.backend.base import OutputCallback
from gateway.backend.frames import STDERR, STDOUT, BoundedCapture, FrameDecoder, FrameError
from gateway.errors import EngineError, SandboxError

__all__ = ["already_buffered", "pump"]


def already_buffered(raw: Any) -> bytes:
    """Bytes of the stream that the HTTP client read together with the response headers.

    A fast command's first frames can arrive in the same packet as the headers; they then sit in the
    response's buffered reader, not in the socket, and reading the socket alone would lose them.
    """
    try:
        reader = raw._response.raw._fp.fp
        pending = reader.peek(1 << 20)
    except (AttributeError, OSError, ValueError):
        return b""
    return bytes(reader.read(len(pending))) if pending else b""


def pump(
    sock: socket.socket,
    out: BoundedCapture,
    err: BoundedCapture,
    deadline: float,
    early: bytes = b"",
    *,
    on_output: OutputCallback | None = None,
) -> bool:
    """Read the multiplexed stream into the captures until EOF; True when the deadline cut it short."""
    decoder = FrameDecoder()

    def consume(data: bytes) -> None:
        try:
            for stream, piece in decoder.feed(data):
                (err if stream == STDERR else out if stream == STDOUT else _DISCARD).write(piece)
                if on_output is not None and stream in (STDOUT, STDERR):
                    on_output("stderr" if stream == STDERR else "stdout", piece)
        except FrameError as exc:
            raise SandboxError("the engine sent a malformed output stream") from exc

    if early:
        consume(early)
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return True
        buffered = isinstance(sock, ssl.SSLSocket) and sock.pending()  # decrypted, not seen by select
        if not buffered and not select.select([sock], [], [], min(remaining, 1.0))[0]:
            continue
        try:
            data = sock.recv(262144)
        except (BlockingIOError, ssl.SSLWantReadError):
            continue
        except OSError as exc:
            raise EngineError("the command's output stream broke off (engine or proxy restarted?)") from exc
        if not data:
            return False
        consume(data)


class _Discard:
    def write(self, data: bytes) -> None:
        return None


_DISCARD = _Discard()
