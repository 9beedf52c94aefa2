"""AuditLog: the processor chain and the fan-out to sinks."""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from typing import Any

import structlog

from audit.errors import AuditWriteError
from audit.processors import AddEventId, AddTimestamp, AddTraceContext, RedactSecrets
from audit.sinks import AuditSink

__all__ = ["AuditLog"]

_log = logging.getLogger("sandbox_gateway.audit")


class _FanOut:
    """The chain's final 'logger': writes the rendered line to every sink."""

    def __init__(self, sinks: Sequence[AuditSink], fail_closed: bool) -> None:
        self.sinks = list(sinks)
        self.fail_closed = fail_closed
        self.failures = 0

    def write(self, line: str) -> None:
        written = 0
        for sink in self.sinks:
            try:
                sink.write(line)
                written += 1
            except OSError as exc:
                self.failures += 1
                _log.error("audit sink %s failed: %s", sink.name, exc)
        if written == 0 and self.fail_closed:
            raise AuditWriteError("no audit sink could record the event")

    info = msg = warning = error = write


def _render(logger: object, method: str, event: Any) -> str:
    return json.dumps(event, sort_keys=True, separators=(",", ":"), default=str)


class AuditLog:
    """emit(event, **fields) -> one JSON line in every sink (enrich, redact, render)."""

    def __init__(self, sinks: Sequence[AuditSink], *, fail_closed: bool = True) -> None:
        if not sinks and fail_closed:
            raise ValueError("fail-closed auditing needs at least one sink")
        self._fanout = _FanOut(sinks, fail_closed)
        self._logger = structlog.wrap_logger(
            self._fanout,
            processors=[
                structlog.contextvars.merge_contextvars,
                AddTimestamp(),
                AddEventId(),
                AddTraceContext(),
                RedactSecrets(),
                _render,
            ],
            wrapper_class=structlog.BoundLogger,
            cache_logger_on_first_use=False,
        )

    @property
    def sinks(self) -> list[AuditSink]:
        return self._fanout.sinks

    @property
    def failures(self) -> int:
        return self._fanout.failures

    def emit(self, event: str, **fields: Any) -> None:
        """Record one event; raises AuditWriteError when fail-closed and nothing could write it."""
        self._logger.info(event, **fields)

    def writable(self) -> bool:
        """True when at least one sink can write (the `/ready` check)."""
        return any(sink.writable() for sink in self._fanout.sinks)
