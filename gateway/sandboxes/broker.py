"""The broker: one sandbox per principal, created only from an allowed Decision, run under its limits.

A sandbox is replaced when its profile's spec changes (or it outlives its lifecycle); after a
gateway restart a principal's running sandbox with the same spec is adopted, others removed.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import hashlib
import logging
import re
import secrets
import time
from pathlib import Path

import anyio

from audit import AuditLog
from gateway.backend.agent_channel import AgentBroken, AgentChannel
from gateway.backend.base import Backend, ExecOutcome, ExecRequest, OutputCallback, close_stream
from gateway.backend.create_body import LABEL_PREFIX, USER_LABEL, create_body, sandbox_env
from gateway.backend.ops import DockerOps, acting_for
from gateway.errors import GatewayError, QuotaExceeded, SandboxError
from gateway.ratelimit import RateLimiter
from gateway.sandboxes.model import Grant, Sandbox, principal_key
from gateway.sandboxes.pool import PoolTarget, WarmPool
from gateway.telemetry import instruments
from gateway.uids import DEFAULT_UID_RANGE, UidRange
from policy import Decision, Principal

__all__ = ["Broker", "Grant", "Sandbox", "principal_key"]

_MANAGED = f"{LABEL_PREFIX}.managed"
_SPEC = f"{LABEL_PREFIX}.spec-digest"
_POOL = f"{LABEL_PREFIX}.pool"
_POOL_PREFIX = "sgw-pool-"
_log = logging.getLogger("sandbox_gateway.broker")
#: After a failed pool fill, wait this long before trying again (the engine may be down).
_POOL_RETRY_S = 5.0
_SIGKILLED = 128 + 9
#: Tries at a free uid when the proxy says another sandbox has the one picked.
_UID_ATTEMPTS = 5
_OOM_KILL = re.compile(r"^oom_kill (\d+)$", re.MULTILINE)
#: Errors that mean "this sandbox cannot take the call": it is replaced once, then the call retried.
#: `sandbox-exhausted`: the agent could not start the command (no process, memory or descriptor left).
_REPLACEABLE = ("sandbox-gone", "sandbox-agent-lost", "sandbox-exhausted")


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
        #: Host uids for sandboxes: each gets its own (see gateway/uids.py).
        self.uids = uids or UidRange.parse(DEFAULT_UID_RANGE)
        self.audit = audit
        self.gateway_id = gateway_id
        self.tools_path = tools_path
        self.skills_path = skills_path
        self.ops = DockerOps(audit, workers)
        self.rates = rates or RateLimiter()
        self._sandboxes: dict[str, Sandbox] = {}
        self._locks: dict[str, anyio.Lock] = {}
        self._running: dict[str, int] = {}
        self.max_sandboxes = max_sandboxes
        self._creating = 0
        self._creating_in: dict[str, int] = {}
        self._alive = instruments().sandboxes_alive
        self.pool = WarmPool()
        #: Principals whose sandbox was lost since their last call: their next result says so.
        self._lost: set[str] = set()
        #: Names of sandboxes the start-up sweep kept for adoption; None when unknown (list each time).
        self._adoptable: set[str] | None = None

    # -- sandboxes -----------------------------------------------------------------------------

    def _labels(self, principal: Principal | None, decision: Grant) -> dict[str, str]:
        """Labels of a new sandbox; a pooled one (no principal yet) carries `pool` instead."""
        owner = (
            {f"{LABEL_PREFIX}.principal": principal.id, f"{LABEL_PREFIX}.tenant": principal.tenant}
            if principal is not None
            else {_POOL: "true"}
        )
        return {
            _MANAGED: "true",
            f"{LABEL_PREFIX}.gateway": self.gateway_id,
            **owner,
            f"{LABEL_PREFIX}.profile": decision.profile,
            f"{LABEL_PREFIX}.policy-digest": decision.policy_digest,
            f"{LABEL_PREFIX}.image": decision.image,
            _SPEC: decision.spec.digest(),
        }

    def _name(self, key: str) -> str:
        digest = hashlib.sha256(f"{self.gateway_id}\0{key}".encode()).hexdigest()[:16]
        return f"sgw-{digest}"

    def _lock(self, key: str) -> anyio.Lock:
        return self._locks.setdefault(key, anyio.Lock())

    def sandbox_of(self, principal: Principal) -> Sandbox | None:
        return self._sandboxes.get(principal_key(principal))

    @property
    def sandboxes(self) -> list[Sandbox]:
        return list(self._sandboxes.values())

    async def ensure_sandbox(self, principal: Principal, decision: Decision) -> Sandbox:
        """The principal's running sandbox: the known one, one found by its labels, or a new one."""
        with acting_for(principal.tenant, principal.id):
            return await self._ensure(principal, Grant.of(decision))

    async def _ensure(self, principal: Principal, decision: Grant) -> Sandbox:
        key = principal_key(principal)
        async with self._lock(key):
            known = self._sandboxes.get(key)
            if known is not None:
                why = (
                    "spec-changed"
                    if known.spec_digest != decision.spec.digest()
                    else known.expired(time.time())
                )
                if why is None:
                    return known
                await self._remove(known, reason=why)
            found = await self._adopt(principal, decision, key)
            return found or await self._provide(principal, decision, key)

    async def sweep(self, current_specs: dict[str, str]) -> tuple[int, int]:
        """At start-up: keep this gateway's running sandboxes whose profile spec is current (they are
        adopted on their principal's next call); remove stopped ones and those made under another spec.
        `current_specs` maps profile name -> spec digest. Returns (kept, removed)."""
        rows = await self.ops.acall(
            "list", self.backend.list, {_MANAGED: "true", f"{LABEL_PREFIX}.gateway": self.gateway_id}
        )
        kept = removed = 0
        adoptable: set[str] = set()
        for row in rows:
            profile = row.labels.get(f"{LABEL_PREFIX}.profile", "")
            unassigned = row.name.startswith(_POOL_PREFIX)
            if row.running and row.labels.get(_SPEC) == current_specs.get(profile) and not unassigned:
                kept += 1
                adoptable.add(row.name)
                continue
            reason = (
                "pool-unassigned" if unassigned else "orphan-stopped" if not row.running else "older-policy"
            )
            await self.ops.acall("remove", self.backend.remove, row.id, container_id=row.id, reason=reason)
            self.audit.emit("sandbox.remove", container_id=row.id, reason=reason)
            removed += 1
        self.audit.emit("sandbox.sweep", kept=kept, removed=removed)
        self._adoptable = adoptable
        return kept, removed

    async def _adopt(self, principal: Principal, decision: Grant, key: str) -> Sandbox | None:
        """After a gateway restart: reuse the principal's running sandbox made with the same spec.

        It is found by its name (made from the gateway id and the principal), which a pooled sandbox
        also takes when it is handed to its principal. Without a listing from the start-up sweep,
        the engine is asked every time; with one, only for names the sweep kept."""
        name = self._name(key)
        if self._adoptable is not None and name not in self._adoptable:
            return None
        labels = {_MANAGED: "true", f"{LABEL_PREFIX}.gateway": self.gateway_id}
        rows = await self.ops.acall("list", self.backend.list, labels, name, principal=principal.id)
        if self._adoptable is not None:
            self._adoptable.discard(name)
        now, keep = time.time(), None
        spec_digest = decision.spec.digest()
        for row in rows:
            young = now - row.created < decision.lifecycle.max_age_s
            same = row.labels.get(_SPEC) == spec_digest and row.name == name
            own_uid = _uid_of(row.labels) in self.uids
            if keep is None and row.running and same and young and own_uid:
                keep = row
                continue
            await self.ops.acall(
                "remove",
                self.backend.remove,
                row.id,
                container_id=row.id,
                principal=principal.id,
                reason="stale",
            )
            self.audit.emit("sandbox.remove", container_id=row.id, reason="stale", principal_key=key)
        if keep is None:
            return None
        channel = None
        if decision.spec.exec_path == "agent":
            try:
                channel = await self._attach_agent(keep.id, principal=principal.id)
            except GatewayError:
                await self.ops.acall(
                    "remove", self.backend.remove, keep.id, container_id=keep.id, reason="agent-unreachable"
                )
                self.audit.emit("sandbox.remove", container_id=keep.id, reason="agent-unreachable")
                return None
        sandbox = Sandbox(
            keep.id,
            keep.name,
            key,
            decision.profile,
            decision.policy_digest,
            spec_digest,
            decision.image,
            decision.lifecycle,
            keep.created or now,
            now,
            row_user(keep.labels),
            channel=channel,
        )
        with contextlib.suppress(GatewayError):  # a baseline: an earlier OOM kill is not a later call's
            sandbox.oom_kills = await self._oom_count(sandbox) or 0
        return self._register(key, sandbox, "sandbox.adopt")

    async def _resolve_image(self, decision: Grant) -> str:
        """The image id to create from. Creating from the id inspected here means a tag moved between
        this check and the create cannot swap the image; a pinned image must match its pin."""
        image_id, repo_digests = await self.ops.acall(
            "inspect_image", self.backend.image_identity, decision.image, image=decision.image
        )
        pin = decision.image_digest
        if pin is not None and pin != image_id and pin not in repo_digests:
            raise SandboxError(
                f"image {decision.image} is not the one the policy pins ({pin[:19]}...)",
                code="image-digest-mismatch",
            )
        return image_id

    def _check_quotas(self, principal: Principal, decision: Grant) -> None:
        """Host and tenant caps on live sandboxes; checked before anything is created."""
        # A pooled sandbox already counts; taking one adds nothing, making one adds one.
        adds = 0 if self.pool.available(decision.spec.digest()) else 1
        if self._live() + adds > self.max_sandboxes:
            raise QuotaExceeded(
                f"host sandbox quota: {self.max_sandboxes} sandboxes are live on this gateway",
                code="host-sandbox-quota",
            )
        tenant_cap = decision.lifecycle.max_sandboxes_per_tenant
        live = sum(1 for s in self._sandboxes.values() if s.principal_key.startswith(f"{principal.tenant}/"))
        live += self._creating_in.get(principal.tenant, 0)
        if live >= tenant_cap:
            raise QuotaExceeded(
                f"tenant sandbox quota: tenant {principal.tenant!r} has {live} of {tenant_cap}",
                code="tenant-sandbox-quota",
            )

    async def _provide(self, principal: Principal, decision: Grant, key: str) -> Sandbox:
        """A new sandbox for the principal: a ready one from the warm pool, else one made now."""
        # Check and reserve with no await in between, so a parallel burst cannot overshoot a quota.
        self._check_quotas(principal, decision)
        self._creating += 1
        self._creating_in[principal.tenant] = self._creating_in.get(principal.tenant, 0) + 1
        try:
            self._charge_creation(key, decision)
            pooled = self.pool.take(decision.spec.digest())
            if pooled is not None:
                assigned = await self._assign(pooled, principal, decision, key)
                if assigned is not None:
                    return assigned
            return await self._create_for(principal, decision, key)
        finally:
            self._creating -= 1
            self._creating_in[principal.tenant] -= 1

    def _charge_creation(self, key: str, decision: Grant) -> None:
        retry = self.rates.hit("sandbox_creations", key, decision.rate_limits.sandbox_creations)
        if retry is None:
            return
        self.audit.emit(
            "ratelimit.hit",
            limit="sandbox_creations",
            rate=decision.rate_limits.sandbox_creations,
            retry_after_s=retry,
        )
        raise QuotaExceeded(
            f"sandbox-creation rate {decision.rate_limits.sandbox_creations} reached; retry in {retry:.0f} s",
            code="sandbox-creation-rate",
        )

    async def _make(self, principal: Principal | None, decision: Grant, name: str) -> Sandbox:
        """Create, start and (on the agent path) connect one sandbox, and record its creation
        (for a principal, or with `pool` for a warm pool when there is none)."""
        image_id = await self._resolve_image(decision)
        attrs = {
            "principal": principal.id if principal is not None else None,
            "image": decision.image,
            "image_digest": image_id,
            "policy_digest": decision.policy_digest,
        }
        for attempt in range(_UID_ATTEMPTS):
            uid = self.uids.pick({_uid_of_user(known.user) for known in self._sandboxes.values()})
            body = create_body(
                decision.spec,
                uid=uid,
                image=decision.image,
                image_id=image_id,
                labels=self._labels(principal, decision),
                tools_path=self.tools_path,
                skills_path=self.skills_path,
            )
            try:
                container_id = await self.ops.acall(
                    "create", self.backend.create, name, body, uid=uid, **attrs
                )
                break
            except SandboxError as exc:
                # Another gateway's sandbox has this uid (the proxy refuses a second one): pick again.
                if exc.code != "uid-in-use" or attempt == _UID_ATTEMPTS - 1:
                    raise
        channel = None
        try:
            await self.ops.acall(
                "start", self.backend.start, container_id, container_id=container_id, **attrs
            )
            if decision.spec.exec_path == "agent":
                channel = await self._attach_agent(container_id)
        except GatewayError:
            # Nothing half-created stays behind.
            await self.ops.acall(
                "remove",
                self.backend.remove,
                container_id,
                container_id=container_id,
                reason="start-failed",
                **attrs,
            )
            raise
        now = time.time()
        sandbox = Sandbox(
            container_id,
            name,
            principal_key(principal) if principal is not None else "",
            decision.profile,
            decision.policy_digest,
            decision.spec.digest(),
            decision.image,
            decision.lifecycle,
            now,
            now,
            f"{uid}:{uid}",
            channel=channel,
        )
        self.audit.emit(
            "sandbox.create",
            container_id=container_id,
            image=decision.image,
            image_digest=image_id,
            profile=decision.profile,
            policy_digest=decision.policy_digest,
            runtime=decision.spec.runtime,
            exec_path=decision.spec.exec_path,
            pool=True if principal is None else None,
        )
        return sandbox

    async def _create_for(self, principal: Principal, decision: Grant, key: str) -> Sandbox:
        return self._register(key, await self._make(principal, decision, self._name(key)))

    async def _assign(
        self, sandbox: Sandbox, principal: Principal, decision: Grant, key: str
    ) -> Sandbox | None:
        """Hand a pooled sandbox to its principal: rename it to the principal's sandbox name."""
        name = self._name(key)
        try:
            await self.ops.acall(
                "rename",
                self.backend.rename,
                sandbox.container_id,
                name,
                container_id=sandbox.container_id,
                principal=principal.id,
            )
        except GatewayError as exc:
            _log.warning("a pooled sandbox could not be handed out (%s); creating one", exc.message)
            await self._remove(sandbox, reason="pool-assign-failed")
            return None
        sandbox.name, sandbox.principal_key = name, key
        sandbox.profile, sandbox.policy_digest = decision.profile, decision.policy_digest
        sandbox.last_used = time.time()
        return self._register(
            key, sandbox, "sandbox.assign", pooled_s=round(sandbox.last_used - sandbox.created_at, 3)
        )

    def _register(self, key: str, sandbox: Sandbox, event: str | None = None, **attrs: object) -> Sandbox:
        """The principal's sandbox from now on: known, counted, and recorded as `event` (if any)."""
        self._sandboxes[key] = sandbox
        self._alive.add(1)
        if event is None:
            return sandbox
        self.audit.emit(
            event,
            container_id=sandbox.container_id,
            profile=sandbox.profile,
            policy_digest=sandbox.policy_digest,
            **attrs,
        )
        return sandbox

    # -- warm pool -------------------------------------------------------------------------------

    async def maintain_pool(self) -> None:
        """Keep the warm pools filled (runs for the gateway's lifetime)."""
        while True:
            for sandbox in self.pool.retired():
                await self._remove_quietly(sandbox, reason="pool-retired")
            failed = False
            for target, missing in self.pool.wanted():
                for _ in range(missing):
                    if self._live() >= self.max_sandboxes:
                        break
                    try:
                        await self._fill(target)
                    except GatewayError as exc:
                        _log.warning("filling the warm pool failed: %s", exc.message)
                        failed = True
                        break
            if failed:
                await anyio.sleep(_POOL_RETRY_S)
            elif not self.pool.wanted() or self._live() >= self.max_sandboxes:
                await self.pool.wait()

    async def _fill(self, target: PoolTarget) -> None:
        sandbox = await self._make(None, target.grant, f"{_POOL_PREFIX}{secrets.token_hex(8)}")
        if not self.pool.offer(target, sandbox):
            for retired in self.pool.retired():
                await self._remove_quietly(retired, reason="pool-retired")

    def _live(self) -> int:
        return len(self._sandboxes) + self._creating + self.pool.size

    async def _remove_quietly(self, sandbox: Sandbox, *, reason: str) -> None:
        try:
            await self._remove(sandbox, reason=reason)
        except GatewayError as exc:
            _log.warning("removing sandbox %s failed: %s", sandbox.container_id[:12], exc.message)

    async def _attach_agent(self, container_id: str, **attrs: str | None) -> AgentChannel:
        """Connect to the sandbox's agent (attach stream + handshake)."""
        # The attach itself is a short Docker call (on the pool); the handshake waits on the channel's own.
        channel = AgentChannel(
            functools.partial(self.ops.run, self.backend.attach, container_id), container_id=container_id
        )
        await self.ops.timed("attach", channel.open, container_id=container_id, **attrs)
        return channel

    async def _remove(self, sandbox: Sandbox, *, reason: str) -> None:
        if self._sandboxes.pop(sandbox.principal_key, None) is not None:
            self._alive.add(-1)
        if sandbox.channel is not None:
            sandbox.channel.close()
        try:
            await self.ops.acall(
                "remove",
                self.backend.remove,
                sandbox.container_id,
                container_id=sandbox.container_id,
                reason=reason,
            )
        except GatewayError:
            if self._adoptable is not None:  # it may still exist under its name: look next time
                self._adoptable.add(sandbox.name)
            raise
        self.audit.emit(
            "sandbox.remove",
            container_id=sandbox.container_id,
            reason=reason,
            principal_key=sandbox.principal_key,
        )

    async def reset(self, principal: Principal) -> bool:
        """Remove the principal's sandbox; the next call gets a fresh one. False if there was none."""
        key = principal_key(principal)
        with acting_for(principal.tenant, principal.id):
            async with self._lock(key):
                sandbox = self._sandboxes.get(key)
                if sandbox is None:
                    return False
                await self._remove(sandbox, reason="reset")
                return True

    async def reap_expired(self) -> int:
        """Remove sandboxes past their idle TTL or max age (never one with a call running)."""
        self.pool.expire(time.time())
        removed = 0
        for sandbox in self.sandboxes:
            if self._running.get(sandbox.principal_key, 0):
                continue
            async with self._lock(sandbox.principal_key):
                reason = sandbox.expired(time.time())
                if reason and self._sandboxes.get(sandbox.principal_key) is sandbox:
                    await self._remove(sandbox, reason=reason)
                    removed += 1
        return removed

    # -- execution -----------------------------------------------------------------------------

    async def execute(
        self,
        principal: Principal,
        decision: Decision,
        argv: list[str],
        on_output: OutputCallback | None = None,
    ) -> ExecOutcome:
        """Run argv in the principal's sandbox under the Decision's limits; `on_output` sees the
        output as it arrives (on a thread of the sandbox's own)."""
        grant = Grant.of(decision)
        key = principal_key(principal)
        limit = grant.limits.max_concurrent
        if self._running.get(key, 0) >= limit:
            raise QuotaExceeded(
                f"concurrent-exec quota: {limit} calls already running for this principal",
                code="concurrent-exec-quota",
            )
        self._running[key] = self._running.get(key, 0) + 1
        try:
            request = ExecRequest(
                argv=argv,
                workdir=grant.spec.workdir,
                env=sandbox_env(grant.spec),
                timeout_s=grant.timeout_s,
                max_output_bytes=grant.limits.max_output_bytes,
            )
            with acting_for(principal.tenant, principal.id):
                return await self._execute_once_or_twice(principal, grant, request, on_output)
        finally:
            self._running[key] -= 1

    async def _execute_once_or_twice(
        self, principal: Principal, grant: Grant, request: ExecRequest, on_output: OutputCallback | None
    ) -> ExecOutcome:
        key = principal_key(principal)
        for attempt in (1, 2):
            sandbox = await self._ensure(principal, grant)
            try:
                outcome = await self._exec(
                    sandbox, request, on_output, principal=principal.id, policy_digest=grant.policy_digest
                )
            except (SandboxError, AgentBroken) as exc:
                # The container (or its agent) was gone before the command started: replace it, once.
                if exc.code not in _REPLACEABLE or attempt == 2:
                    raise
                await self._forget(sandbox, reason="lost")
                continue
            sandbox.last_used = time.time()
            if key in self._lost and not outcome.sandbox_lost:
                self._lost.discard(key)
                outcome = dataclasses.replace(outcome, sandbox_replaced=True)
            if outcome.sandbox_lost and sandbox.channel is not None and await self._still_running(sandbox):
                raise AgentBroken(
                    "the connection to the sandbox broke off during the call (engine or socket proxy "
                    "restarted?); the command's result is unknown"
                )
            if outcome.sandbox_lost:
                await self._forget(sandbox, reason="died-during-exec")
                return outcome
            if outcome.exit_code == _SIGKILLED:
                outcome = await self._with_oom_verdict(sandbox, outcome)
            if outcome.deadline_hit or outcome.duration_ms >= request.timeout_s * 1000:
                await self._reap_strays(sandbox)
            return outcome
        raise SandboxError("the sandbox could not be started")  # pragma: no cover - the loop returns

    async def _exec(
        self, sandbox: Sandbox, request: ExecRequest, on_output: OutputCallback | None = None, **attrs: str
    ) -> ExecOutcome:
        """One command through the sandbox's agent, or `docker exec` when it has none; as the
        sandbox's own uid."""
        request = dataclasses.replace(request, user=sandbox.user)
        attrs["container_id"] = sandbox.container_id
        if sandbox.channel is not None:
            return await self.ops.timed(
                "exec", sandbox.channel.run, request, on_output, exec_path="agent", **attrs
            )
        return await self.ops.timed(
            "exec", self._docker_exec, sandbox, request, on_output, exec_path="exec", **attrs
        )

    async def _docker_exec(
        self, sandbox: Sandbox, request: ExecRequest, on_output: OutputCallback | None
    ) -> ExecOutcome:
        """`docker exec`: create, start and inspect on the shared pool (short calls); the output is
        read on the sandbox's own stream threads for as long as the command runs."""
        stream = await self.ops.run(self.backend.exec_open, sandbox.container_id, request)
        try:
            pumped = await anyio.to_thread.run_sync(
                self.backend.exec_pump, stream, request, on_output, limiter=sandbox.streams
            )
        except BaseException:
            close_stream(stream.sock, stream.raw)
            raise
        return await self.ops.run(self.backend.exec_result, stream, pumped)

    async def _still_running(self, sandbox: Sandbox) -> bool:
        try:
            info = await self.ops.acall(
                "inspect", self.backend.inspect, sandbox.container_id, container_id=sandbox.container_id
            )
        except SandboxError:
            return False
        return info.running

    async def _reap_strays(self, sandbox: Sandbox) -> None:
        """After a timeout, kill what escaped the command's process group (a fork bomb's stragglers,
        setsid'd children): every process of the calling uid. The agent (PID 1) is out of reach of
        that signal; without an agent, the sandbox's own processes run as another uid. If even that
        cannot run (no pid left), the sandbox is replaced."""
        request = _internal(sandbox, ["kill", "-KILL", "-1"], 1024)
        code: int | None = None
        try:
            if sandbox.channel is not None:  # the agent (PID 1) kills them itself: no process needed
                code = await self.ops.timed(
                    "exec",
                    sandbox.channel.reap,
                    container_id=sandbox.container_id,
                    exec_path="agent",
                    purpose="reap-strays",
                )
            else:
                code = (await self._exec(sandbox, request, purpose="reap-strays")).exit_code
        except GatewayError:
            code = None
        # kill -1 exits 1 when it found nothing to kill, 0 when it killed something; anything else
        # (the exec could not even start) means the sandbox is unusable.
        if code not in (0, 1):
            await self._forget(sandbox, reason="unrecoverable-after-timeout")

    async def _with_oom_verdict(self, sandbox: Sandbox, outcome: ExecOutcome) -> ExecOutcome:
        """A SIGKILLed call: ask the sandbox's cgroup whether the OOM killer did it."""
        try:
            count = await self._oom_count(sandbox)
        except GatewayError:
            return outcome
        if count is None or count <= sandbox.oom_kills:
            return outcome
        sandbox.oom_kills = count
        return dataclasses.replace(outcome, oom_killed=True)

    async def _oom_count(self, sandbox: Sandbox) -> int | None:
        """The sandbox cgroup's OOM-kill counter (cgroup v2 or v1), or None where it cannot be read."""
        files = ["/sys/fs/cgroup/memory.events", "/sys/fs/cgroup/memory/memory.oom_control"]
        outcome = await self._exec(sandbox, _internal(sandbox, ["cat", *files], 4096), purpose="oom-check")
        match = _OOM_KILL.search(outcome.stdout.decode(errors="replace"))
        return int(match.group(1)) if match else None

    async def _forget(self, sandbox: Sandbox, *, reason: str) -> None:
        """Drop a sandbox that was lost; its principal's next result says so."""
        self._lost.add(sandbox.principal_key)
        async with self._lock(sandbox.principal_key):
            if self._sandboxes.get(sandbox.principal_key) is sandbox:
                await self._remove(sandbox, reason=reason)

    # -- shutdown ----------------------------------------------------------------------------

    def cleanup_all_sync(self) -> int:
        """Remove every sandbox this gateway manages (known or only labelled). Returns how many."""
        for sandbox in [*self._sandboxes.values(), *self.pool.sandboxes]:
            if sandbox.channel is not None:
                sandbox.channel.close()
        rows = self.ops.call(
            "list", self.backend.list, {_MANAGED: "true", f"{LABEL_PREFIX}.gateway": self.gateway_id}
        )
        for row in rows:
            self.ops.call("remove", self.backend.remove, row.id, container_id=row.id, reason="shutdown")
            self.audit.emit("sandbox.remove", container_id=row.id, reason="shutdown")
        self._alive.add(-len(self._sandboxes))
        self._sandboxes.clear()
        return len(rows)

    @property
    def running_calls(self) -> int:
        return sum(self._running.values())

    async def wait_idle(self, timeout_s: float) -> int:
        """Wait until no call runs, at most `timeout_s`; returns how many still run then."""
        with anyio.move_on_after(timeout_s):
            while self.running_calls:
                await anyio.sleep(0.1)
        return self.running_calls

    async def cleanup_all(self) -> int:
        """cleanup_all_sync on the worker pool."""
        return await self.ops.run(self.cleanup_all_sync)


def _internal(sandbox: Sandbox, argv: list[str], max_output_bytes: int) -> ExecRequest:
    """A short command of the gateway's own in a sandbox (5 s, no environment)."""
    return ExecRequest(
        argv=argv,
        user=sandbox.user,
        workdir="/",
        env=[],
        timeout_s=5,
        max_output_bytes=max_output_bytes,
        grace_s=2,
    )


def _uid_of_user(user: str) -> int:
    uid = user.partition(":")[0]
    return int(uid) if uid.isdigit() else -1


def _uid_of(labels: dict[str, str]) -> int:
    return _uid_of_user(labels.get(USER_LABEL, ""))


def row_user(labels: dict[str, str]) -> str:
    """The `uid:gid` recorded on a sandbox (its code runs as it)."""
    return labels.get(USER_LABEL, "")
