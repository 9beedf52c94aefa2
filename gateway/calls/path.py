"""The request path every tool call takes below the transport: its audit context, the policy
decision (recorded fail-closed), the principal's request rate and the tenant's concurrency budget."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager
from typing import Any, TypeVar

import anyio
import structlog

from audit import AuditLog, AuditWriteError
from gateway.backend.base import ExecOutcome, OutputCallback, ToolCallHandler
from gateway.calls.budgets import Slots, TenantSlots, budget_instruments
from gateway.calls.explain import PrincipalDirectory
from gateway.errors import GatewayError, InvalidArgument, PolicyDenied, QuotaExceeded
from gateway.fleet.lease import Leases
from gateway.ratelimit import RateLimiter
from gateway.sandboxes.broker import Broker
from gateway.sandboxes.model import principal_key
from gateway.sandboxes.pool import pool_targets
from gateway.stages import timed
from gateway.telemetry import instruments
from policy import Action, Allowed, Principal
from policy.engine import PolicyEngine

__all__ = ["CallPath"]

T = TypeVar("T")


class CallPath:
    """Decides and records tool calls for principals, and runs them in their sandbox within budget."""

    def __init__(
        self,
        engine: PolicyEngine,
        broker: Broker,
        audit: AuditLog,
        *,
        enforce_request_rate: bool = True,
        rates: RateLimiter | None = None,
        principals: PrincipalDirectory | None = None,
    ) -> None:
        self.enforce_request_rate = enforce_request_rate
        #: Per-principal request rates (`rate_limits.requests`); the broker's store unless given one.
        self.rates = rates if rates is not None else broker.rates
        #: Who has a credential in which tenant (the tokens file), for `admin_policy`; without it,
        #: an operator can have only their own calls explained.
        self.principals = principals
        self.engine = engine
        self.broker = broker
        self.audit = audit
        self.metrics = instruments()
        self.budget_metrics = budget_instruments()
        #: Calls running per tenant, against the caller's profile's `exec.max_concurrent_per_tenant`.
        self.tenant_slots: Slots = TenantSlots()
        #: Fleet replicas with Redis: the lease a call holds on its principal's sandbox.
        self.leases: Leases | None = None
        broker.configure_pools(pool_targets(engine))

    def replace_engine(self, engine: PolicyEngine) -> None:
        """Switch to a new, already validated policy; calls in flight keep the Decision they got."""
        self.engine = engine
        self.broker.configure_pools(pool_targets(engine))
        if self.broker.containers.egress is not None:  # allow-lists and limits, for new connections
            self.broker.containers.egress.publish()

    @asynccontextmanager
    async def _request(self, principal: Principal, tool: str, source_ip: str | None) -> AsyncIterator[str]:
        """The call's audit context; an argument the gateway refuses is recorded as `tool.rejected`."""
        request_id = uuid.uuid4().hex
        with structlog.contextvars.bound_contextvars(
            request_id=request_id,
            principal=principal.id,
            tenant=principal.tenant,
            auth_method=principal.auth_method,
            source_ip=source_ip,
            tool=tool,
        ):
            try:
                yield request_id
            except InvalidArgument as exc:
                self._rejected(tool, exc.code, message=exc.message)
                raise

    def _rejected(self, tool: str, code: str, **detail: object) -> None:
        self.metrics.tool_calls.add(1, {"tool": tool, "outcome": "rejected"})
        with contextlib.suppress(AuditWriteError):  # the call is refused either way
            self.audit.emit("tool.rejected", outcome="rejected", error=code, **detail)

    def record_rejection(
        self, principal: Principal | None, tool: str, code: str, *, source_ip: str | None, **detail: object
    ) -> None:
        """Record a call refused before it reached the service: a missing scope, arguments that fail
        the tool's input schema, an unknown tool. `detail` never holds an argument's value."""
        with structlog.contextvars.bound_contextvars(
            request_id=uuid.uuid4().hex,
            principal=principal.id if principal else None,
            tenant=principal.tenant if principal else None,
            auth_method=principal.auth_method if principal else None,
            source_ip=source_ip,
            tool=tool,
        ):
            self._rejected(tool, code, **detail)

    def _decide(self, principal: Principal, action: Action) -> Allowed:
        """Evaluate, record (fail-closed), refuse denials, then apply the principal's request rate."""
        with timed("policy"):
            decision = self.engine.evaluate(principal, action)
        self.audit.emit(
            "policy.decision",
            decision="allow" if decision.allowed else "deny",
            reasons=list(decision.reasons),
            rule_ids=list(decision.rule_ids),
            profile=decision.profile,
            policy_digest=decision.policy_digest,
            input_bytes=action.input_bytes,
            timeout_s=decision.timeout_s if isinstance(decision, Allowed) else action.timeout_s,
        )
        if not isinstance(decision, Allowed):
            self.metrics.denials.add(1, {"reason": decision.reasons[0], "tool": action.tool})
            self.metrics.tool_calls.add(1, {"tool": action.tool, "outcome": "denied"})
            raise PolicyDenied(decision.message, code=decision.reasons[0])
        if not self.enforce_request_rate:
            return decision
        rate = decision.rate_limits.requests
        retry = self.rates.hit("requests", f"{principal.tenant}/{principal.id}", rate)
        if retry is not None:
            self.audit.emit("ratelimit.hit", limit="requests", rate=rate, retry_after_s=retry)
            self.metrics.denials.add(1, {"reason": "rate-limited", "tool": action.tool})
            self.metrics.tool_calls.add(1, {"tool": action.tool, "outcome": "denied"})
            raise QuotaExceeded(f"request rate {rate} reached; retry in {retry:.0f} s", code="rate-limited")
        return decision

    def budget_refused(self, limit: str, key: dict[str, str], **detail: Any) -> None:
        """Record a call or session refused because a budget shared with others was spent: the
        first per source and window on its own line, the rest counted (see audit.repeats)."""
        self.budget_metrics.refusals.add(1, {"limit": limit, "tenant": key.get("tenant", "")})
        with contextlib.suppress(AuditWriteError):  # refused either way
            self.audit.emit_repeated("budget.refused", {**key, "limit": limit}, **detail)

    async def _in_tenant_budget(
        self,
        principal: Principal,
        decision: Allowed,
        argv: list[str],
        on_output: OutputCallback | None = None,
        *,
        tool_calls: ToolCallHandler | None = None,
    ) -> ExecOutcome:
        """broker.execute, counted against the tenant's concurrency cap (refused at once when full)."""
        return await self._budgeted(
            principal,
            decision,
            lambda: self.broker.execute(principal, decision, argv, on_output, tool_calls=tool_calls),
        )

    @contextlib.contextmanager
    def _end_recorded(
        self, tool: str, decision: Allowed, extra: Callable[[], dict[str, Any]] = dict
    ) -> Iterator[None]:
        """However the execution inside fails (cancelled: the client went away or the gateway stops;
        an error), its `exec.finish` is written, with `extra()`: no execution goes unrecorded."""
        try:
            yield
        except anyio.get_cancelled_exc_class():
            self.audit.emit(
                "exec.finish",
                outcome="error",
                error="cancelled",
                policy_digest=decision.policy_digest,
                **extra(),
            )
            raise
        except Exception as exc:
            code = exc.code if isinstance(exc, GatewayError) else "internal-error"
            self.audit.emit(
                "exec.finish", outcome="error", error=code, policy_digest=decision.policy_digest, **extra()
            )
            self.metrics.tool_calls.add(1, {"tool": tool, "outcome": "error"})
            raise

    def _egress_refused(self, principal: Principal, since: float) -> list[str]:
        """The principal's connections the egress proxy refused since `since` (none without egress)."""
        egress = self.broker.containers.egress
        return egress.refused_since(principal.tenant, principal.id, since) if egress is not None else []

    def _finished(self, decision: Allowed, outcome: Any, **fields: Any) -> None:
        """`exec.finish` of an execution that ran to its end (an ExecOutcome or a PythonOutcome),
        with `fields` (exit code, timeout, truncation, duration, ...) on top of what every one has.
        Written off the call's path (it records what already happened; `exec.start` was written
        before anything ran); AuditWriteError if the log's queue is full or the log is failed."""
        self.audit.emit_later(
            "exec.finish",
            outcome="ok",
            stdout_bytes=outcome.stdout_bytes,
            stderr_bytes=outcome.stderr_bytes,
            sandbox_lost=outcome.sandbox_lost,
            sandbox_replaced=outcome.sandbox_replaced,
            oom_killed=outcome.oom_killed,
            policy_digest=decision.policy_digest,
            max_output_bytes=decision.limits.max_output_bytes,
            **fields,
        )

    async def _budgeted(self, principal: Principal, decision: Allowed, call: Callable[[], Awaitable[T]]) -> T:
        """`call()`, counted against the tenant's concurrency cap (refused at once when full)."""
        tenant, cap = principal.tenant, decision.limits.max_concurrent_per_tenant
        if not self.tenant_slots.acquire(tenant, cap):
            self.budget_refused("tenant-concurrency", {"tenant": tenant}, principal=principal.id, cap=cap)
            raise QuotaExceeded(
                f"tenant concurrency cap: {cap} calls already running for this tenant; retry when one ends",
                code="tenant-concurrency-quota",
            )
        self.budget_metrics.tenant_running.add(1, {"tenant": tenant})
        try:
            if self.leases is None:
                return await call()
            async with self.leases.held(principal_key(principal)):  # fleet replicas: one drives
                return await call()
        finally:
            self.tenant_slots.release(tenant)
            self.budget_metrics.tenant_running.add(-1, {"tenant": tenant})
