"""The broker: one sandbox per principal, created only from an allowed Decision, run under its limits.

Every Docker call runs in a bounded worker pool (never on the event loop) inside a span, and
leaves an audit event.
"""

from __future__ import annotations

import functools
import hashlib
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import anyio
import anyio.to_thread
from opentelemetry.trace import Status, StatusCode

from audit import AuditLog
from gateway.backend.base import Backend, ExecOutcome, ExecRequest
from gateway.backend.create_body import LABEL_PREFIX, create_body, sandbox_env
from gateway.errors import GatewayError, PolicyDenied, QuotaExceeded, SandboxError
from gateway.telemetry import tracer
from policy import Decision, Principal

__all__ = ["Broker", "Sandbox"]

T = TypeVar("T")
_MANAGED = f"{LABEL_PREFIX}.managed"


@dataclass(slots=True)
class Sandbox:
    """A principal's live sandbox as the broker knows it."""

    container_id: str
    name: str
    principal_key: str
    policy_digest: str
    image: str
    created_at: float
    last_used: float


def principal_key(principal: Principal) -> str:
    return f"{principal.tenant}/{principal.id}"


class Broker:
    """Owns the principals' sandboxes on one backend."""

    def __init__(
        self,
        backend: Backend,
        audit: AuditLog,
        *,
        gateway_id: str = "default",
        tools_path: Path | None = None,
        skills_path: Path | None = None,
        workers: int = 16,
    ) -> None:
        self.backend = backend
        self.audit = audit
        self.gateway_id = gateway_id
        self.tools_path = tools_path
        self.skills_path = skills_path
        self._limiter = anyio.CapacityLimiter(workers)
        self._sandboxes: dict[str, Sandbox] = {}
        self._locks: dict[str, anyio.Lock] = {}
        self._running: dict[str, int] = {}

    # -- Docker operations: span + audit + worker thread -------------------------------------

    def _op_sync(self, op: str, fn: Callable[..., T], *args: Any, **attrs: Any) -> T:
        """One blocking Docker call inside a span, with its audit event (success or failure)."""
        started = time.monotonic()
        with tracer().start_as_current_span(f"docker.{op}", record_exception=False) as span:
            for key, value in attrs.items():
                if value is not None:
                    span.set_attribute(f"sandbox_gateway.{key}", value)
            try:
                result = fn(*args)
            except GatewayError as exc:
                span.record_exception(exc)
                span.set_status(Status(StatusCode.ERROR, exc.code))
                self.audit.emit(
                    f"docker.{op}",
                    outcome="error",
                    error=exc.code,
                    duration_ms=round((time.monotonic() - started) * 1000, 2),
                    **attrs,
                )
                raise
            if op == "create" and isinstance(result, str):
                attrs["container_id"] = result
                span.set_attribute("sandbox_gateway.container_id", result)
            self.audit.emit(
                f"docker.{op}",
                outcome="ok",
                duration_ms=round((time.monotonic() - started) * 1000, 2),
                **attrs,
            )
            return result

    async def _op(self, op: str, fn: Callable[..., T], *args: Any, **attrs: Any) -> T:
        """_op_sync on the bounded worker pool; the context (span, request id) goes with it."""
        return await anyio.to_thread.run_sync(
            functools.partial(self._op_sync, op, fn, *args, **attrs), limiter=self._limiter
        )

    # -- sandboxes -----------------------------------------------------------------------------

    def _labels(self, principal: Principal, decision: Decision) -> dict[str, str]:
        return {
            _MANAGED: "true",
            f"{LABEL_PREFIX}.gateway": self.gateway_id,
            f"{LABEL_PREFIX}.principal": principal.id,
            f"{LABEL_PREFIX}.tenant": principal.tenant,
            f"{LABEL_PREFIX}.profile": decision.profile,
            f"{LABEL_PREFIX}.policy-digest": decision.policy_digest,
        }

    def _name(self, key: str) -> str:
        digest = hashlib.sha256(f"{self.gateway_id}\0{key}".encode()).hexdigest()[:16]
        return f"sgw-{digest}"

    def sandbox_of(self, principal: Principal) -> Sandbox | None:
        return self._sandboxes.get(principal_key(principal))

    async def ensure_sandbox(self, principal: Principal, decision: Decision) -> Sandbox:
        """The principal's running sandbox: the known one, one found by its labels, or a new one."""
        if not decision.allowed or decision.spec is None or decision.image is None:
            raise PolicyDenied("no allowed decision for this sandbox", code="not-allowed")
        key = principal_key(principal)
        lock = self._locks.setdefault(key, anyio.Lock())
        async with lock:
            known = self._sandboxes.get(key)
            if known is not None and known.policy_digest == decision.policy_digest:
                return known
            if known is not None:
                await self._remove(known, reason="policy-changed")
            found = await self._adopt(principal, decision, key)
            return found or await self._create(principal, decision, key)

    async def _adopt(self, principal: Principal, decision: Decision, key: str) -> Sandbox | None:
        """After a gateway restart: reuse the principal's running sandbox made under the same policy."""
        labels = {
            _MANAGED: "true",
            f"{LABEL_PREFIX}.gateway": self.gateway_id,
            f"{LABEL_PREFIX}.principal": principal.id,
            f"{LABEL_PREFIX}.tenant": principal.tenant,
        }
        rows = await self._op("list", self.backend.list, labels, principal=principal.id)
        keep = None
        for row in rows:
            same = row.labels.get(f"{LABEL_PREFIX}.policy-digest") == decision.policy_digest
            if keep is None and row.running and same and row.name == self._name(key):
                keep = row
            else:
                await self._op(
                    "remove",
                    self.backend.remove,
                    row.id,
                    container_id=row.id,
                    principal=principal.id,
                    reason="stale",
                )
        if keep is None:
            return None
        now = time.time()
        sandbox = Sandbox(keep.id, keep.name, key, decision.policy_digest, decision.image or "", now, now)
        self._sandboxes[key] = sandbox
        self.audit.emit(
            "sandbox.adopt",
            principal=principal.id,
            tenant=principal.tenant,
            container_id=keep.id,
            policy_digest=decision.policy_digest,
        )
        return sandbox

    async def _create(self, principal: Principal, decision: Decision, key: str) -> Sandbox:
        if decision.spec is None or decision.image is None:
            raise PolicyDenied("no allowed decision for this sandbox", code="not-allowed")
        name = self._name(key)
        body = create_body(
            decision.spec,
            image=decision.image,
            labels=self._labels(principal, decision),
            tools_path=self.tools_path,
            skills_path=self.skills_path,
        )
        attrs = {"principal": principal.id, "image": decision.image, "policy_digest": decision.policy_digest}
        container_id = await self._op("create", self.backend.create, name, body, **attrs)
        try:
            await self._op("start", self.backend.start, container_id, container_id=container_id, **attrs)
        except GatewayError:
            # Nothing half-created stays behind.
            await self._op(
                "remove",
                self.backend.remove,
                container_id,
                container_id=container_id,
                reason="start-failed",
                **attrs,
            )
            raise
        now = time.time()
        sandbox = Sandbox(container_id, name, key, decision.policy_digest, decision.image, now, now)
        self._sandboxes[key] = sandbox
        self.audit.emit(
            "sandbox.create",
            principal=principal.id,
            tenant=principal.tenant,
            container_id=container_id,
            image=decision.image,
            profile=decision.profile,
            policy_digest=decision.policy_digest,
        )
        return sandbox

    async def _remove(self, sandbox: Sandbox, *, reason: str) -> None:
        self._sandboxes.pop(sandbox.principal_key, None)
        await self._op(
            "remove",
            self.backend.remove,
            sandbox.container_id,
            container_id=sandbox.container_id,
            reason=reason,
        )
        self.audit.emit(
            "sandbox.remove",
            container_id=sandbox.container_id,
            reason=reason,
            principal_key=sandbox.principal_key,
        )

    async def reset(self, principal: Principal) -> bool:
        """Remove the principal's sandbox; the next call gets a fresh one."""
        key = principal_key(principal)
        async with self._locks.setdefault(key, anyio.Lock()):
            sandbox = self._sandboxes.get(key)
            if sandbox is None:
                return False
            await self._remove(sandbox, reason="reset")
            return True

    # -- execution -----------------------------------------------------------------------------

    async def execute(self, principal: Principal, decision: Decision, argv: list[str]) -> ExecOutcome:
        """Run argv in the principal's sandbox under the Decision's limits."""
        if decision.limits is None or decision.spec is None or decision.timeout_s is None:
            raise PolicyDenied("no allowed decision for this call", code="not-allowed")
        key = principal_key(principal)
        limit = decision.limits.max_concurrent
        if self._running.get(key, 0) >= limit:
            raise QuotaExceeded(
                f"concurrent-exec quota: {limit} calls already running for this principal",
                code="concurrent-exec-quota",
            )
        self._running[key] = self._running.get(key, 0) + 1
        try:
            request = ExecRequest(
                argv=argv,
                user=decision.spec.user,
                workdir=decision.spec.workdir,
                env=sandbox_env(decision.spec),
                timeout_s=decision.timeout_s,
                max_output_bytes=decision.limits.max_output_bytes,
            )
            for attempt in (1, 2):
                sandbox = await self.ensure_sandbox(principal, decision)
                try:
                    outcome = await self._op(
                        "exec",
                        self.backend.exec,
                        sandbox.container_id,
                        request,
                        container_id=sandbox.container_id,
                        principal=principal.id,
                        policy_digest=decision.policy_digest,
                    )
                except SandboxError as exc:
                    # The container died or vanished before the command started: replace it once.
                    if exc.code != "sandbox-gone" or attempt == 2:
                        raise
                    await self._forget(sandbox, reason="lost")
                    continue
                sandbox.last_used = time.time()
                if outcome.sandbox_lost:
                    await self._forget(sandbox, reason="died-during-exec")
                return outcome
            raise SandboxError("the sandbox could not be started")  # pragma: no cover - loop returns
        finally:
            self._running[key] -= 1

    async def _forget(self, sandbox: Sandbox, *, reason: str) -> None:
        async with self._locks.setdefault(sandbox.principal_key, anyio.Lock()):
            if self._sandboxes.get(sandbox.principal_key) is sandbox:
                await self._remove(sandbox, reason=reason)

    # -- shutdown ----------------------------------------------------------------------------

    def cleanup_all_sync(self) -> int:
        """Remove every sandbox this gateway manages (known or only labelled). Returns how many."""
        rows = self._op_sync(
            "list", self.backend.list, {_MANAGED: "true", f"{LABEL_PREFIX}.gateway": self.gateway_id}
        )
        for row in rows:
            self._op_sync("remove", self.backend.remove, row.id, container_id=row.id, reason="shutdown")
            self.audit.emit("sandbox.remove", container_id=row.id, reason="shutdown")
        self._sandboxes.clear()
        return len(rows)

    async def cleanup_all(self) -> int:
        """cleanup_all_sync on a worker thread."""
        return await anyio.to_thread.run_sync(self.cleanup_all_sync, limiter=self._limiter)
