"""AuditLog: the processor chain and the fan-out to sinks, serialised so the chain stays in order."""

from __future__ import annotations

import contextvars
import datetime as dt
import logging
import threading
from collections.abc import Callable, Mapping, Sequence
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
from audit.repeats import RepeatTable, Summary
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
        repeats: RepeatTable | None = None,
    ) -> None:
        if not sinks and fail_closed:
            raise ValueError("fail-closed auditing needs at least one sink")
        self.repeats = repeats if repeats is not None else RepeatTable()
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

    def emit_repeated(
        self, event: str, key: Mapping[str, str], *, by: str | None = None, **fields: Any
    ) -> None:
        """Record an event that a client can repeat at will (a bad token, a request over a rate limit).

        `key` names its source and is written with it. The first occurrence from that source in a
        window (and the first of each value of the field named `by`) is written at once, with
        `fields`; the others are counted into one `audit.repeated` summary written when the window
        ends. See audit.repeats.
        """
        variant = (by, str(fields[by])) if by is not None else None
        seen = self.repeats.observe(event, tuple(sorted(key.items())), variant)
        self._write_summaries(seen.closed)
        if seen.overflow_started:
            _detached(
                self.emit,
                "audit.overflow",
                of=event,
                capacity=self.repeats.capacity,
                window_s=self.repeats.window_s,
            )
        if seen.record:
            self.emit(event, **{**key, **fields})

    def flush_repeated(self, *, everything: bool = False) -> int:
        """Write the summaries of windows that ended (all open windows with `everything`); how many."""
        summaries = self.repeats.drain() if everything else self.repeats.expire()
        self._write_summaries(summaries)
        return len(summaries)

    def _write_summaries(self, summaries: list[Summary]) -> None:
        for summary in summaries:
            _detached(self.emit, "audit.repeated", **_summary_fields(summary))

    def writable(self) -> bool:
        """True when at least one sink can write (the `/ready` check)."""
        return any(sink.writable() for sink in self._fanout.sinks)

    def close(self) -> None:
        """Write what the repeat table still counts, then close the sinks."""
        try:
            self.flush_repeated(everything=True)
        except AuditWriteError:
            _log.error("audit summaries of repeated events could not be written at close")
        for sink in self._fanout.sinks:
            close = getattr(sink, "close", None)
            if close is not None:
                close()


def _detached(emit: Callable[..., None], event: str, **fields: Any) -> None:
    """Emit outside the current request's context: a summary belongs to no single request, so it
    must not pick up the request id, principal or trace of whichever request happened to close it."""
    contextvars.Context().run(emit, event, **fields)


def _rfc3339(seconds: float) -> str:
    stamp = dt.datetime.fromtimestamp(seconds, dt.UTC).isoformat(timespec="microseconds")
    return stamp.replace("+00:00", "Z")


def _summary_fields(summary: Summary) -> dict[str, Any]:
    fields: dict[str, Any] = dict(summary.key)
    fields.update(
        of=summary.event,
        count=summary.count,
        suppressed=summary.suppressed,
        first_ts=_rfc3339(summary.first),
        last_ts=_rfc3339(summary.last),
        window_s=summary.window_s,
    )
    if summary.counts:
        # A list, not a mapping: as keys, values such as "unknown-token" would be taken for
        # credential names and redacted.
        fields["counts"] = [{name: value, "count": n} for (name, value), n in summary.counts.items()]
    if summary.overflow:
        fields["overflow"] = True
    return fields


def _resume_head(sinks: Sequence[AuditSink]) -> str:
    """Continue the chain of a persistent sink (a file survives restarts; stdout does not)."""
    for sink in sinks:
        last = getattr(sink, "last_hash", None)
        if last is not None:
            head = last()
            if head:
                return str(head)
    return GENESIS
