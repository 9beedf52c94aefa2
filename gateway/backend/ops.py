"""Instrumented Docker operations: each call is a span and an audit event.

Short Docker API calls (create, start, attach, inspect, remove, list...) run on one bounded worker
pool, shared fairly (see `FairPool`): waiting calls are served in turn by tenant, then by principal,
and no principal or tenant holds more than its share of the workers. Nothing that lasts as long as a
command does runs there: an execution waits on the event loop (agent path) or on its sandbox's own
stream threads (`docker exec` path), see `DockerOps.timed`.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import time
from collections import OrderedDict, deque
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, TypeVar

import anyio
import anyio.to_thread
from opentelemetry.trace import Status, StatusCode

from audit import AuditLog
from gateway.errors import GatewayError
from gateway.stages import timed
from gateway.telemetry import instruments, tracer

__all__ = ["GATEWAY_PARTY", "DockerOps", "FairPool", "Party", "acting_for"]

T = TypeVar("T")

#: Executions: the sandbox round trip of a call (its `sandbox` stage, gateway/stages.py), whose
#: success is audited with `emit_later`, once they ran.
_EXECUTIONS = frozenset({"exec", "python"})
#: A call waiting this long (or longer) for a worker is audited as delayed (`capacity.delayed`).
DELAY_AUDIT_S = 0.05
#: The pool counts as saturated (and /ready says so) when a call has waited this long for a worker.
SATURATED_S = 1.0


@dataclass(frozen=True, slots=True)
class Party:
    """Who a Docker call is made for: its share of the pool is counted by tenant and principal."""

    tenant: str
    principal: str


#: The gateway's own work (warm pool, reaper, sweep, shutdown) counts as one party of its own.
GATEWAY_PARTY = Party("(gateway)", "(gateway)")
_PARTY: contextvars.ContextVar[Party] = contextvars.ContextVar("sandbox_gateway_party", default=GATEWAY_PARTY)


@contextlib.contextmanager
def acting_for(tenant: str, principal: str) -> Iterator[None]:
    """Docker calls made inside (in this task and the tasks it starts) count for this principal."""
    token = _PARTY.set(Party(tenant, principal))
    try:
        yield
    finally:
        _PARTY.reset(token)


@dataclass(eq=False, slots=True)
class _Waiter:
    party: Party
    since: float
    granted: anyio.Event = field(default_factory=anyio.Event)


class FairPool:
    """`slots` workers shared by parties. A call gets a worker at once when one is free and its
    principal holds fewer than `principal_share` and its tenant fewer than `tenant_share`; otherwise
    it waits, and freed workers go round-robin over the tenants with a waiting call, then over the
    principals of that tenant. So a burst by one principal (or tenant) is served at its share while
    the calls of others keep getting workers."""

    def __init__(
        self, slots: int, *, principal_share: int | None = None, tenant_share: int | None = None
    ) -> None:
        if slots < 1:
            raise ValueError("the Docker worker pool needs at least one worker")
        self.slots = slots
        self.principal_share = principal_share or max(1, slots // 4)
        self.tenant_share = tenant_share or max(1, slots // 2)
        self.in_use = 0
        self._by_principal: dict[Party, int] = {}
        self._by_tenant: dict[str, int] = {}
        #: tenant -> principal -> waiting calls, each level in serving order (served ones go last).
        self._queue: OrderedDict[str, OrderedDict[Party, deque[_Waiter]]] = OrderedDict()
        self.waiting = 0
        #: The worker threads themselves (never contended: a call holds a slot first).
        self.threads = anyio.CapacityLimiter(slots)

    def _admissible(self, party: Party) -> bool:
        return (
            self.in_use < self.slots
            and self._by_principal.get(party, 0) < self.principal_share
            and self._by_tenant.get(party.tenant, 0) < self.tenant_share
        )

    def _take(self, party: Party) -> None:
        self.in_use += 1
        self._by_principal[party] = self._by_principal.get(party, 0) + 1
        self._by_tenant[party.tenant] = self._by_tenant.get(party.tenant, 0) + 1

    def _give_back(self, party: Party) -> None:
        self.in_use -= 1
        self._by_principal[party] -= 1
        if not self._by_principal[party]:
            del self._by_principal[party]
        self._by_tenant[party.tenant] -= 1
        if not self._by_tenant[party.tenant]:
            del self._by_tenant[party.tenant]
        self._dispatch()

    def _dispatch(self) -> None:
        """Hand free workers to waiting calls: next tenant in turn, next principal of it in turn."""
        while self.in_use < self.slots and self.waiting:
            granted = False
            for tenant in list(self._queue):
                principals = self._queue[tenant]
                for party in list(principals):
                    if not self._admissible(party):
                        continue
                    calls = principals[party]
                    waiter = calls.popleft()
                    self.waiting -= 1
                    if calls:
                        principals.move_to_end(party)
                    else:
                        del principals[party]
                    if principals:
                        self._queue.move_to_end(tenant)
                    else:
                        del self._queue[tenant]
                    self._take(party)
                    waiter.granted.set()
                    granted = True
                    break
                if granted:
                    break
            if not granted:
                return

    def _withdraw(self, waiter: _Waiter) -> None:
        principals = self._queue.get(waiter.party.tenant)
        calls = principals.get(waiter.party) if principals is not None else None
        if calls is None or waiter not in calls:
            return
        calls.remove(waiter)
        self.waiting -= 1
        if not calls:
            del principals[waiter.party]  # type: ignore[union-attr]
        if not principals:
            del self._queue[waiter.party.tenant]

    def oldest_wait_s(self) -> float:
        """How long the longest-waiting call has waited (0 when none waits)."""
        now = time.monotonic()
        return max(
            (now - calls[0].since for principals in self._queue.values() for calls in principals.values()),
            default=0.0,
        )

    @contextlib.asynccontextmanager
    async def slot(self, party: Party) -> Any:
        """Hold one worker for `party`; yields how long the call waited for it, in seconds."""
        waited = 0.0
        queued = self._queue.get(party.tenant)
        if self._admissible(party) and not (queued and queued.get(party)):
            self._take(party)
        else:
            waiter = _Waiter(party, time.monotonic())
            self._queue.setdefault(party.tenant, OrderedDict()).setdefault(party, deque()).append(waiter)
            self.waiting += 1
            try:
                await waiter.granted.wait()
            except BaseException:
                if waiter.granted.is_set():
                    self._give_back(party)
                else:
                    self._withdraw(waiter)
                raise
            waited = time.monotonic() - waiter.since
        try:
            yield waited
        finally:
            self._give_back(party)


class DockerOps:
    """call(op, fn, *args, **attrs): run fn(*args) as `docker.<op>`; attrs label the span and the event."""

    def __init__(self, audit: AuditLog, workers: int = 16) -> None:
        self.audit = audit
        self.pool = FairPool(workers)
        metrics = instruments()
        self._waiting = metrics.docker_ops_waiting
        self._waited = metrics.docker_ops_wait

    def call(self, op: str, fn: Callable[..., T], *args: Any, **attrs: Any) -> T:
        started = time.monotonic()
        with self._span(op, attrs) as span:
            try:
                result = fn(*args)
            except GatewayError as exc:
                self._failed(op, span, exc, started, attrs)
                raise
            if op == "create" and isinstance(result, str):
                attrs["container_id"] = result
                span.set_attribute("sandbox_gateway.container_id", result)
            self.audit.emit(f"docker.{op}", outcome="ok", duration_ms=_ms(started), **attrs)
            return result

    async def timed(self, op: str, fn: Callable[..., Awaitable[T]], *args: Any, **attrs: Any) -> T:
        """Like call(), for an operation that awaits (an execution): it holds no pool worker itself."""
        started = time.monotonic()
        with self._span(op, attrs) as span:
            try:
                with timed("sandbox") if op in _EXECUTIONS else contextlib.nullcontext():
                    result = await fn(*args)
            except GatewayError as exc:
                self._failed(op, span, exc, started, attrs)
                raise
            # An execution that ran is recorded after the fact, off the call's path (its
            # `exec.start` was written before it ran); anything else (attach) before going on.
            emit = self.audit.emit_later if op in _EXECUTIONS else self.audit.emit
            emit(f"docker.{op}", outcome="ok", duration_ms=_ms(started), **attrs)
            return result

    @contextlib.contextmanager
    def _span(self, op: str, attrs: dict[str, Any]) -> Iterator[Any]:
        with tracer().start_as_current_span(f"docker.{op}", record_exception=False) as span:
            for key, value in attrs.items():
                if value is not None:
                    span.set_attribute(f"sandbox_gateway.{key}", value)
            yield span

    def _failed(self, op: str, span: Any, exc: GatewayError, started: float, attrs: dict[str, Any]) -> None:
        span.record_exception(exc)
        span.set_status(Status(StatusCode.ERROR, exc.code))
        self.audit.emit(f"docker.{op}", outcome="error", error=exc.code, duration_ms=_ms(started), **attrs)

    async def acall(self, op: str, fn: Callable[..., T], *args: Any, **attrs: Any) -> T:
        """call() on the fair worker pool; the context (current span, request id) goes with it."""
        return await self._pooled(op, functools.partial(self.call, op, fn, *args, **attrs))

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        """A plain blocking call on the fair pool, without span or event (e.g. list for cleanup)."""
        return await self._pooled(getattr(fn, "__name__", "call"), functools.partial(fn, *args))

    async def _pooled(self, op: str, fn: Callable[[], T]) -> T:
        party = _PARTY.get()
        labels = {"tenant": party.tenant}
        self._waiting.add(1, labels)
        queued = True
        try:
            async with self.pool.slot(party) as waited:
                self._waiting.add(-1, labels)
                queued = False
                self._waited.record(waited * 1000, labels)
                if waited >= DELAY_AUDIT_S:
                    self._delayed(op, party, waited)
                return await anyio.to_thread.run_sync(fn, limiter=self.pool.threads)
        finally:
            if queued:
                self._waiting.add(-1, labels)

    def _delayed(self, op: str, party: Party, waited: float) -> None:
        """Audit a call that waited for a worker: the first per principal and window, the rest counted."""
        self.audit.emit_repeated(
            "capacity.delayed",
            {"principal": party.principal, "tenant": party.tenant, "limit": "docker-workers"},
            op=op,
            waited_ms=round(waited * 1000, 2),
            workers=self.pool.slots,
        )

    def saturation(self) -> dict[str, Any]:
        """The pool's state for /ready: workers in use, calls waiting, the oldest wait, saturated or not."""
        oldest = self.pool.oldest_wait_s()
        return {
            "workers": self.pool.slots,
            "in_use": self.pool.in_use,
            "waiting": self.pool.waiting,
            "oldest_wait_ms": round(oldest * 1000, 1),
            "saturated": oldest >= SATURATED_S,
        }


def _ms(started: float) -> float:
    return round((time.monotonic() - started) * 1000, 2)
