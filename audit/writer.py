"""Deferred audit events: a bounded queue, drained in call order by whoever writes next.

`AuditLog.emit_later` captures what an event needs from its caller (the context, so the request id
and the current span; the time; an event id) and queues it. Lines are written under one lock, and
whoever holds it writes everything queued first ("combining"): a synchronous `emit` drains the queue
on its own thread before its own event, and a daemon thread drains it when nobody else does. So the
hash chain follows the order of the calls and a synchronous emit never waits for another thread to
be scheduled.

Fail-closed: when a queued event cannot be written (no sink took it), the log is *failed*: that
event and those queued after it are dropped (the chain head stays at the last line written, so the
file has no gap in its chain), every later event is refused until a synchronous emit manages to
write an `audit.gap` event that names what was lost.
"""

from __future__ import annotations

import atexit
import collections
import contextvars
import logging
import threading
import time
import uuid
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from opentelemetry import metrics

from audit.errors import AuditWriteError
from audit.processors import CAPTURED_AT, CAPTURED_ID, rfc3339

__all__ = ["DEFAULT_CAPACITY", "LOST_IDS_KEPT", "DeferredWriter"]

_log = logging.getLogger("sandbox_gateway.audit")
_lost_counter = metrics.get_meter("sandbox_gateway.audit").create_counter(
    "sandbox_gateway.audit.lost", description="Deferred audit events dropped because no sink could write"
)

#: Events queued at most; one more is refused (fail-closed) or written at once (otherwise).
DEFAULT_CAPACITY = 1024
#: An `audit.gap` lists the event ids of this many lost events at most (all of them are counted).
LOST_IDS_KEPT = 100
#: Woken, the writer thread waits this long before it writes: events of that moment are written
#: together, and the thread does not compete for the interpreter with the caller that woke it.
_GATHER_S = 0.001
#: The writer thread ends after this long without work (the next deferred event starts another).
_IDLE_EXIT_S = 5.0
#: Writers with a thread; what they still hold is written when the interpreter exits.
_LIVE: weakref.WeakSet[DeferredWriter] = weakref.WeakSet()

#: Writes one event through the pipeline, in the current context; raises when nothing wrote it.
WriteOne = Callable[[str, dict[str, Any]], None]


@dataclass(slots=True)
class _Queued:
    event: str
    fields: dict[str, Any]
    context: contextvars.Context


@dataclass(slots=True)
class _Lost:
    """Events dropped since the log failed, for the `audit.gap` that ends the failure."""

    since: float = field(default_factory=time.time)
    count: int = 0
    names: collections.Counter[str] = field(default_factory=collections.Counter)
    ids: list[str] = field(default_factory=list)

    def add(self, items: list[_Queued]) -> None:
        self.count += len(items)
        for item in items:
            self.names[item.event] += 1
            if len(self.ids) < LOST_IDS_KEPT:
                self.ids.append(str(item.fields[CAPTURED_ID]))

    def gap_fields(self) -> dict[str, Any]:
        # Names in a list, not as keys: a key such as "token.create" would be taken for a credential.
        return {
            "lost": self.count,
            "lost_events": [{"event": name, "count": n} for name, n in sorted(self.names.items())],
            "lost_event_ids": list(self.ids),
            "lost_event_ids_truncated": self.count > len(self.ids),
            "failed_since": rfc3339(self.since),
        }


class DeferredWriter:
    """The write lock, the queue of deferred events and the thread that drains it."""

    def __init__(
        self, write: WriteOne, sync: Callable[[], None], *, capacity: int, fail_closed: bool
    ) -> None:
        if capacity < 1:
            raise ValueError("the deferred audit queue needs room for at least one event")
        self.capacity = capacity
        self.fail_closed = fail_closed
        #: Held while lines are written: the order lines are written in is the chain's order.
        self.lock = threading.Lock()
        self._write = write
        self._sync = sync
        self._queue: collections.deque[_Queued] = collections.deque()
        #: Guards the queue, the failed state and the thread's start; never held while writing.
        self._state = threading.Lock()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._closed = False
        self._lost: _Lost | None = None
        #: Deferred events dropped since the start (the `sandbox_gateway.audit.lost` counter's total).
        self.lost = 0

    @property
    def failed(self) -> bool:
        """True from a deferred event that could not be written until an `audit.gap` is."""
        return self._lost is not None

    def defer(self, event: str, fields: dict[str, Any]) -> None:
        """Queue one event with its caller's context, time and event id; returns at once."""
        fields[CAPTURED_AT] = time.time()
        fields[CAPTURED_ID] = uuid.uuid4().hex
        item = _Queued(event, fields, contextvars.copy_context())
        with self._state:
            if self._lost is not None:
                raise AuditWriteError("the audit log lost events and has not recovered: event refused")
            if self._closed:
                raise AuditWriteError("the audit log is closed")
            full = len(self._queue) >= self.capacity
            if not full:
                self._queue.append(item)
                if self._thread is None:
                    self._thread = threading.Thread(target=self._run, name="audit-writer", daemon=True)
                    self._thread.start()
                    _LIVE.add(self)
        if full:
            if self.fail_closed:
                raise AuditWriteError(f"the audit queue is full ({self.capacity} events): event refused")
            self.write_now(event, fields, item.context)  # not fail-closed: late rather than lost
            return
        if not self._wake.is_set():
            self._wake.set()

    def write_now(
        self, event: str, fields: dict[str, Any], context: contextvars.Context | None = None
    ) -> None:
        """Write everything queued, then this event, on the calling thread. In the failed state,
        first try to write the `audit.gap`; raises AuditWriteError if the log cannot recover."""
        with self.lock:
            if self._lost is not None:
                self._recover()
            if self._queue:
                self._drain()
            if context is None:
                self._write(event, fields)
            else:
                context.run(self._write, event, fields)
        self._sync()

    def flush(self) -> None:
        """Write everything queued so far (on this thread); AuditWriteError if the log is failed
        (this flush or the writer thread lost events, and no `audit.gap` was written since)."""
        with self.lock:
            self._drain()
        self._sync()
        if self._lost is not None:
            raise AuditWriteError(f"the audit log is failed: {self._lost.count} deferred event(s) lost")

    def close(self) -> None:
        """Write what is queued (and the `audit.gap` of what was lost, if the log is failed and can
        write it now), then stop the thread; later deferred events are refused."""
        with self._state:
            self._closed = True
        try:
            with self.lock:
                self._recover()  # else no line would ever say what was lost
            self.flush()
        finally:
            self._wake.set()
            thread = self._thread
            if thread is not None and thread is not threading.current_thread():
                thread.join(timeout=10)

    def _run(self) -> None:
        try:
            while True:
                woken = self._wake.wait(timeout=_IDLE_EXIT_S)
                if woken:  # let the caller finish what it is doing (answering its call) first
                    time.sleep(_GATHER_S)
                self._wake.clear()
                with self._state:
                    if not self._queue and (self._closed or not woken):
                        self._thread = None  # decided with the queue seen empty: a defer starts anew
                        return
                try:
                    with self.lock:
                        self._drain()
                    self._sync()
                except AuditWriteError:
                    continue  # the log is failed (and says so); the next synchronous emit retries
        finally:  # a fault ended it: the next deferred event starts another thread
            with self._state:
                if self._thread is threading.current_thread():
                    self._thread = None

    def _drain(self) -> None:
        """Write queued events in order; the caller holds the write lock."""
        while True:
            with self._state:
                if not self._queue:
                    return
                item = self._queue.popleft()
            try:
                item.context.run(self._write, item.event, item.fields)
            except Exception as exc:
                self._dropped(item, exc)
                if self.fail_closed:
                    raise AuditWriteError("a deferred audit event could not be written") from exc

    def _dropped(self, item: _Queued, exc: Exception) -> None:
        """Count a deferred event that was not written; fail-closed, the log fails and drops the rest."""
        with self._state:
            items = [item]
            if self.fail_closed:
                items.extend(self._queue)
                self._queue.clear()
                if self._lost is None:
                    self._lost = _Lost()
                self._lost.add(items)
        self.lost += len(items)
        _lost_counter.add(len(items))
        _log.error("%d deferred audit event(s) lost, from %s: %s", len(items), item.event, exc)

    def _recover(self) -> None:
        """Write the `audit.gap` for what was lost (outside any request's context); on success the
        log is no longer failed. The caller holds the write lock."""
        lost = self._lost
        if lost is None:
            return
        try:
            contextvars.Context().run(self._write, "audit.gap", lost.gap_fields())
        except Exception as exc:
            raise AuditWriteError("the audit log is still failing: event refused") from exc
        with self._state:
            self._lost = None
        _log.warning("audit log recovered; %d deferred event(s) lost, recorded as audit.gap", lost.count)


@atexit.register
def _write_what_is_left() -> None:
    """At the interpreter's exit (the writer threads are daemons), write what is still queued."""
    for writer in list(_LIVE):
        try:
            writer.flush()
        except AuditWriteError:  # exiting anyway; the loss is logged and counted
            _log.exception("deferred audit events could not be written at exit")
