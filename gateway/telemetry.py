"""OpenTelemetry: the gateway's tracer, meters and their set-up.

Spans and metrics are recorded and exported, over OTLP/HTTP, when OTEL_EXPORTER_OTLP_ENDPOINT (or
the per-signal variant) is set. Otherwise the API's no-op providers stay in place: a span costs
nothing, and the client's trace context (from the request's `_meta`) still names the trace in audit
events.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from opentelemetry import metrics, trace
from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor

from gateway import __version__

__all__ = ["TRACER_NAME", "Instruments", "configure_telemetry", "instruments", "tracer"]

TRACER_NAME = "sandbox_gateway"


def tracer() -> trace.Tracer:
    return trace.get_tracer(TRACER_NAME, __version__)


@dataclass(frozen=True, slots=True)
class Instruments:
    tool_calls: metrics.Counter
    denials: metrics.Counter
    exec_duration: metrics.Histogram
    sandboxes_alive: metrics.UpDownCounter
    docker_ops_waiting: metrics.UpDownCounter
    docker_ops_wait: metrics.Histogram


def instruments() -> Instruments:
    """The gateway's metrics, from whatever MeterProvider is installed (a no-op one until then)."""
    meter = metrics.get_meter(TRACER_NAME, __version__)
    return Instruments(
        tool_calls=meter.create_counter(
            "sandbox_gateway.tool_calls", description="Tool calls by tool and outcome"
        ),
        denials=meter.create_counter("sandbox_gateway.denials", description="Refused calls by reason code"),
        exec_duration=meter.create_histogram(
            "sandbox_gateway.exec.duration", unit="ms", description="Wall-clock time of commands"
        ),
        sandboxes_alive=meter.create_up_down_counter(
            "sandbox_gateway.sandboxes", description="Live sandboxes"
        ),
        docker_ops_waiting=meter.create_up_down_counter(
            "sandbox_gateway.docker_ops.waiting",
            description="Docker API calls waiting for a worker of the shared pool, by tenant",
        ),
        docker_ops_wait=meter.create_histogram(
            "sandbox_gateway.docker_ops.wait",
            unit="ms",
            description="Time a Docker API call waited for a worker of the shared pool, by tenant",
        ),
    )


def _exporting(signal: str) -> bool:
    return bool(
        os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT")
        or os.environ.get(f"OTEL_EXPORTER_OTLP_{signal}_ENDPOINT")
    )


class Telemetry:
    """The installed providers; shutdown() flushes whatever is buffered."""

    def __init__(self, traces: TracerProvider | None, meters: MeterProvider | None) -> None:
        self.traces = traces
        self.meters = meters

    def shutdown(self) -> None:
        if self.traces is not None:
            self.traces.shutdown()
        if self.meters is not None:
            self.meters.shutdown()


def configure_telemetry() -> Telemetry:
    """Install SDK providers (once per process), with OTLP/HTTP exporters when configured."""
    resource = Resource.create({"service.name": "sandbox-gateway", "service.version": __version__})
    traces = None
    if _exporting("TRACES") and not isinstance(trace.get_tracer_provider(), TracerProvider):
        traces = TracerProvider(resource=resource)
        traces.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
        trace.set_tracer_provider(traces)
    meters = None
    if _exporting("METRICS"):
        meters = MeterProvider(
            resource=resource, metric_readers=[PeriodicExportingMetricReader(OTLPMetricExporter())]
        )
        metrics.set_meter_provider(meters)
    return Telemetry(traces, meters)
