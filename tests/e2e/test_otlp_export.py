"""OTLP/HTTP export to a real receiver on loopback: audit events, spans and metrics arrive and decode."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from gateway.backend.docker_engine import DockerBackend
from tests.e2e.conftest import mcp_client, start_gateway, stop_gateway

pytestmark = pytest.mark.anyio


class Receiver(ThreadingHTTPServer):
    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.received: dict[str, list[bytes]] = {}
        self.lock = threading.Lock()


class _Handler(BaseHTTPRequestHandler):
    server: Receiver

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        with self.server.lock:
            self.server.received.setdefault(self.path, []).append(body)
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args: object) -> None:
        return None


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    server = Receiver()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


async def test_audit_events_spans_and_metrics_reach_an_otlp_receiver(
    receiver: Receiver, tmp_path: Path, backend: DockerBackend
) -> None:
    endpoint = f"http://127.0.0.1:{receiver.server_address[1]}"
    env = {
        "OTEL_EXPORTER_OTLP_ENDPOINT": endpoint,
        "OTEL_BLRP_SCHEDULE_DELAY": "200",
        "OTEL_BSP_SCHEDULE_DELAY": "200",
        "OTEL_METRIC_EXPORT_INTERVAL": "500",
    }
    gateway = start_gateway(tmp_path, env=env)
    try:
        async with mcp_client(gateway.url, gateway.tokens["alice"]) as client:
            result = await client.call_tool("execute_bash", {"command": "echo exported"})
            denied = await client.call_tool("execute_bash", {"command": "true", "timeout_s": 999})
        assert not result.is_error and denied.is_error
    finally:
        stop_gateway(gateway)  # shutdown flushes every exporter
    assert backend.list({"sandbox-gateway.gateway": gateway.gateway_id}) == []

    bodies: list[str] = []
    for raw in receiver.received.get("/v1/logs", []):
        request = ExportLogsServiceRequest.FromString(raw)
        for resource_logs in request.resource_logs:
            for scope_logs in resource_logs.scope_logs:
                bodies.extend(record.body.string_value for record in scope_logs.log_records)
    assert bodies == gateway.audit_log.read_text().splitlines(), "the same events, byte for byte, in order"
    assert any(json.loads(b)["event"] == "exec.finish" for b in bodies)

    span_names: set[str] = set()
    for raw in receiver.received.get("/v1/traces", []):
        for resource_spans in ExportTraceServiceRequest.FromString(raw).resource_spans:
            for scope_spans in resource_spans.scope_spans:
                span_names.update(span.name for span in scope_spans.spans)
    assert {"tools/call execute_bash", "docker.create", "docker.attach", "docker.exec"} <= span_names

    metric_names: set[str] = set()
    for raw in receiver.received.get("/v1/metrics", []):
        for resource_metrics in ExportMetricsServiceRequest.FromString(raw).resource_metrics:
            for scope_metrics in resource_metrics.scope_metrics:
                metric_names.update(metric.name for metric in scope_metrics.metrics)
    assert {
        "sandbox_gateway.tool_calls",
        "sandbox_gateway.exec.duration",
        "sandbox_gateway.sandboxes",
    } <= metric_names
