"""Code mode: the tool calls code in a sandbox makes to the gateway's upstream MCP servers.

Each call an execution's code writes (through the sandbox agent, see gateway/agent/tool_ports.py)
is parsed strictly, decided by the policy (`code_mode` of the caller's profile: allow-list, argument
constraints and sizes), counted against the execution's and the principal's budgets, sent upstream
with the time the execution has left, and checked on the way back (size, secret-looking content).
Every call is an `upstream.call` audit event and a span under the execution's; refusals past the
first of each kind in an execution are counted, not recorded one by one, and `exec.finish` carries
the totals. The answer goes back to the code as one JSON line: `{"id", "result"}` or `{"id", "error":
{"code", "message"}}`.
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import anyio
from opentelemetry import metrics, trace

from audit import AuditLog, AuditWriteError
from gateway import __version__
from gateway.backend.base import KILL_AFTER_S
from gateway.calls.tool_call_line import CallRefused, ToolCall, parse_call
from gateway.errors import GatewayError
from gateway.ratelimit import RateLimiter
from gateway.telemetry import TRACER_NAME
from gateway.upstream import UpstreamResult, Upstreams
from policy import Allowed, Denied, Principal, UpstreamAllowed
from policy.code_mode_model import CodeMode
from policy.engine import PolicyEngine
from policy.secrets import looks_like_secret

__all__ = ["CodeModeCalls", "ExecutionTools"]

#: A call line longer than the profile's `max_argument_bytes` by more than this is refused unread.
_LINE_OVERHEAD = 4096
#: Lines longer than this are parsed on a worker thread, not on the event loop.
_PARSE_INLINE = 64 * 1024
#: Longest upstream error text passed back to the code.
_ERROR_TEXT = 2000
_tracer = trace.get_tracer(TRACER_NAME)
_log = logging.getLogger("sandbox_gateway.code_mode")


def _reply(call_id: object, **body: Any) -> str:
    return json.dumps({"id": call_id, **body}, ensure_ascii=False, separators=(",", ":"), default=str)


def _strings(value: Any) -> list[str]:
    """Every string in a decoded JSON value (keys too), for the secret check on decoded text."""
    found, stack = [], [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            found.append(item)
        elif isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return found


def _text_of(result: UpstreamResult) -> str:
    return "\n".join([result.text, *_strings(result.structured)])


@dataclass
class ExecutionTools:
    """One execution's tool calls: the handler the executor calls (`__call__`), and its counts."""

    bridge: CodeModeCalls
    principal: Principal
    deadline: float  # monotonic
    #: The profile's code mode when the execution started: the line bounds checked before parsing.
    limits: CodeMode
    made: int = 0
    refusals: Counter[str] = field(default_factory=Counter)

    def summary(self) -> dict[str, Any]:
        """For the execution's `exec.finish`."""
        return {"upstream_calls": self.made, "upstream_refused": dict(self.refusals)}

    async def __call__(self, line: bytes) -> str:
        """The answer line for one call line (never raises but for cancellation). Every line counts
        against the principal's rate; an execution's refusals are capped; oversized lines are
        refused unread and big ones parsed off the event loop."""
        call: ToolCall | None = None
        try:
            self._admit(line)
            call = (
                parse_call(line)
                if len(line) <= _PARSE_INLINE
                else await anyio.to_thread.run_sync(parse_call, line)
            )
            return await self.bridge.call(self, call)
        except CallRefused as refused:
            self._refused(refused, call)
            return _reply(call.id if call else None, error={"code": refused.code, "message": refused.message})
        except AuditWriteError:
            failed = {"code": "audit-unavailable", "message": "the call could not be recorded"}
            return _reply(call.id if call else None, error=failed)
        except Exception:  # noqa: BLE001 - the code gets an answer and the execution goes on
            _log.exception("an upstream call from sandbox code failed in the gateway")
            failed = {
                "code": "internal-error",
                "message": "the gateway failed to handle this call; it has been logged",
            }
            return _reply(call.id if call else None, error=failed)

    def _admit(self, line: bytes) -> None:
        """The checks that cost nothing: refusal cap, the principal's rate, the line's size."""
        if sum(self.refusals.values()) >= self.limits.calls_per_execution:
            raise CallRefused(
                "too-many-refusals", "this execution had too many calls refused; no more are taken"
            )
        key = f"{self.principal.tenant}/{self.principal.id}"
        retry = self.bridge.rates.hit("upstream-calls", key, f"{self.limits.calls_per_minute}/minute")
        if retry is not None:
            rate = self.limits.calls_per_minute
            raise CallRefused(
                "rate-limited", f"upstream call rate {rate}/minute reached; retry in {retry:.0f} s"
            )
        if len(line) > int(self.limits.max_argument_bytes) + _LINE_OVERHEAD:
            cap = int(self.limits.max_argument_bytes)
            raise CallRefused(
                "argument-too-large", f"the call is {len(line)} bytes; arguments are at most {cap}"
            )

    def _refused(self, refused: CallRefused, call: ToolCall | None) -> None:
        """The first refusal of each kind in this execution is recorded; the rest are counted."""
        self.refusals[refused.code] += 1
        self.bridge.counter.add(1, {"outcome": refused.code})
        if self.refusals[refused.code] == 1:
            self.bridge.audit.emit(
                "upstream.call",
                outcome="rejected",
                error=refused.code,
                message=refused.message[:300],
                server=call.server if call else None,
                upstream_tool=call.tool if call else None,
            )


class CodeModeCalls:
    """Serves the upstream tool calls of executions whose profile turns code mode on."""

    def __init__(
        self,
        engine: Callable[[], PolicyEngine],
        upstreams: Upstreams | None,
        audit: AuditLog,
        rates: RateLimiter,
    ) -> None:
        #: The policy in force, asked for each call (a reload replaces it).
        self.engine = engine
        self.upstreams, self.audit, self.rates = upstreams, audit, rates
        self.counter = metrics.get_meter(TRACER_NAME, __version__).create_counter(
            "sandbox_gateway.upstream.calls",
            description="Tool calls from sandbox code to upstream servers, by outcome",
        )

    def for_execution(self, principal: Principal, decision: Allowed) -> ExecutionTools | None:
        """The handler for one execution, or None when its profile has no code mode."""
        profile = self.engine().policy.profiles.get(decision.profile)
        if profile is None or profile.code_mode is None:
            return None
        deadline = time.monotonic() + decision.timeout_s + KILL_AFTER_S
        return ExecutionTools(self, principal, deadline, profile.code_mode)

    async def call(self, execution: ExecutionTools, call: ToolCall) -> str:
        """Decide, count and make one call; its answer line. CallRefused for a refusal before it is made."""
        grant = self._decide(execution, call)
        if execution.made >= grant.calls_per_execution:
            cap = grant.calls_per_execution
            raise CallRefused(
                "upstream-budget-exhausted",
                f"this execution made its {cap} upstream calls (code_mode.calls_per_execution)",
            )
        left = execution.deadline - time.monotonic()
        if left <= 0.05:
            raise CallRefused("upstream-timeout", "the execution's time is up")
        if self.upstreams is None:
            raise CallRefused("upstream-unknown", "this gateway has no upstream servers configured")
        execution.made += 1
        return await self._send(execution, call, grant, min(grant.call_timeout_s, left))

    def _decide(self, execution: ExecutionTools, call: ToolCall) -> UpstreamAllowed:
        decision = self.engine().decide_upstream(
            execution.principal, call.server, call.tool, call.arguments, call.size
        )
        if isinstance(decision, Denied):
            raise CallRefused(decision.reasons[0], decision.message)
        return decision

    async def _send(
        self, execution: ExecutionTools, call: ToolCall, grant: UpstreamAllowed, timeout_s: float
    ) -> str:
        assert self.upstreams is not None  # noqa: S101 - checked by the caller
        started = time.monotonic()
        record: dict[str, Any] = {
            "server": grant.server,
            "upstream_tool": grant.tool,
            "rule_id": grant.rule_id,
            "policy_digest": grant.policy_digest,
            "arguments": self.audit.code.digest(
                json.dumps(call.arguments, sort_keys=True, ensure_ascii=False)
            ),
        }
        # Fail-closed: a call that cannot be recorded is not made (AuditWriteError refuses it).
        self.audit.emit("upstream.start", **record, timeout_s=round(timeout_s, 3))  # limits.timeout_s
        with _tracer.start_as_current_span(
            "upstream.call", attributes={"upstream.server": grant.server, "upstream.tool": grant.tool}
        ) as span:
            result: UpstreamResult | None = None
            try:
                result = await self.upstreams.call(
                    grant.server, grant.tool, call.arguments, timeout_s=timeout_s
                )
                reply = self._checked(grant, result)
            except GatewayError as exc:
                self._finish(record, started, outcome="error", error=exc.code)
                span.set_attribute("upstream.outcome", exc.code)
                execution.refusals[exc.code] += 1
                message = exc.message
                if grant.refuse_secrets and looks_like_secret(message) is not None:
                    message = "the upstream's error message looks like it holds a secret; withheld by policy"
                return _reply(call.id, error={"code": exc.code, "message": message})
            except CallRefused as refused:
                size = result.size if result is not None else 0
                self._finish(record, started, outcome="rejected", error=refused.code, result_bytes=size)
                span.set_attribute("upstream.outcome", refused.code)
                execution.refusals[refused.code] += 1
                return _reply(call.id, error={"code": refused.code, "message": refused.message})
            except anyio.get_cancelled_exc_class():
                with contextlib.suppress(AuditWriteError):
                    self._finish(record, started, outcome="error", error="execution-ended")
                raise
            self._finish(record, started, outcome="ok", result_bytes=result.size)
            span.set_attribute("upstream.outcome", "ok")
            return _reply(call.id, result=reply)

    @staticmethod
    def _checked(grant: UpstreamAllowed, result: UpstreamResult) -> Any:
        if result.size > grant.max_result_bytes:
            cap = grant.max_result_bytes
            raise CallRefused(
                "result-too-large",
                f"the result is {result.size} bytes, above code_mode.max_result_bytes ({cap})",
            )
        if grant.refuse_secrets:
            kind = looks_like_secret(_text_of(result))
            if kind is not None:
                raise CallRefused(
                    "secret-in-result", f"the result looks like it holds a secret ({kind}); refused by policy"
                )
        if result.is_error:
            raise CallRefused(
                "upstream-tool-error", result.text[:_ERROR_TEXT] or "the upstream tool reported an error"
            )
        return result.structured if result.structured is not None else result.text

    def _finish(self, record: dict[str, Any], started: float, **outcome: Any) -> None:
        self.counter.add(1, {"outcome": outcome.get("error", "ok")})
        self.audit.emit(
            "upstream.call", duration_ms=round((time.monotonic() - started) * 1000, 2), **record, **outcome
        )
