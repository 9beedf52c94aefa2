"""ExecutionService: authenticated principal + tool call -> policy -> audit -> broker -> result.

This is the request path below the transport; the MCP tools and the embedding API both use it.
The path itself (audit context, decision, budgets) is `CallPath`; the file tools are `FileCalls`.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from gateway.backend.base import KILL_AFTER_S, ExecOutcome, OutputCallback
from gateway.backend.commands import MAX_ARGV_BYTES, bash_argv, python_argv
from gateway.calls.code_mode import CodeModeCalls, ExecutionTools
from gateway.calls.explain import action_for, explain, profile_limits
from gateway.calls.file_tools import FileCalls
from gateway.calls.inputs import check_code, check_explain_target
from gateway.calls.library import Library, LibraryListing
from gateway.calls.progress import ProgressReport, with_progress
from gateway.calls.python_calls import PythonCalls
from gateway.calls.results import (
    AdminPolicy,
    AdminSandbox,
    AdminSandboxes,
    ExecResult,
    ResetResult,
    SandboxInfo,
    SandboxState,
)
from gateway.errors import InvalidArgument
from policy import Action, Allowed, Principal

__all__ = ["ExecutionService"]

_ARGV_BUILDERS: dict[str, Callable[[str], list[str]]] = {
    "execute_bash": bash_argv,
    "execute_python": python_argv,
}
#: Exit statuses of `timeout` when it stopped the command (TERM) or had to KILL it.
_TIMEOUT_EXITS = (124, 128 + 9)


def _upstream(tools: ExecutionTools | None) -> dict[str, Any]:
    """What an execution's code did upstream, for its `exec.finish` (nothing without code mode)."""
    return tools.summary() if tools is not None else {}


class ExecutionService(FileCalls, PythonCalls):
    """Decides, records and runs tool calls for principals: code, files, and the sandbox itself."""

    #: Code mode: serves the upstream tool calls of executions whose profile allows them.
    code_mode: CodeModeCalls | None = None

    async def execute(
        self,
        principal: Principal,
        tool: str,
        code: object,
        timeout_s: float | None = None,
        *,
        source_ip: str | None = None,
        on_progress: ProgressReport | None = None,
    ) -> ExecResult:
        """Run `code` with `tool` for `principal`; raises GatewayError subclasses with a stable code.
        `on_progress(bytes so far, latest output)` is awaited now and then while output arrives."""
        async with self._request(principal, tool, source_ip):
            return await self._execute(principal, tool, code, timeout_s, on_progress)

    async def _run_with_progress(
        self,
        principal: Principal,
        decision: Allowed,
        argv: list[str],
        on_progress: ProgressReport | None,
        tools: ExecutionTools | None = None,
    ) -> ExecOutcome:
        async def run(on_output: OutputCallback | None) -> ExecOutcome:
            return await self._in_tenant_budget(principal, decision, argv, on_output, tool_calls=tools)

        return await with_progress(on_progress, run)

    async def _execute(
        self,
        principal: Principal,
        tool: str,
        code: object,
        timeout_s: float | None,
        on_progress: ProgressReport | None = None,
    ) -> ExecResult:
        builder = _ARGV_BUILDERS.get(tool)
        if builder is None:
            raise InvalidArgument(f"unknown tool {tool!r}")
        text = check_code(code, "command" if tool == "execute_bash" else "code")
        size = len(text.encode())
        # Fail-closed: if the decision cannot be recorded, AuditWriteError stops the call here.
        decision = self._decide(principal, Action(tool=tool, input_bytes=size, timeout_s=timeout_s))
        if size > MAX_ARGV_BYTES:
            raise InvalidArgument(
                f"input of {size} bytes is above the gateway's hard cap of {MAX_ARGV_BYTES}"
            )
        timeout = decision.timeout_s
        argv = builder(text)
        tools = self.code_mode.for_execution(principal, decision) if self.code_mode is not None else None
        self.audit.emit(
            "exec.start",
            policy_digest=decision.policy_digest,
            timeout_s=timeout,
            input_bytes=size,
            max_output_bytes=decision.limits.max_output_bytes,
            image=decision.image,
            code=text,  # the audit pipeline keeps an HMAC, the text, or nothing, as the policy says
        )
        started = time.time()
        with self._end_recorded(tool, decision, lambda: _upstream(tools)):
            outcome = await self._run_with_progress(principal, decision, argv, on_progress, tools)
        timed_out = outcome.deadline_hit or (
            outcome.exit_code in _TIMEOUT_EXITS
            and outcome.duration_ms >= timeout * 1000 * 0.98
            and outcome.duration_ms <= (timeout + KILL_AFTER_S + 5) * 1000
        )
        result = ExecResult(
            exit_code=outcome.exit_code,
            stdout=outcome.stdout.decode("utf-8", errors="replace"),
            stderr=outcome.stderr.decode("utf-8", errors="replace"),
            duration_ms=round(outcome.duration_ms, 2),
            timed_out=timed_out,
            truncated=outcome.truncated,
            oom_killed=outcome.oom_killed,
            sandbox_replaced=outcome.sandbox_replaced,
            sandbox_lost=outcome.sandbox_lost,
            egress_refused=self._egress_refused(principal, started),
        )
        outcome_label = "timeout" if timed_out else ("oom" if result.oom_killed else "ok")
        self.metrics.tool_calls.add(1, {"tool": tool, "outcome": outcome_label})
        self.metrics.exec_duration.record(result.duration_ms, {"tool": tool})
        self._finished(
            decision,
            outcome,
            exit_code=result.exit_code,
            timed_out=timed_out,
            truncated=result.truncated,
            duration_ms=result.duration_ms,
            **_upstream(tools),
        )
        return result

    async def info(self, principal: Principal, *, source_ip: str | None = None) -> SandboxInfo:
        """The caller's effective profile and limits, and its sandbox if it has one."""
        async with self._request(principal, "sandbox_info", source_ip):
            decision = self._decide(principal, Action(tool="sandbox_info"))
            profile = self.engine.policy.profiles[decision.profile]
            sandbox = self.broker.sandbox_of(principal)
            state = None
            if sandbox is not None:
                now = time.time()
                state = SandboxState(
                    container_id=sandbox.container_id[:12],
                    created_at=sandbox.created_at,
                    idle_expires_in_s=round(sandbox.lifecycle.idle_ttl_s - (now - sandbox.last_used), 1),
                    max_age_expires_in_s=round(sandbox.lifecycle.max_age_s - (now - sandbox.created_at), 1),
                    up_to_date=sandbox.spec_digest == profile.sandbox.digest(),
                )
            return SandboxInfo.from_profile(
                principal, decision.profile, decision.policy_digest, profile, state
            )

    async def reset(self, principal: Principal, *, source_ip: str | None = None) -> ResetResult:
        """Remove the caller's sandbox; the next call starts from a fresh one."""
        async with self._request(principal, "reset_sandbox", source_ip):
            self._decide(principal, Action(tool="reset_sandbox"))
            return ResetResult(reset=await self.broker.reset(principal))

    async def admin_list(self, principal: Principal, *, source_ip: str | None = None) -> AdminSandboxes:
        """The caller's tenant's sandboxes (never another tenant's)."""
        async with self._request(principal, "admin_list_sandboxes", source_ip):
            self._decide(principal, Action(tool="admin_list_sandboxes"))
            prefix = f"{principal.tenant}/"
            rows = [
                AdminSandbox(
                    principal=s.principal_key.removeprefix(prefix),
                    profile=s.profile,
                    container_id=s.container_id[:12],
                    created_at=s.created_at,
                    last_used=s.last_used,
                    policy_digest=s.policy_digest,
                )
                for s in self.broker.sandboxes
                if s.principal_key.startswith(prefix)
            ]
            return AdminSandboxes(tenant=principal.tenant, sandboxes=sorted(rows, key=lambda r: r.principal))

    async def admin_remove(
        self, principal: Principal, target: object, *, source_ip: str | None = None
    ) -> ResetResult:
        """Remove the sandbox of principal `target` in the caller's own tenant."""
        async with self._request(principal, "admin_remove_sandbox", source_ip):
            if not isinstance(target, str) or not target:
                raise InvalidArgument("principal must be a non-empty string")
            self._decide(principal, Action(tool="admin_remove_sandbox"))
            victim = Principal(
                target, tenant=principal.tenant
            )  # the tenant is the caller's, never an argument
            self.audit.emit("sandbox.admin_remove", target_principal=target)
            return ResetResult(reset=await self.broker.reset(victim))

    async def admin_policy(
        self,
        principal: Principal,
        target: object = None,
        tool: object = None,
        *,
        source_ip: str | None = None,
    ) -> AdminPolicy:
        """The policy in force (digest, each profile's limits) and, given `target` and `tool`, the
        Decision for principal `target` of the caller's own tenant: the tenant is the caller's, never
        an argument, and a name without a credential in that tenant is refused."""
        async with self._request(principal, "admin_policy", source_ip):
            asked = check_explain_target(target, tool)
            self._decide(principal, Action(tool="admin_policy"))
            engine = self.engine  # one policy for the whole answer, even if a reload lands meanwhile
            decision = None
            if asked is not None:
                name, asked_tool = asked
                decision = explain(engine, self._of_own_tenant(principal, name), action_for(asked_tool))
            return AdminPolicy(
                tenant=principal.tenant,
                policy_digest=engine.digest,
                profiles=profile_limits(engine),
                decision=decision,
            )

    def _of_own_tenant(self, caller: Principal, name: str) -> Principal:
        """Principal `name` of the caller's tenant, with the profile its credential names."""
        if name == caller.id:
            return Principal(caller.id, caller.tenant, caller.profile)
        directory = self.principals
        known = directory.principal_entry(name, caller.tenant) if directory is not None else None
        if known is None:
            raise InvalidArgument(
                f"principal {name!r} has no active credential in your tenant {caller.tenant!r}"
            )
        return Principal(name, caller.tenant, known.profile)

    async def library(self, principal: Principal, tool: str, library: Library) -> LibraryListing:
        """list_skills / list_tools: the read-only tree every sandbox sees."""
        async with self._request(principal, tool, None):
            self._decide(principal, Action(tool=tool))
            return library.listing()
