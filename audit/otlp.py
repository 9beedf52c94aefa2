"""OTLP logs sink: each audit line becomes one OTLP log record, exported over HTTP in batches.

Configured by the standard variables (OTEL_EXPORTER_OTLP_ENDPOINT, OTEL_EXPORTER_OTLP_LOGS_ENDPOINT,
OTEL_EXPORTER_OTLP_HEADERS, ...). Export is asynchronous: a write only queues the record, so this
sink never blocks a request; records the exporter drops are counted by the SDK.
"""

from __future__ import annotations

import json
import os

from opentelemetry.exporter.otlp.proto.http._log_exporter import OTLPLogExporter
from opentelemetry.sdk._logs import LoggerProvider
from opentelemetry.sdk._logs.export import BatchLogRecordProcessor
from opentelemetry.sdk.resources import Resource

__all__ = ["OTLPLogSink", "otlp_logs_configured"]


def otlp_logs_configured() -> bool:
    return bool(
        os.environ.get("OTEL_EXPORTER_OTLP_LOGS_ENDPOINT") or os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT")
    )


class OTLPLogSink:
    name = "otlp"

    def __init__(self, service_name: str = "sandbox-gateway") -> None:
        self._provider = LoggerProvider(resource=Resource.create({"service.name": service_name}))
        self._provider.add_log_record_processor(BatchLogRecordProcessor(OTLPLogExporter()))
        self._logger = self._provider.get_logger("sandbox_gateway.audit")
        self._closed = False

    def write(self, line: str) -> None:
        if self._closed:
            raise OSError("the OTLP audit sink is shut down")
        event = json.loads(line)
        self._logger.emit(
            body=line,
            event_name=str(event.get("event", "audit")),
            attributes={
                "audit.event": str(event.get("event", "")),
                "audit.event_id": str(event.get("event_id", "")),
            },
        )

    def writable(self) -> bool:
        return not self._closed

    def flush(self) -> None:
        self._provider.force_flush()

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._provider.shutdown()
