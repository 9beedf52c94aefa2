"""Where a tool call's time goes: the gateway's stages, timed per request, on the call's span.

While spans are recorded (an SDK tracer provider is installed: traces are exported, or a test reads
them), `StagesMiddleware` starts a `Stages` for each POST to /mcp; the front door, the policy
decision, the audit log and the sandbox round trip add their time to it with `timed(stage)`, and
`record_tool` marks when the tool's own code starts and returns. `StageAttributes`, an MCP
middleware inside the SDK's own, writes the totals on the SDK's `tools/call <tool>` span as integer
microseconds, `sandbox_gateway.stage.<stage>_us`:

- `http_in`: HTTP and MCP framing in: request received → tool code starts, less `auth` and `rate`;
- `auth`, `rate`: the credential check; the address, principal and tenant rate limits;
- `policy`: policy evaluation; `audit`: audit writes on the call's path (deferred ones: queueing);
- `sandbox`: the sandbox round trip (request sent → its end received);
- `broker`: the rest of the tool's own code (sandbox lookup, bookkeeping, results);
- `encode`: tool returned → the SDK has the result to send;
- `gateway`: all of the above but `sandbox`: the gateway's own time until the answer is ready
  (writing the response follows it).

Without an SDK tracer provider nothing is measured: spans are no-ops then, and so is this.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import time
from collections.abc import Callable, Iterator
from contextvars import ContextVar
from typing import Any, TypeVar

from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from starlette.types import ASGIApp, Receive, Scope, Send

from audit import AuditLog

__all__ = [
    "STAGES",
    "StageAttributes",
    "StagedAuditLog",
    "Stages",
    "StagesMiddleware",
    "record_tool",
    "timed",
]

STAGES = ("http_in", "auth", "rate", "policy", "audit", "broker", "sandbox", "encode", "gateway")
_TIMED = ("auth", "rate", "policy", "audit", "sandbox")
_SCOPE_KEY = "sandbox_gateway.stages"
_CURRENT: ContextVar[Stages | None] = ContextVar("sandbox_gateway_stages", default=None)
F = TypeVar("F", bound=Callable[..., Any])


class Stages:
    """The time one request spent in each stage, in nanoseconds (perf_counter_ns)."""

    __slots__ = ("received", "spent", "tool_returned", "tool_started")

    def __init__(self, received: int) -> None:
        self.received = received
        self.spent = dict.fromkeys(_TIMED, 0)
        self.tool_started = 0
        self.tool_returned = 0

    def add(self, stage: str, ns: int) -> None:
        self.spent[stage] += ns

    def breakdown(self, end: int) -> dict[str, int]:
        """Microseconds per stage of STAGES, for a call whose result was ready at `end`."""
        spent = self.spent
        started = self.tool_started or end
        returned = self.tool_returned or end
        inside = spent["policy"] + spent["audit"] + spent["sandbox"]
        ns = {
            "http_in": started - self.received - spent["auth"] - spent["rate"],
            **spent,
            "broker": (returned - started) - inside,
            "encode": end - returned,
            "gateway": (end - self.received) - spent["sandbox"],
        }
        return {stage: max(0, ns[stage]) // 1000 for stage in STAGES}


def _recording() -> bool:
    return isinstance(trace.get_tracer_provider(), TracerProvider)


class StagesMiddleware:
    """Outermost: starts the stages of each POST to `prefix` while spans are recorded."""

    def __init__(self, app: ASGIApp, prefix: str = "/mcp") -> None:
        self.app = app
        self.prefix = prefix

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if not (
            scope["type"] == "http"
            and scope["method"] == "POST"
            and scope["path"].startswith(self.prefix)
            and _recording()
        ):
            await self.app(scope, receive, send)
            return
        stages = Stages(time.perf_counter_ns())
        scope[_SCOPE_KEY] = stages
        token = _CURRENT.set(stages)
        try:
            await self.app(scope, receive, send)
        finally:
            _CURRENT.reset(token)


@contextlib.contextmanager
def timed(stage: str) -> Iterator[None]:
    """Add the time spent inside to `stage` of the current request (nothing outside one)."""
    stages = _CURRENT.get()
    if stages is None:
        yield
        return
    started = time.perf_counter_ns()
    try:
        yield
    finally:
        stages.add(stage, time.perf_counter_ns() - started)


def record_tool(fn: F) -> F:
    """`fn` (a tool), marking when its code starts and returns in the current request's stages."""

    def start() -> Stages | None:
        stages = _CURRENT.get()
        if stages is not None:
            stages.tool_started = time.perf_counter_ns()
        return stages

    if inspect.iscoroutinefunction(fn):

        @functools.wraps(fn)
        async def run_async(*args: Any, **kwargs: Any) -> Any:
            stages = start()
            try:
                return await fn(*args, **kwargs)
            finally:
                if stages is not None:
                    stages.tool_returned = time.perf_counter_ns()

        return run_async  # type: ignore[return-value]

    @functools.wraps(fn)
    def run(*args: Any, **kwargs: Any) -> Any:
        stages = start()
        try:
            return fn(*args, **kwargs)
        finally:
            if stages is not None:
                stages.tool_returned = time.perf_counter_ns()

    return run  # type: ignore[return-value]


class StageAttributes:
    """MCP middleware (inside the SDK's OpenTelemetry one): the stages of a `tools/call` become
    attributes of its span. The request's stages are found through its HTTP request, so they are
    the right ones however the SDK schedules the handler."""

    async def __call__(self, ctx: Any, call_next: Callable[[Any], Any]) -> Any:
        stages = None
        if ctx.method == "tools/call":
            stages = (getattr(ctx.request, "scope", None) or {}).get(_SCOPE_KEY)
        if stages is None:
            return await call_next(ctx)
        token = _CURRENT.set(stages)
        try:
            return await call_next(ctx)
        finally:
            _CURRENT.reset(token)
            span = trace.get_current_span()
            if span.is_recording():
                breakdown = stages.breakdown(time.perf_counter_ns())
                span.set_attributes({f"sandbox_gateway.stage.{k}_us": v for k, v in breakdown.items()})


class StagedAuditLog(AuditLog):
    """The gateway's audit log: its writes during a request count as the request's `audit` stage."""

    def emit(self, event: str, **fields: Any) -> None:
        with timed("audit"):
            super().emit(event, **fields)

    def emit_later(self, event: str, **fields: Any) -> None:
        with timed("audit"):
            super().emit_later(event, **fields)
