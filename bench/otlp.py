"""A minimal OTLP/HTTP trace receiver: the spans a gateway exports, kept in memory for the benchmark.

`POST /v1/traces` with a protobuf `ExportTraceServiceRequest` (gzip when Content-Encoding says so) is
answered 200 with an empty `ExportTraceServiceResponse`; anything else gets 404 (path), 415 (an
encoding other than gzip or none) or 400 (a body that does not decode). It serves on a thread of
its own, on loopback, on a port the system picks.
"""

from __future__ import annotations

import gzip
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from google.protobuf.message import DecodeError
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue

__all__ = ["TRACES_PATH", "SpanRecord", "TraceReceiver", "decode_traces"]

TRACES_PATH = "/v1/traces"
#: OTLP's Span.SpanKind value for a server span.
SERVER = 2


@dataclass(frozen=True)
class SpanRecord:
    """One exported span: what the benchmark reads of it."""

    name: str
    trace_id: str
    span_id: str
    kind: int
    start_ns: int
    end_ns: int
    attributes: dict[str, Any]


def _value(value: AnyValue) -> Any:
    which = value.WhichOneof("value")
    if which is None:
        return None
    if which == "array_value":
        return [_value(item) for item in value.array_value.values]
    if which == "kvlist_value":
        return {item.key: _value(item.value) for item in value.kvlist_value.values}
    return getattr(value, which)


def decode_traces(body: bytes, content_encoding: str | None = None) -> list[SpanRecord]:
    """The spans of one export request. Raises ValueError for an unknown encoding or a bad body."""
    encoding = (content_encoding or "").strip().lower()
    if encoding == "gzip":
        try:
            body = gzip.decompress(body)
        except (OSError, EOFError) as exc:
            raise ValueError(f"not gzip: {exc}") from exc
    elif encoding not in ("", "identity"):
        raise ValueError(f"unsupported Content-Encoding {content_encoding!r}")
    request = ExportTraceServiceRequest()
    try:
        request.ParseFromString(body)
    except DecodeError as exc:
        raise ValueError(f"not an ExportTraceServiceRequest: {exc}") from exc
    return [
        SpanRecord(
            name=span.name,
            trace_id=span.trace_id.hex(),
            span_id=span.span_id.hex(),
            kind=int(span.kind),
            start_ns=int(span.start_time_unix_nano),
            end_ns=int(span.end_time_unix_nano),
            attributes={attribute.key: _value(attribute.value) for attribute in span.attributes},
        )
        for resource in request.resource_spans
        for scope in resource.scope_spans
        for span in scope.spans
    ]


class TraceReceiver:
    """`with TraceReceiver() as receiver:` serves until the block ends; `endpoint` is the URL for
    OTEL_EXPORTER_OTLP_TRACES_ENDPOINT, `spans()` what has arrived so far."""

    def __init__(self, host: str = "127.0.0.1") -> None:
        self._spans: list[SpanRecord] = []
        self._lock = threading.Lock()
        self.requests = 0
        self.rejected = 0
        self._server = ThreadingHTTPServer((host, 0), self._handler())
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, name="otlp-receiver", daemon=True)

    @property
    def endpoint(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}{TRACES_PATH}"

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length)
                if self.path.split("?", 1)[0] != TRACES_PATH:
                    self._answer(404, b"")
                    return
                try:
                    spans = decode_traces(body, self.headers.get("Content-Encoding"))
                except ValueError as exc:
                    receiver._reject()
                    self._answer(415 if "Content-Encoding" in str(exc) else 400, str(exc).encode())
                    return
                receiver._add(spans)
                self._answer(200, ExportTraceServiceResponse().SerializeToString())

            def _answer(self, status: int, body: bytes) -> None:
                self.send_response(status)
                self.send_header("Content-Type", "application/x-protobuf" if status == 200 else "text/plain")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                """Quiet: the benchmark prints its own progress."""

        return Handler

    def _add(self, spans: list[SpanRecord]) -> None:
        with self._lock:
            self._spans.extend(spans)
            self.requests += 1

    def _reject(self) -> None:
        with self._lock:
            self.rejected += 1

    def spans(self) -> list[SpanRecord]:
        with self._lock:
            return list(self._spans)

    def wait_for(self, done: Callable[[list[SpanRecord]], bool], timeout_s: float) -> bool:
        """Poll until `done(spans)` holds or the time is up; returns whether it held."""
        deadline = time.monotonic() + timeout_s
        while True:
            if done(self.spans()):
                return True
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.05)

    def start(self) -> TraceReceiver:
        self._thread.start()
        return self

    def close(self) -> None:
        if self._thread.is_alive():
            self._server.shutdown()
            self._thread.join(timeout=5)
        self._server.server_close()

    def __enter__(self) -> TraceReceiver:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()
