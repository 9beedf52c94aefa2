"""The HTTP/1.1 protocol the gateway serves with: uvicorn's httptools protocol (llhttp, a C parser,
strict by default) with the bounds llhttp and uvicorn leave out.

What one connection may hold or cost, whoever is on the other end:
- A request head: at most `MAX_HEAD_BYTES` of request line and header fields and `MAX_FIELDS`
  fields (trailers count too, with as much again), counted as the parser delivers them and, for a
  field still arriving, as bytes received: past either, 431 and the connection closes, before the
  application sees the request. uvicorn keeps each field as a tuple, so the count matters as much
  as the bytes.
- Bytes besides the body (chunk framing and extensions, trailers): at most twice the head bound
  plus 8 times the body so far (a body sent in 1-byte chunks still passes); past that, 400.
- Time: a head must arrive within `HEAD_TIMEOUT_S` of its first byte, and a connection waiting
  for the rest of a request (or for its first) is closed after `IDLE_TIMEOUT_S` without a byte;
  one whose client reads nothing of a response for `WRITE_STALL_S` is dropped (all three 30 s;
  `--http-timeout` sets them).
- Pipelining: at most `MAX_PIPELINED` requests wait behind the one being answered; one more
  closes the connection (uvicorn would queue every request of each read, thousands).
- A request answered before its body ended (401, 413, 429...): at most `DRAIN_BYTES` more of it
  are read, then the connection closes, instead of reading and dropping a body of any size.
The body itself is the gateway's body cap's to bound (BodyLimitMiddleware).
"""

from __future__ import annotations

import asyncio
from typing import Any

import httptools
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol

__all__ = [
    "DRAIN_BYTES",
    "HEAD_TIMEOUT_S",
    "IDLE_TIMEOUT_S",
    "MAX_FIELDS",
    "MAX_HEAD_BYTES",
    "MAX_PIPELINED",
    "WRITE_STALL_S",
    "BoundedHttpProtocol",
]

#: The most bytes of one request head (request line and header fields) the gateway reads.
MAX_HEAD_BYTES = 64 * 1024
#: The most header fields of one request (and as many trailer fields).
MAX_FIELDS = 256
#: Requests parsed and waiting while an earlier one on the connection is answered.
MAX_PIPELINED = 16
#: From a head's first byte to its end.
HEAD_TIMEOUT_S = 30.0
#: Without a byte while a request (or the first) is awaited.
IDLE_TIMEOUT_S = 30.0
#: A response the client reads nothing of.
WRITE_STALL_S = 30.0
#: Bytes of a request still read after it was answered, before the connection is closed.
DRAIN_BYTES = 64 * 1024
#: Per field, for its separator and line end (so that empty fields are not free).
_FIELD_OVERHEAD = 4


class _Refused(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class BoundedHttpProtocol(HttpToolsProtocol):
    """HttpToolsProtocol within the bounds of the module; `with_timeout` makes one whose three
    timeouts are another number of seconds."""

    head_timeout_s = HEAD_TIMEOUT_S
    idle_timeout_s = IDLE_TIMEOUT_S
    write_stall_s = WRITE_STALL_S

    @classmethod
    def with_timeout(cls, seconds: float) -> type[BoundedHttpProtocol]:
        times = {"head_timeout_s": seconds, "idle_timeout_s": seconds, "write_stall_s": seconds}
        return type(cls.__name__, (cls,), times)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        #: "idle" between requests, "head" from a request's first byte, "body" once its head ended.
        self._state = "idle"
        self._fields = self._field_bytes = 0
        #: Bytes of the current request received, and of its body delivered.
        self._received = self._body = 0
        #: Bytes still read of a request answered before it ended; None when not draining.
        self._draining: int | None = None
        self._head_timer: asyncio.TimerHandle | None = None
        self._idle_timer: asyncio.TimerHandle | None = None
        self._stall_timer: asyncio.TimerHandle | None = None

    # -- the transport ---------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._idle_timer = self.loop.call_later(self.idle_timeout_s, self._timed_out, "idle")

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop_timers()
        super().connection_lost(exc)

    def _stop_timers(self) -> None:
        for timer in (self._head_timer, self._idle_timer, self._stall_timer):
            if timer is not None:
                timer.cancel()
        self._head_timer = self._idle_timer = self._stall_timer = None

    def data_received(self, data: bytes) -> None:
        self._received += len(data)
        if self._draining is not None:
            self._draining -= len(data)
            if self._draining < 0:
                self.transport.close()
                return
        self._unset_keepalive_if_required()
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            if self._should_upgrade():
                self._stop_timers()  # the connection is the websocket protocol's from here
                self.handle_websocket_upgrade()
            else:
                self._unsupported_upgrade_warning()
            return
        except httptools.HttpParserError as exc:
            refused = exc.__context__ if isinstance(exc.__context__, _Refused) else None
            if refused is None:
                refused = _Refused(400, "Invalid HTTP request received.")
            self._refuse(refused)
            return
        if self.transport.is_closing():
            return
        besides_body = self._received - self._body
        if self._state == "head" and besides_body > MAX_HEAD_BYTES:  # a field still arriving
            self._refuse(_Refused(431, f"Request head larger than {MAX_HEAD_BYTES} bytes."))
        elif self._state == "body" and besides_body > 2 * MAX_HEAD_BYTES + 8 * self._body:
            self._refuse(_Refused(400, "Request framing or trailers too large."))
        else:
            self._rearm_idle()

    def pause_writing(self) -> None:
        super().pause_writing()
        if self._stall_timer is None:
            self._stall_timer = self.loop.call_later(self.write_stall_s, self._timed_out, "stall")

    def resume_writing(self) -> None:
        super().resume_writing()
        if self._stall_timer is not None:
            self._stall_timer.cancel()
            self._stall_timer = None

    # -- the parser's callbacks ------------------------------------------------------------------

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._state = "head"
        self._fields = self._field_bytes = 0
        if self._head_timer is None:
            self._head_timer = self.loop.call_later(self.head_timeout_s, self._timed_out, "head")

    def on_url(self, url: bytes) -> None:
        self._count_field(len(url), fields=0)
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._count_field(len(name) + len(value) + _FIELD_OVERHEAD, fields=1)
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        self._state = "body"
        self._fields = self._field_bytes = 0  # trailers, if any, get a budget of their own
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None
        if len(self.pipeline) >= MAX_PIPELINED:
            raise _Refused(0, f"more than {MAX_PIPELINED} pipelined requests")
        super().on_headers_complete()

    def on_body(self, body: bytes) -> None:
        self._body += len(body)
        super().on_body(body)

    def on_message_complete(self) -> None:
        super().on_message_complete()
        self._state = "idle"
        self._received = self._body = 0
        self._draining = None  # the answered request ended within what was drained

    def on_response_complete(self) -> None:
        cycle = self.cycle
        if not self.pipeline and cycle is not None and cycle.more_body and self._state == "body":
            self._draining = DRAIN_BYTES  # answered before its body ended: read a little, then close
        super().on_response_complete()

    # -- refusals --------------------------------------------------------------------------------

    def _count_field(self, size: int, *, fields: int) -> None:
        self._fields += fields
        self._field_bytes += size
        if self._fields > MAX_FIELDS or self._field_bytes > MAX_HEAD_BYTES:
            part = "head" if self._state == "head" else "trailers"
            raise _Refused(431, f"Request {part} larger than {MAX_HEAD_BYTES} bytes or {MAX_FIELDS} fields.")

    def _refuse(self, refused: _Refused) -> None:
        """Answer `refused` and close. The answer is the refused request's when nothing else is to
        be answered first on the connection and its own answer has not begun; otherwise (or with
        status 0) the connection just closes: anything written would be read as another answer."""
        self.logger.warning("HTTP request refused: %s", refused.message)
        cycle = self.cycle
        own = cycle if self._state == "body" and cycle is not None else None
        earlier = bool(self.pipeline) or (own is None and cycle is not None and not cycle.response_complete)
        answer = refused.status and not earlier and not (own and own.response_started)
        if own is not None:  # the application's answer, if it comes, must not follow this one
            own.disconnected = True
            own.message_event.set()
        if answer and not self.transport.is_closing():
            body = refused.message.encode("ascii")
            self.transport.write(
                STATUS_LINE[refused.status]
                + b"content-type: text/plain; charset=utf-8\r\n"
                + b"content-length: %d\r\nconnection: close\r\n\r\n" % len(body)
                + body
            )
        self.transport.close()

    def _rearm_idle(self) -> None:
        if self._idle_timer is not None:
            self._idle_timer.cancel()
            self._idle_timer = None
        if self._state != "idle":  # a request is under way: its next bytes are awaited
            self._idle_timer = self.loop.call_later(self.idle_timeout_s, self._timed_out, "idle")

    def _timed_out(self, which: str) -> None:
        if which == "idle":
            self._idle_timer = None
        elif which == "head":
            self._head_timer = None
        else:
            self._stall_timer = None
        if self.transport.is_closing():
            return
        if which == "stall":
            self.logger.warning("HTTP client read nothing for %g s: connection dropped", self.write_stall_s)
            self.transport.abort()  # close() would wait for the buffer the client does not read
        elif which == "head" and self._state == "head":
            self._refuse(_Refused(408, f"Request head not received within {self.head_timeout_s:g} s."))
        elif which == "idle" and (self._state != "idle" or self.cycle is None):
            self.transport.close()
