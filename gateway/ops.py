"""Instrumented Docker operations: each call is a span and an audit event, and async calls run
on a bounded worker pool so the synchronous Docker SDK never blocks the event loop."""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from typing import Any, TypeVar

import anyio
import anyio.to_thread
from opentelemetry.trace import Status, StatusCode

from audit import AuditLog
from gateway.errors import GatewayError
from gateway.telemetry import tracer

__all__ = ["DockerOps"]

T = TypeVar("T")


class DockerOps:
    """call(op, fn, *args, **attrs): run fn(*args) as `docker.<op>`; attrs label the span and the event."""

    def __init__(self, audit: AuditLog, workers: int = 16) -> None:
        self.audit = audit
        self._limiter = anyio.CapacityLimiter(workers)

    def call(self, op: str, fn: Callable[..., T], *args: Any, **attrs: Any) -> T:
        started = time.monotonic()
        with tracer().start_as_current_span(f"docker.{op}", record_exception=False) as span:
            for key, value in attrs.items():
                if value is not None:
                    span.set_attribute(f"sandbox_gateway.{key}", value)
            try:
                result = fn(*args)
            except GatewayError as exc:
                span.record_exception(exc)
                span.set_status(Status(StatusCode.ERROR, exc.code))
                self.audit.emit(
                    f"docker.{op}", outcome="error", error=exc.code, duration_ms=_ms(started), **attrs
                )
                raise
            if op == "create" and isinstance(result, str):
                attrs["container_id"] = result
                span.set_attribute("sandbox_gateway.container_id", result)
            self.audit.emit(f"docker.{op}", outcome="ok", duration_ms=_ms(started), **attrs)
            return result

    async def acall(self, op: str, fn: Callable[..., T], *args: Any, **attrs: Any) -> T:
        """call() on the worker pool; the context (current span, request id) goes with it."""
        return await anyio.to_thread.run_sync(
            functools.partial(self.call, op, fn, *args, **attrs), limiter=self._limiter
        )

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        """A plain blocking call on the worker pool, without span or event (e.g. list for cleanup)."""
        return await anyio.to_thread.run_sync(functools.partial(fn, *args), limiter=self._limiter)


def _ms(started: float) -> float:
    return round((time.monotonic() - started) * 1000, 2)
