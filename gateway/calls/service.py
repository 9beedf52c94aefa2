"""ExecutionService: authenticated principal + tool call -> policy -> audit -> broker -> result.

This is the request path below the transport; the MCP tools and the embedding API both use it.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import time
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import anyio
import structlog

from audit import AuditLog, AuditWriteError
from gateway.backend.base import KILL_AFTER_S, ExecOutcome, OutputCallback
from gateway.backend.commands import MAX_ARGV_BYTES, bash_argv, python_argv
from gateway.calls.budgets import TenantSlots, budget_instruments
from gateway.calls.files import WORKSPACE, file_argv, parse_file_result
from gateway.calls.library import Library, LibraryListing
from gateway.calls.progress import OutputTail, ProgressReport, relay_progress
from gateway.calls.results import (
    AdminSandbox,
    AdminSandboxes,
    ExecResult,
    FileContent,
    FileEntry,
    FileList,
    FileWritten,
    ResetResult,
    SandboxInfo,
    SandboxState,
)
from gateway.errors import GatewayError, InvalidArgument, PolicyDenied, QuotaExceeded
from gateway.sandboxes.broker import Broker
from gateway.sandboxes.pool import pool_targets
from gateway.telemetry import instruments
from policy import Action, Allowed, Principal
from policy.engine import PolicyEngine

__all__ = ["ExecutionService"]

_ARGV_BUILDERS: dict[str, Callable[[str], list[str]]] = {
    "execute_bash": bash_argv,
    "execute_python": python_argv,
}
#: Exit statuses of `timeout` when it stopped the command (TERM) or had to KILL it.
_TIMEOUT_EXITS = (124, 128 + 9)
#: File-tool codes that are a refusal (the call was not allowed to touch that path), not a failure.
_REFUSED_FILE_CODES = frozenset({"path-outside-workspace"})


class ExecutionService:
    """Decides, records and runs tool calls for principals."""

    def __init__(
        self, engine: PolicyEngine, broker: Broker, audit: AuditLog, *, enforce_request_rate: bool = True
    ) -> None:
        self.enforce_request_rate = enforce_request_rate
        self.engine = engine
        self.broker = broker
        self.audit = audit
        self.metrics = instruments()
        self.budget_metrics = budget_instruments()
        #: Calls running per tenant, against the caller's profile's `exec.max_concurrent_per_tenant`.
        self.tenant_slots = TenantSlots()
        broker.pool.configure(pool_targets(engine))

    def replace_engine(self, engine: PolicyEngine) -> None:
        """Switch to a new, already validated policy; calls in flight keep the Decision they got."""
        self.engine = engine
        self.broker.pool.configure(pool_targets(engine))

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
        retry = self.broker.rates.hit("requests", f"{principal.tenant}/{principal.id}", rate)
        if retry is not None:
            self.audit.emit("ratelimit.hit", limit="requests", rate=rate, retry_after_s=retry)
            self.metrics.denials.add(1, {"reason": "rate-limited", "tool": action.tool})
            self.metrics.tool_calls.add(1, {"tool": action.tool, "outcome": "denied"})
            raise QuotaExceeded(f"request rate {rate} reached; retry in {retry:.0f} s", code="rate-limited")
        return decision

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
    ) -> ExecOutcome:
        """broker.execute, counted against the tenant's concurrency cap (refused at once when full)."""
        tenant, cap = principal.tenant, decision.limits.max_concurrent_per_tenant
        if not self.tenant_slots.acquire(tenant, cap):
            self.budget_refused("tenant-concurrency", {"tenant": tenant}, principal=principal.id, cap=cap)
            raise QuotaExceeded(
                f"tenant concurrency cap: {cap} calls already running for this tenant; retry when one ends",
                code="tenant-concurrency-quota",
            )
        self.budget_metrics.tenant_running.add(1, {"tenant": tenant})
        try:
            return await self.broker.execute(principal, decision, argv, on_output)
        finally:
            self.tenant_slots.release(tenant)
            self.budget_metrics.tenant_running.add(-1, {"tenant": tenant})

    async def _run_with_progress(
        self, principal: Principal, decision: Allowed, argv: list[str], on_progress: ProgressReport | None
    ) -> ExecOutcome:
        if on_progress is None:
            return await self._in_tenant_budget(principal, decision, argv)
        tail = OutputTail()
        failure: Exception | None = None
        async with anyio.create_task_group() as tasks:
            tasks.start_soon(relay_progress, tail, on_progress)
            try:
                outcome = await self._in_tenant_budget(principal, decision, argv, tail)
            except Exception as exc:  # noqa: BLE001 - re-raised as itself below, not in an exception group
                failure = exc
            finally:
                tasks.cancel_scope.cancel()
        if failure is not None:
            raise failure
        return outcome

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
        text = _check_code(code, "command" if tool == "execute_bash" else "code")
        size = len(text.encode())
        # Fail-closed: if the decision cannot be recorded, AuditWriteError stops the call here.
        decision = self._decide(principal, Action(tool=tool, input_bytes=size, timeout_s=timeout_s))
        if size > MAX_ARGV_BYTES:
            raise InvalidArgument(
                f"input of {size} bytes is above the gateway's hard cap of {MAX_ARGV_BYTES}"
            )
        timeout = decision.timeout_s
        argv = builder(text)
        self.audit.emit(
            "exec.start",
            policy_digest=decision.policy_digest,
            timeout_s=timeout,
            input_bytes=size,
            max_output_bytes=decision.limits.max_output_bytes,
            image=decision.image,
            code=text,  # the audit pipeline keeps an HMAC, the text, or nothing, as the policy says
        )
        try:
            outcome = await self._run_with_progress(principal, decision, argv, on_progress)
        except anyio.get_cancelled_exc_class():
            # The client went away or the gateway stops: still, no execution goes unrecorded.
            self.audit.emit(
                "exec.finish", outcome="error", error="cancelled", policy_digest=decision.policy_digest
            )
            raise
        except GatewayError as exc:
            self.audit.emit(
                "exec.finish", outcome="error", error=exc.code, policy_digest=decision.policy_digest
            )
            self.metrics.tool_calls.add(1, {"tool": tool, "outcome": "error"})
            raise
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
        )
        outcome_label = "timeout" if timed_out else ("oom" if result.oom_killed else "ok")
        self.metrics.tool_calls.add(1, {"tool": tool, "outcome": outcome_label})
        self.metrics.exec_duration.record(result.duration_ms, {"tool": tool})
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
            sandbox_replaced=outcome.sandbox_replaced,
            oom_killed=outcome.oom_killed,
            policy_digest=decision.policy_digest,
            max_output_bytes=decision.limits.max_output_bytes,
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

    async def _file_call(
        self,
        principal: Principal,
        tool: str,
        action: Action,
        path: str,
        argv_for: Callable[[Allowed], list[str]],
    ) -> dict[str, Any]:
        """Run one file operation; every end is a `file.finish` (a refused path with its code)."""
        decision = self._decide(principal, action)
        try:
            outcome = await self._in_tenant_budget(principal, decision, argv_for(decision))
            answer = parse_file_result(outcome.exit_code, outcome.stdout, outcome.stderr)
        except anyio.get_cancelled_exc_class():
            self.audit.emit("file.finish", outcome="error", error="cancelled", tool=tool, path=path)
            raise
        except GatewayError as exc:
            status = "rejected" if exc.code in _REFUSED_FILE_CODES else "error"
            self.audit.emit(
                "file.finish",
                outcome=status,
                error=exc.code,
                tool=tool,
                input_bytes=action.input_bytes,
                path=path,
            )
            raise
        self.audit.emit(
            "file.finish",
            outcome="ok",
            tool=tool,
            input_bytes=action.input_bytes,
            path=str(answer.get("path", "")),
            duration_ms=round(outcome.duration_ms, 2),
        )
        return answer

    async def write_file(
        self,
        principal: Principal,
        path: object,
        content: object,
        encoding: object = "utf-8",
        *,
        source_ip: str | None = None,
    ) -> FileWritten:
        """Write (create or replace) a file under /workspace."""
        async with self._request(principal, "write_file", source_ip):
            where = _check_path(path)
            data = _decode(content, encoding)
            answer = await self._file_call(
                principal,
                "write_file",
                Action("write_file", input_bytes=len(data)),
                where,
                lambda d: file_argv("write", where, d.timeout_s, data=data),
            )
            return FileWritten(path=str(answer["path"]), size=int(answer["size"]))

    async def read_file(
        self,
        principal: Principal,
        path: object,
        encoding: object = "utf-8",
        max_bytes: object = None,
        *,
        source_ip: str | None = None,
    ) -> FileContent:
        """Read a file under /workspace, up to `max_bytes` and the profile's output cap."""
        async with self._request(principal, "read_file", source_ip):
            where = _check_path(path)
            if encoding not in ("utf-8", "base64"):
                raise InvalidArgument("encoding must be 'utf-8' or 'base64'")
            if max_bytes is not None and (not isinstance(max_bytes, int) or max_bytes < 0):
                raise InvalidArgument("max_bytes must be a non-negative integer")
            wanted = max_bytes

            def read_argv(decision: Allowed) -> list[str]:
                # base64 output must fit the profile's output cap, with room for the JSON around it
                limit = decision.limits.max_output_bytes
                ceiling = max(0, (limit - 4096) * 3 // 4)
                cap = ceiling if wanted is None else min(ceiling, wanted)
                return file_argv("read", where, decision.timeout_s, cap=cap)

            answer = await self._file_call(principal, "read_file", Action("read_file"), where, read_argv)
            raw = base64.b64decode(str(answer["data"]))
            text = (
                raw.decode("utf-8", errors="replace")
                if encoding == "utf-8"
                else base64.b64encode(raw).decode()
            )
            return FileContent(
                path=str(answer["path"]),
                content=text,
                encoding=str(encoding),
                size=int(answer["size"]),
                truncated=bool(answer["truncated"]),
            )

    async def list_files(
        self, principal: Principal, path: object = WORKSPACE, *, source_ip: str | None = None
    ) -> FileList:
        """The entries of a directory under /workspace."""
        async with self._request(principal, "list_files", source_ip):
            where = _check_path(path)
            answer = await self._file_call(
                principal,
                "list_files",
                Action("list_files"),
                where,
                lambda d: file_argv("list", where, d.timeout_s),
            )
            return FileList(path=str(answer["path"]), entries=[FileEntry(**e) for e in answer["entries"]])

    async def library(self, principal: Principal, tool: str, library: Library) -> LibraryListing:
        """list_skills / list_tools: the read-only tree every sandbox sees."""
        async with self._request(principal, tool, None):
            self._decide(principal, Action(tool=tool))
            return library.listing()


def _check_path(path: object) -> str:
    if not isinstance(path, str):
        raise InvalidArgument(f"path must be a string, not {type(path).__name__}")
    if "\x00" in path:
        raise InvalidArgument("path contains a NUL byte")
    if len(path) > 4096:
        raise InvalidArgument("path is longer than 4096 characters")
    return path


def _decode(content: object, encoding: object) -> bytes:
    if not isinstance(content, str):
        raise InvalidArgument(f"content must be a string, not {type(content).__name__}")
    if encoding == "utf-8":
        return content.encode()
    if encoding == "base64":
        try:
            return base64.b64decode(content, validate=True)
        except binascii.Error as exc:
            raise InvalidArgument("content is not valid base64") from exc
    raise InvalidArgument("encoding must be 'utf-8' or 'base64'")


def _check_code(code: object, name: str) -> str:
    if not isinstance(code, str):
        raise InvalidArgument(f"{name} must be a string, not {type(code).__name__}")
    if not code.strip():
        raise InvalidArgument(f"{name} is empty")
    if "\x00" in code:
        raise InvalidArgument(f"{name} contains a NUL byte")
    return code
