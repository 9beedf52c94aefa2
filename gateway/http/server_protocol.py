"""The HTTP/1.1 protocol the gateway serves with: uvicorn's httptools protocol (llhttp, a C parser,
strict by default), with a bound on a request head still being received.

llhttp itself holds no limit on a head: a client could send header bytes for as long as the
connection lasts, and the protocol would keep every one of them. Here the bytes received while a
request's head is incomplete are counted; past `MAX_HEAD_BYTES` the request is answered 400 and the
connection closed, before the head is ever handed to the application. A head that completes within
the bound is served as before; so is any body, which the gateway's body cap bounds
(BodyLimitMiddleware).
"""

from __future__ import annotations

from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

__all__ = ["MAX_HEAD_BYTES", "BoundedHeadProtocol"]

#: The most bytes of one request head (request line and headers) the gateway reads.
MAX_HEAD_BYTES = 64 * 1024


class BoundedHeadProtocol(HttpToolsProtocol):
    """HttpToolsProtocol that refuses a request head longer than MAX_HEAD_BYTES (see the module)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        #: True while the bytes that arrive belong to a request head (between requests, too).
        self._in_head = True
        self._head_bytes = 0

    def data_received(self, data: bytes) -> None:
        if self._in_head:
            self._head_bytes += len(data)
        super().data_received(data)
        # Counted before parsing: a chunk that completes its head restarts the count (below) however
        # much body follows it; one that leaves the head incomplete was all head.
        if self._in_head and self._head_bytes > MAX_HEAD_BYTES and not self.transport.is_closing():
            message = f"Request head larger than {MAX_HEAD_BYTES} bytes."
            self.logger.warning(message)
            self.send_400_response(message)

    def on_headers_complete(self) -> None:
        self._in_head = False
        self._head_bytes = 0
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        super().on_message_complete()
        self._in_head = True
        self._head_bytes = 0
