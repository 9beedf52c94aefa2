"""The broker: one sandbox per principal, created only from an allowed Decision, run under its limits.
A facade over the `Registry` (who has which sandbox, quotas), `Containers` (the Docker verbs; the
one place a sandbox is removed), `Adoption`, the `WarmPool` and `Execution`. A sandbox is replaced
when its spec changes or it outlives its lifecycle, and once when lost before a command started."""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import time
from pathlib import Path
from typing import NoReturn

import anyio.lowlevel

from audit import AuditLog
from gateway.backend.base import Backend, ExecOutcome, OutputCallback, ToolCallHandler
from gateway.backend.create_body import sandbox_env
from gateway.backend.interpreter_results import PythonOutcome
from gateway.backend.ops import DockerOps, acting_for
from gateway.errors import GatewayError, SandboxUnusable
from gateway.ratelimit import RateLimiter
from gateway.sandboxes.adoption import Adoption
from gateway.sandboxes.containers import Containers
from gateway.sandboxes.creation_rate import charge_creation
from gateway.sandboxes.execution import Execution, Outcome, Request, allowed, connection_broke
from gateway.sandboxes.model import Sandbox, principal_key
from gateway.sandboxes.pool import WarmPool
from gateway.sandboxes.pool_keeper import PoolKeeper
from gateway.sandboxes.registry import Registry
from gateway.sandboxes.upkeep import Upkeep
from gateway.uids import DEFAULT_UID_RANGE, UidRange
from policy import Allowed, Decision, Principal

__all__ = ["Broker", "Sandbox", "principal_key"]


def _never(outcome: object) -> NoReturn:
    raise TypeError(f"a request got an outcome of another kind: {type(outcome).__name__}")


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
        rates: RateLimiter | None = None,
        max_sandboxes: int = 1000,
        uids: UidRange | None = None,
    ) -> None:
        self.backend = backend
        self.audit = audit
        self.gateway_id = gateway_id
        self.ops = DockerOps(audit, workers)
        self.rates = rates or RateLimiter()
        self.pool = WarmPool()
        self._registry = Registry(max_sandboxes, on_freed=self.pool.wake)
        self._containers = Containers(
            backend,
            self.ops,
            audit,
            gateway_id=gateway_id,
            uids=uids or UidRange.parse(DEFAULT_UID_RANGE),
            tools_path=tools_path,
            skills_path=skills_path,
        )
        self._adoption, self._execution = Adoption(self._containers), Execution(self.ops)
        self._keeper = PoolKeeper(self.pool, self._registry, self._containers)
        #: Reaping, and fleet mode's hand-overs: hosts lost, replicas taking over, shared quotas.
        self.upkeep = Upkeep(self._registry, self._containers, self._adoption, self.pool, self._discard)

    # -- what the gateway asks --------------------------------------------------------------------
    @property
    def containers(self) -> Containers:
        """The broker's Docker verbs (the egress service is attached there)."""
        return self._containers

    @property
    def max_sandboxes(self) -> int:
        return self._registry.max_sandboxes

    @max_sandboxes.setter
    def max_sandboxes(self, value: int) -> None:
        self._registry.max_sandboxes = value

    def saturation(self) -> dict[str, object]:
        """How busy the shared worker pool for Docker calls is (for /ready)."""
        return self.ops.saturation()

    def configure_pools(self, targets: dict[str, tuple[Allowed, int]]) -> None:
        """Warm pool sizes and specs (start-up, policy reload); see `WarmPool.configure`."""
        self.pool.configure(targets)

    def sandbox_of(self, principal: Principal) -> Sandbox | None:
        return self._registry.get(principal_key(principal))

    @property
    def sandboxes(self) -> list[Sandbox]:
        return self._registry.sandboxes

    @property
    def running_calls(self) -> int:
        return self._registry.running_calls

    async def ensure_sandbox(self, principal: Principal, decision: Decision) -> Sandbox:
        """The principal's running sandbox: the known one, one found by its name, or a new one."""
        with acting_for(principal.tenant, principal.id):
            sandbox = await self._ensure(principal, allowed(decision))
            _, renamed = await self._keeper.run_in(sandbox, principal, anyio.lowlevel.checkpoint)
            return sandbox if renamed else await self._ensure(principal, allowed(decision))

    async def execute(
        self,
        principal: Principal,
        decision: Decision,
        argv: list[str],
        on_output: OutputCallback | None = None,
        *,
        tool_calls: ToolCallHandler | None = None,
    ) -> ExecOutcome:
        """Run argv in the principal's sandbox under the Decision's limits; `on_output` sees output as
        it arrives (on a thread of the sandbox's own), `tool_calls` serves its code-mode calls."""
        grant = allowed(decision)
        env = sandbox_env(grant.spec, self._containers.egress_network)
        request = Execution.command(grant, argv, env, tool_calls)
        outcome = await self._execute(principal, grant, request, on_output)
        return outcome if isinstance(outcome, ExecOutcome) else _never(outcome)

    async def run_python(
        self, principal: Principal, decision: Decision, code: str, on_output: OutputCallback | None = None
    ) -> PythonOutcome:
        """Run `code` in the interpreter of the principal's sandbox (one call at a time per sandbox)."""
        grant = allowed(decision)
        request = Execution.python(grant, code, sandbox_env(grant.spec, self._containers.egress_network))
        outcome = await self._execute(principal, grant, request, on_output)
        return outcome if isinstance(outcome, PythonOutcome) else _never(outcome)

    async def reset(self, principal: Principal) -> bool:
        """Remove the principal's sandbox; the next call gets a fresh one. False if there was none."""
        key = principal_key(principal)
        with acting_for(principal.tenant, principal.id):
            async with self._registry.lock(key):
                sandbox = self._registry.get(key)
                if sandbox is None:
                    return False
                await self._discard(sandbox, "reset")
                return True

    async def sweep(self, current_specs: dict[str, str]) -> tuple[int, int]:
        """At start-up: see `Adoption.sweep`."""
        return await self._adoption.sweep(current_specs)

    async def reap_expired(self) -> int:
        """Remove sandboxes past their idle TTL or max age: see `Upkeep.reap_expired`."""
        return await self.upkeep.reap_expired()

    # -- sandboxes --------------------------------------------------------------------------------

    async def _ensure(self, principal: Principal, grant: Allowed) -> Sandbox:
        key = principal_key(principal)
        async with self._registry.lock(key):
            known = self._registry.get(key)
            if known is not None:
                changed = known.spec_digest != grant.spec.digest()
                why = "spec-changed" if changed else known.expired(time.time())
                if why is None:
                    return known
                await self._discard(known, why)
            adopted, replaced = await self._adoption.adopt(principal, grant, key)
            if adopted is not None:  # its files are there: it was not replaced after all
                self._registry.was_lost(key)
                self._register(adopted, "sandbox.adopt")
                await self._execution.oom_baseline(adopted)
                return adopted
            if replaced:  # one was there, unusable: its files are gone
                self._registry.mark_lost(key)
            return await self._provide(principal, grant, key)

    async def _provide(self, principal: Principal, grant: Allowed, key: str) -> Sandbox:
        """A new sandbox for the principal: a ready one from the warm pool, else one made now."""
        spec = grant.spec.digest()
        # A pooled sandbox already counts against the host cap; taking one adds nothing.
        adds = 0 if self.pool.available(spec) else 1
        cap = grant.lifecycle.max_sandboxes_per_tenant
        tenant, ready = principal.tenant, self.pool.size
        with self._registry.creating(tenant, pooled=ready, adds=adds, tenant_cap=cap, member=key):
            charge_creation(self.rates, self.audit, key, grant)
            pooled = self._keeper.take(spec, principal, grant, key)
            if pooled is not None:
                return self._register(
                    pooled, "sandbox.assign", pooled_s=round(pooled.last_used - pooled.created_at, 3)
                )
            name = self._containers.name_for(key)
            made = await self._containers.make(principal, grant, name, key, self._registry.taken_uids())
            return self._register(made)

    def _register(self, sandbox: Sandbox, event: str | None = None, **attrs: object) -> Sandbox:
        """The principal's sandbox from now on: known, counted, and recorded as `event` (if any)."""
        self._registry.add(sandbox)
        if event is not None:
            self.audit.emit(
                event,
                container_id=sandbox.container_id,
                profile=sandbox.profile,
                policy_digest=sandbox.policy_digest,
                **attrs,
            )
        return sandbox

    async def _discard(self, sandbox: Sandbox, reason: str) -> None:
        """Forget a sandbox and remove it (`Containers.discard_sandbox`); if the engine refuses, it
        still counts and a later reap tries again."""
        self._registry.drop(sandbox)
        try:
            await self._containers.discard_sandbox(sandbox, reason)
        except GatewayError:
            self._adoption.may_exist(sandbox.name)
            self._registry.removal_failed(sandbox, reason)
            raise
        self._registry.removed(sandbox.container_id)

    async def _forget(self, sandbox: Sandbox, reason: str) -> None:
        """Drop a sandbox that was lost; its principal's next result says so. One the engine would
        not remove (its host is unreachable) still counts until a reap removes it."""
        self._registry.mark_lost(sandbox.principal_key)
        async with self._registry.lock(sandbox.principal_key):
            if self._registry.holds(sandbox):
                with contextlib.suppress(GatewayError):
                    await self._discard(sandbox, reason)

    # -- execution --------------------------------------------------------------------------------
    async def _execute(
        self, principal: Principal, grant: Allowed, request: Request, on_output: OutputCallback | None
    ) -> Outcome:
        key = principal_key(principal)
        attrs = {"principal": principal.id, "policy_digest": grant.policy_digest}
        with (
            self._registry.calling(key, grant.limits.max_concurrent),
            acting_for(principal.tenant, principal.id),
        ):
            sandbox = await self._ensure(principal, grant)
            try:
                run = functools.partial(self._execution.run, sandbox, request, on_output, **attrs)
                outcome, renamed = await self._keeper.run_in(sandbox, principal, run)
            except SandboxUnusable:
                # Gone before the command started (container, agent or resources): replace it, once.
                await self._forget(sandbox, "lost")
                sandbox = await self._ensure(principal, grant)
                run = functools.partial(self._execution.run, sandbox, request, on_output, **attrs)
                outcome, renamed = await self._keeper.run_in(sandbox, principal, run)
            sandbox.last_used = time.time()
            if outcome.sandbox_lost:  # when its OOM kill ended the agent too, the engine says so
                state = await self._containers.state(sandbox)
                if state is not None and state.running:
                    raise connection_broke()
                await self._forget(sandbox, "died-during-exec")
                return dataclasses.replace(outcome, oom_killed=state is not None and state.oom_killed)
            if self._registry.was_lost(key):
                outcome = dataclasses.replace(outcome, sandbox_replaced=True)  # it runs in a new one
            if not renamed:  # a pooled sandbox its principal could not be given: the next call says so
                self._registry.mark_lost(key)
            outcome, unusable = await self._execution.verdict(sandbox, request, outcome)
            if unusable:
                await self._forget(sandbox, "unrecoverable-after-timeout")
            return outcome

    async def maintain_pool(self) -> None:
        """Keep the warm pools filled (runs for the gateway's lifetime)."""
        await self._keeper.run()

    # -- shutdown ---------------------------------------------------------------------------------

    def cleanup_all_sync(self) -> int:
        """Remove every sandbox this gateway manages (known or only labelled). Returns how many."""
        for sandbox in [*self.sandboxes, *self.pool.sandboxes]:
            sandbox.executor.close()
        removed = self._containers.discard_all_sync("shutdown")
        self._registry.clear()
        return removed

    async def cleanup_all(self) -> int:
        """cleanup_all_sync on the worker pool."""
        return await self.ops.run(self.cleanup_all_sync)

    async def wait_idle(self, timeout_s: float) -> int:
        """Wait until no call runs, at most `timeout_s`; returns how many still run then."""
        return await self._registry.idle(timeout_s)
