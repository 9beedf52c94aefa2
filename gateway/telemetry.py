"""OpenTelemetry: the gateway's tracer and its set-up.

Spans are always created; they are exported only when the process has a TracerProvider with an
exporter (tests install an in-memory one; `serve` installs the SDK provider).
"""

from __future__ import annotations

from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider

from gateway import __version__

__all__ = ["TRACER_NAME", "configure_tracing", "tracer"]

TRACER_NAME = "sandbox_gateway"


def tracer() -> trace.Tracer:
    return trace.get_tracer(TRACER_NAME, __version__)


def configure_tracing() -> TracerProvider:
    """Install an SDK TracerProvider (once) so spans carry real ids for audit correlation."""
    current = trace.get_tracer_provider()
    if isinstance(current, TracerProvider):
        return current
    provider = TracerProvider(resource=Resource.create({"service.name": "sandbox-gateway"}))
    trace.set_tracer_provider(provider)
    return provider
