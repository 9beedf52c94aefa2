"""AuditLog: the processor chain and the fan-out to sinks, serialised so the chain stays in order.

`emit` writes an event before it returns; `emit_later` queues it (see audit.writer) for events
recorded after the fact, off the caller's path. Both share one chain, in the order of the calls.
"""

from __future__ import annotations

import contextvars
import logging
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
    rfc3339,
)
from audit.repeats import RepeatTable, Summary
from audit.sinks import AuditSink
from audit.writer import DEFAULT_CAPACITY, DeferredWriter

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

    def sync(self) -> None:
        """Make what the sinks wrote durable, for those that can (a file sink with fsync "batch")."""
        for sink in self.sinks:
            sync = getattr(sink, "sync", None)
            if sync is None:
                continue
            try:
                sync()
            except OSError as exc:
                self.failures += 1
                _failures.add(1, {"sink": sink.name})
                _log.error("audit sink %s could not sync: %s", sink.name, exc)

    info = msg = warning = error = write


class AuditLog:
    """emit(event, **fields) -> one hash-chained JSON line in every sink; emit_later queues it.

    `queue_capacity` bounds the events `emit_later` holds at once (fail-closed, one more is refused).
    """

    def __init__(
        self,
        sinks: Sequence[AuditSink],
        *,
        fail_closed: bool = True,
        code_mode: CodeMode = "hmac",
        hmac_key: bytes | None = None,
        repeats: RepeatTable | None = None,
        queue_capacity: int = DEFAULT_CAPACITY,
    ) -> None:
        if not sinks and fail_closed:
            raise ValueError("fail-closed auditing needs at least one sink")
        self.repeats = repeats if repeats is not None else RepeatTable()
        self._fanout = _FanOut(sinks, fail_closed)
        self._writer = DeferredWriter(
            self._write, self._fanout.sync, capacity=queue_capacity, fail_closed=fail_closed
        )
        self._chain = ChainHashes(_resume_head(sinks))
        self.code = RecordCode(code_mode, hmac_key)
        self._logger = structlog.BoundLogger(
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
            ],
            context={},
        )

    @property
    def sinks(self) -> list[AuditSink]:
        return self._fanout.sinks

    @property
    def failures(self) -> int:
        return self._fanout.failures

    @property
    def lost(self) -> int:
        """Deferred events dropped because no sink could write them (each counted in an `audit.gap`)."""
        return self._writer.lost

    @property
    def failed(self) -> bool:
        """True after a deferred event was lost, until a synchronous emit writes the `audit.gap`."""
        return self._writer.failed

    @property
    def head(self) -> str:
        """The hash of the last event written."""
        return self._chain.head

    def emit(self, event: str, **fields: Any) -> None:
        """Record one event before returning, after every event queued before it; raises
        AuditWriteError when fail-closed and it could not be written (or the log is failed and
        cannot write its `audit.gap` yet)."""
        self._writer.write_now(event, fields)

    def emit_later(self, event: str, **fields: Any) -> None:
        """Queue one event, with the caller's context (request id, span) and time; returns at once.

        For what is recorded after the fact (an execution's end): the line follows within moments,
        in call order. Fail-closed, raises AuditWriteError when the queue is full or the log is
        failed (a deferred event could not be written), so the caller can refuse its call. The
        values of `fields` are read when the event is written: do not change them afterwards.
        """
        self._writer.defer(event, fields)

    def flush(self) -> None:
        """Write everything queued so far, on this thread; AuditWriteError if the log is failed."""
        self._writer.flush()

    def _write(self, event: str, fields: dict[str, Any]) -> None:
        """Run the pipeline on one event and write it; the caller holds the writer's lock."""
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
        """True when the log is not failed and at least one sink can write (the `/ready` check)."""
        return not self._writer.failed and any(sink.writable() for sink in self._fanout.sinks)

    def close(self) -> None:
        """Write what the repeat table still counts and what is queued, then close the sinks."""
        try:
            self.flush_repeated(everything=True)
        except AuditWriteError:
            _log.error("audit summaries of repeated events could not be written at close")
        try:
            self._writer.close()
        except AuditWriteError:
            _log.error("deferred audit events could not be written at close (%d lost)", self.lost)
        for sink in self._fanout.sinks:
            close = getattr(sink, "close", None)
            if close is not None:
                close()


def _detached(emit: Callable[..., None], event: str, **fields: Any) -> None:
    """Emit outside the current request's context: a summary belongs to no single request, so it
    must not pick up the request id, principal or trace of whichever request happened to close it."""
    contextvars.Context().run(emit, event, **fields)


def _summary_fields(summary: Summary) -> dict[str, Any]:
    fields: dict[str, Any] = dict(summary.key)
    fields.update(
        of=summary.event,
        count=summary.count,
        suppressed=summary.suppressed,
        first_ts=rfc3339(summary.first),
        last_ts=rfc3339(summary.last),
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
