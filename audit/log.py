"""AuditLog: the processor chain and the fan-out to sinks, serialised so the chain stays in order."""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from typing import Any

import structlog
from opentelemetry import metrics

from audit.chain import GENESIS
from audit.errors import AuditWriteError
from audit.processors import (
    AddEventId,
    AddTimestamp,
    AddTraceContext,
    ChainHashes,
    CodeMode,
    RecordCode,
    RedactSecrets,
    Structure,
    render,
)
from audit.sinks import AuditSink

__all__ = ["AuditLog"]

_log = logging.getLogger("sandbox_gateway.audit")
_failures = metrics.get_meter("sandbox_gateway.audit").create_counter(
    "sandbox_gateway.audit.write_failures", description="Audit lines a sink could not write"
)


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
                _failures.add(1, {"sink": sink.name})
                _log.error("audit sink %s failed: %s", sink.name, exc)
        if written == 0 and self.fail_closed:
            raise AuditWriteError("no audit sink could record the event")

    info = msg = warning = error = write


class AuditLog:
    """emit(event, **fields) -> one hash-chained JSON line in every sink."""

    def __init__(
        self,
        sinks: Sequence[AuditSink],
        *,
        fail_closed: bool = True,
        code_mode: CodeMode = "hmac",
        hmac_key: bytes | None = None,
    ) -> None:
        if not sinks and fail_closed:
            raise ValueError("fail-closed auditing needs at least one sink")
        self._fanout = _FanOut(sinks, fail_closed)
        self._lock = threading.Lock()
        self._chain = ChainHashes(_resume_head(sinks))
        self.code = RecordCode(code_mode, hmac_key)
        self._logger = structlog.wrap_logger(
            self._fanout,
            processors=[
                structlog.contextvars.merge_contextvars,
                AddTimestamp(),
                AddEventId(),
                AddTraceContext(),
                self.code,
                RedactSecrets(),
                Structure(),
                self._chain,
                render,
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

    @property
    def head(self) -> str:
        """The hash of the last event written."""
        return self._chain.head

    def emit(self, event: str, **fields: Any) -> None:
        """Record one event; raises AuditWriteError when fail-closed and nothing could write it."""
        with self._lock:
            try:
                self._logger.info(event, **fields)
            except BaseException:
                self._chain.rollback()
                raise
            self._chain.commit()

    def writable(self) -> bool:
        """True when at least one sink can write (the `/ready` check)."""
        return any(sink.writable() for sink in self._fanout.sinks)

    def close(self) -> None:
        for sink in self._fanout.sinks:
            close = getattr(sink, "close", None)
            if close is not None:
                close()


def _resume_head(sinks: Sequence[AuditSink]) -> str:
    """Continue the chain of a persistent sink (a file survives restarts; stdout does not)."""
    for sink in sinks:
        last = getattr(sink, "last_hash", None)
        if last is not None:
            head = last()
            if head:
                return str(head)
    return GENESIS
