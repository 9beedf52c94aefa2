"""ExecutionService: authenticated principal + tool call -> policy -> audit -> broker -> result.

This is the request path below the transport; the MCP tools and the embedding API both use it.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable

import structlog

from audit import AuditLog
from gateway.backend.commands import KILL_GRACE_S, MAX_ARGV_BYTES, bash_argv, python_argv
from gateway.broker import Broker
from gateway.errors import GatewayError, PolicyDenied
from gateway.results import ExecResult
from policy import Action, Principal
from policy.engine import PolicyEngine

__all__ = ["ExecutionService", "InvalidArgument"]

_ARGV_BUILDERS: dict[str, Callable[[str, float], list[str]]] = {
    "execute_bash": bash_argv,
    "execute_python": python_argv,
}
#: Exit statuses of `timeout` when it stopped the command (TERM) or had to KILL it.
_TIMEOUT_EXITS = (124, 128 + 9)


class InvalidArgument(GatewayError):
    """A tool argument is malformed (empty, wrong type, NUL bytes)."""

    code = "invalid-argument"


class ExecutionService:
    """Decides, records and runs tool calls for principals."""

    def __init__(self, engine: PolicyEngine, broker: Broker, audit: AuditLog) -> None:
        self.engine = engine
        self.broker = broker
        self.audit = audit

    async def execute(
        self, principal: Principal, tool: str, code: object, timeout_s: float | None = None
    ) -> ExecResult:
        """Run `code` with `tool` for `principal`; raises GatewayError subclasses with a stable code."""
        request_id = uuid.uuid4().hex
        with structlog.contextvars.bound_contextvars(
            request_id=request_id,
            principal=principal.id,
            tenant=principal.tenant,
            auth_method=principal.auth_method,
            tool=tool,
        ):
            return await self._execute(principal, tool, code, timeout_s)

    async def _execute(
        self, principal: Principal, tool: str, code: object, timeout_s: float | None
    ) -> ExecResult:
        builder = _ARGV_BUILDERS.get(tool)
        if builder is None:
            raise InvalidArgument(f"unknown tool {tool!r}")
        text = _check_code(code, "command" if tool == "execute_bash" else "code")
        size = len(text.encode())
        decision = self.engine.evaluate(principal, Action(tool=tool, input_bytes=size, timeout_s=timeout_s))
        # Fail-closed: if this event cannot be written, AuditWriteError stops the call here.
        self.audit.emit(
            "policy.decision",
            decision="allow" if decision.allowed else "deny",
            reasons=list(decision.reasons),
            rule_ids=list(decision.rule_ids),
            profile=decision.profile,
            policy_digest=decision.policy_digest,
            input_bytes=size,
            timeout_s=decision.timeout_s or timeout_s,
        )
        if not decision.allowed:
            raise PolicyDenied(decision.message, code=decision.reasons[0])
        if size > MAX_ARGV_BYTES:
            raise InvalidArgument(
                f"input of {size} bytes is above the gateway's hard cap of {MAX_ARGV_BYTES}"
            )
        assert decision.timeout_s is not None  # noqa: S101 - an allowed decision always carries it
        argv = builder(text, decision.timeout_s)
        self.audit.emit(
            "exec.start", policy_digest=decision.policy_digest, timeout_s=decision.timeout_s, input_bytes=size
        )
        try:
            outcome = await self.broker.execute(principal, decision, argv)
        except GatewayError as exc:
            self.audit.emit(
                "exec.finish", outcome="error", error=exc.code, policy_digest=decision.policy_digest
            )
            raise
        timed_out = outcome.deadline_hit or (
            outcome.exit_code in _TIMEOUT_EXITS
            and outcome.duration_ms >= decision.timeout_s * 1000 * 0.98
            and outcome.duration_ms <= (decision.timeout_s + KILL_GRACE_S + 5) * 1000
        )
        result = ExecResult(
            exit_code=outcome.exit_code,
            stdout=outcome.stdout.decode("utf-8", errors="replace"),
            stderr=outcome.stderr.decode("utf-8", errors="replace"),
            duration_ms=round(outcome.duration_ms, 2),
            timed_out=timed_out,
            truncated=outcome.truncated,
        )
        self.audit.emit(
            "exec.finish",
            outcome="ok",
            exit_code=result.exit_code,
            timed_out=timed_out,
            truncated=result.truncated,
            duration_ms=result.duration_ms,
            stdout_bytes=outcome.stdout_bytes,
            stderr_bytes=outcome.stderr_bytes,
            sandbox_lost=outcome.sandbox_lost,
            policy_digest=decision.policy_digest,
            max_output_bytes=decision.limits.max_output_bytes if decision.limits else None,
        )
        return result


def _check_code(code: object, name: str) -> str:
    if not isinstance(code, str):
        raise InvalidArgument(f"{name} must be a string, not {type(code).__name__}")
    if not code.strip():
        raise InvalidArgument(f"{name} is empty")
    if "\x00" in code:
        raise InvalidArgument(f"{name} contains a NUL byte")
    return code
