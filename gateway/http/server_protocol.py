"""The HTTP/1.1 protocol the gateway serves with: uvicorn's httptools protocol (llhttp, a C parser,
strict by default), with bounds on what of a request is not its body.

llhttp itself holds no limit on a head: a client could send header bytes for as long as the
connection lasts, and the protocol would keep every one of them; the same goes for a chunked
body's trailers (which uvicorn appends to the request's headers) and chunk extensions. Here the
bytes of each request are counted as they arrive, less its body: past `MAX_HEAD_BYTES` while the
head is incomplete, or past twice that plus a quarter of the body once it is (chunk framing,
extensions, trailers), the request is answered 400 and the connection closed. A head that
completes within the bound is served as before, and the body is the gateway's body cap's to bound
(BodyLimitMiddleware).
"""

from __future__ import annotations

from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

__all__ = ["MAX_HEAD_BYTES", "BoundedHeadProtocol"]

#: The most bytes of one request head (request line and headers) the gateway reads.
MAX_HEAD_BYTES = 64 * 1024


class BoundedHeadProtocol(HttpToolsProtocol):
    """HttpToolsProtocol that refuses a request whose head, framing or trailers run long (see the
    module)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        #: True while the bytes that arrive belong to a request head (between requests, too).
        self._in_head = True
        #: Bytes of the current request received, and of its body delivered.
        self._received = 0
        self._body = 0

    def data_received(self, data: bytes) -> None:
        # Counted before parsing: the body in this chunk is counted again as body (on_body), and a
        # request that ends in it starts the count anew for the next one.
        self._received += len(data)
        super().data_received(data)
        if self.transport.is_closing():
            return
        besides_body = self._received - self._body
        if self._in_head and besides_body > MAX_HEAD_BYTES:
            self._refuse(f"Request head larger than {MAX_HEAD_BYTES} bytes.")
        elif not self._in_head and besides_body > 2 * MAX_HEAD_BYTES + self._body // 4:
            self._refuse("Request framing or trailers too large.")

    def _refuse(self, message: str) -> None:
        self.logger.warning(message)
        self.send_400_response(message)

    def on_headers_complete(self) -> None:
        self._in_head = False
        super().on_headers_complete()

    def on_body(self, body: bytes) -> None:
        self._body += len(body)
        super().on_body(body)

    def on_message_complete(self) -> None:
        super().on_message_complete()
        self._in_head = True
        self._received = self._body = 0
