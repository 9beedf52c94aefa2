"""The broker's Docker verbs on sandboxes: make one (image pinned, uid picked, started, connected),
hand a pooled one over, list them, and discard one — the one place a sandbox container is removed,
so every removal is recorded as `sandbox.remove` with its reason."""

from __future__ import annotations

import functools
import logging
import time
from pathlib import Path

import anyio

from audit import AuditLog
from gateway.backend.agent_channel import AgentChannel
from gateway.backend.base import Backend, ContainerInfo, Executor
from gateway.backend.create_body import create_body
from gateway.backend.docker_exec import DockerExec
from gateway.backend.ops import DockerOps
from gateway.egress.network import EgressNetwork
from gateway.egress.service import EgressService, running_for
from gateway.errors import AddressInUse, GatewayError, SandboxError, UidInUse
from gateway.sandboxes import naming
from gateway.sandboxes.model import Sandbox
from gateway.uids import UidRange
from policy import Allowed, Principal

__all__ = ["Containers"]

_log = logging.getLogger("sandbox_gateway.broker")
#: Tries at a free uid when the proxy says another sandbox has the one picked.
_UID_ATTEMPTS = 5


class Containers:
    """Sandbox containers of one gateway on one backend, every call instrumented."""

    def __init__(
        self,
        backend: Backend,
        ops: DockerOps,
        audit: AuditLog,
        *,
        gateway_id: str,
        uids: UidRange,
        tools_path: Path | None,
        skills_path: Path | None,
    ) -> None:
        self.backend = backend
        self.ops = ops
        self.audit = audit
        self.gateway_id = gateway_id
        self.uids = uids
        self._tools_path = tools_path
        self._skills_path = skills_path
        #: Sandboxes of egress profiles: their network, addresses and proxy (None: refused).
        self.egress: EgressService | None = None
        self.replica_id = ""  # fleet mode: names this replica's warm-pool sandboxes (naming.pool_prefix)

    @property
    def egress_network(self) -> EgressNetwork | None:
        return self.egress.network if self.egress is not None else None

    def name_for(self, key: str) -> str:
        return naming.sandbox_name(self.gateway_id, key)

    def _labels(self, principal: Principal | None, grant: Allowed) -> dict[str, str]:
        """Labels of a new sandbox; a pooled one (no principal yet) carries `pool` instead."""
        owner = (
            {naming.PRINCIPAL: principal.id, naming.TENANT: principal.tenant}
            if principal is not None
            else {naming.POOL: "true"}
        )
        return {
            **naming.managed_by(self.gateway_id),
            **owner,
            naming.PROFILE: grant.profile,
            naming.POLICY_DIGEST: grant.policy_digest,
            naming.IMAGE: grant.image,
            naming.SPEC: grant.spec.digest(),
        }

    async def list(self, name: str | None = None, **attrs: str | None) -> list[ContainerInfo]:
        """This gateway's sandboxes on the engine (only the one named `name`, if given)."""
        labels = naming.managed_by(self.gateway_id)
        return await self.ops.acall("list", self.backend.list, labels, name, **attrs)

    async def _resolve_image(self, grant: Allowed) -> str:
        """The image id to create from. Creating from the id inspected here means a tag moved between
        this check and the create cannot swap the image; a pinned image must match its pin."""
        image_id, repo_digests = await self.ops.acall(
            "inspect_image", self.backend.image_identity, grant.image, image=grant.image
        )
        pin = grant.image_digest
        if pin is not None and pin != image_id and pin not in repo_digests:
            raise SandboxError(
                f"image {grant.image} is not the one the policy pins ({pin[:19]}...)",
                code="image-digest-mismatch",
            )
        return image_id

    async def make(
        self, principal: Principal | None, grant: Allowed, name: str, key: str, taken_uids: set[int]
    ) -> Sandbox:
        """Create, start and connect one sandbox, and record its creation (for a principal, or with
        `pool` for a warm pool when there is none). Nothing half-made stays behind."""
        image_id = await self._resolve_image(grant)
        attrs = {
            "principal": principal.id if principal is not None else None,
            "image": grant.image,
            "image_digest": image_id,
            "policy_digest": grant.policy_digest,
        }
        container_id: str | None = None
        try:
            for attempt in range(_UID_ATTEMPTS):
                container_id, uid = await self._create(
                    principal, grant, name, image_id=image_id, taken_uids=taken_uids, attrs=attrs
                )
                try:
                    await self.ops.acall(
                        "start", self.backend.start, container_id, container_id=container_id, **attrs
                    )
                except AddressInUse:  # another gateway's sandbox holds the egress address: again
                    await self.discard(container_id, "start-failed")
                    container_id = None
                    if attempt == _UID_ATTEMPTS - 1:
                        raise
                    continue
                started: str = container_id
                break
            user = f"{uid}:{uid}"
            executor = await self.executor(grant, started, user, principal=attrs["principal"])
            self.audit.emit(
                "sandbox.create",
                container_id=started,
                image=grant.image,
                image_digest=image_id,
                profile=grant.profile,
                policy_digest=grant.policy_digest,
                runtime=grant.spec.runtime,
                exec_path=grant.spec.exec_path,
                pool=True if principal is None else None,
            )
        except BaseException as exc:
            # Cancelled (the caller went away), failed, or not recorded (the audit log fails
            # closed): the sandbox must not outlive the call unknown to the broker.
            with anyio.CancelScope(shield=True):
                await self._undo(name, container_id, cancelled=not isinstance(exc, GatewayError))
            raise
        now = time.time()
        return Sandbox(
            container_id=started,
            name=name,
            principal_key=key,
            profile=grant.profile,
            policy_digest=grant.policy_digest,
            spec_digest=grant.spec.digest(),
            image=grant.image,
            lifecycle=grant.lifecycle,
            created_at=now,
            last_used=now,
            user=user,
            executor=executor,
        )

    async def _create(
        self,
        principal: Principal | None,
        grant: Allowed,
        name: str,
        *,
        image_id: str,
        taken_uids: set[int],
        attrs: dict[str, str | None],
    ) -> tuple[str, int]:
        """Create the container as a uid of its own (egress: at an address held first): (id, uid)."""
        egress = await running_for(self.egress, grant.spec)
        for attempt in range(_UID_ATTEMPTS):
            uid = self.uids.pick(taken_uids)
            labels = self._labels(principal, grant)
            attachment = egress.hold(principal, grant.profile) if egress is not None else None
            if attachment is not None:
                labels[naming.EGRESS_ADDRESS] = attachment[1]
            body = create_body(
                grant.spec,
                uid=uid,
                image=grant.image,
                image_id=image_id,
                labels=labels,
                tools_path=self._tools_path,
                skills_path=self._skills_path,
                egress=attachment,
            )
            create = functools.partial(self.backend.create, needs=grant.spec.host_labels or None)
            try:
                container_id = await self.ops.acall("create", create, name, body, uid=uid, **attrs)
            except BaseException as exc:
                if egress is not None and attachment is not None:
                    egress.release(address=attachment[1])
                if isinstance(exc, UidInUse | AddressInUse) and attempt < _UID_ATTEMPTS - 1:
                    continue
                raise
            if egress is not None and attachment is not None:
                egress.attached(attachment[1], container_id)
            return container_id, uid
        raise AssertionError("unreachable")  # pragma: no cover - the loop returns or raises

    async def _undo(self, name: str, container_id: str | None, *, cancelled: bool) -> None:
        """Remove what a failed or cancelled `make` left. Without an id, the create itself was
        interrupted: the engine may have made the container all the same, so look it up by name."""
        try:
            if container_id is not None:
                await self.discard(container_id, "cancelled" if cancelled else "start-failed")
            elif cancelled:
                for row in await self.list(name):
                    await self.discard(row.id, "cancelled")
        except Exception as exc:  # noqa: BLE001 - the call's own error is the one to raise
            _log.warning("removing the half-made sandbox %s failed: %s", name, exc)

    async def executor(self, grant: Allowed, container_id: str, user: str, **attrs: str | None) -> Executor:
        """How the sandbox's commands will run: its agent (attach stream + handshake), or `docker exec`."""
        if grant.spec.exec_path != "agent":
            return DockerExec(self.backend, self.ops, container_id, user)
        # The attach itself is a short Docker call (on the pool); the handshake waits on the channel's own.
        channel = AgentChannel(
            functools.partial(self.ops.run, self.backend.attach, container_id), container_id=container_id
        )
        await self.ops.timed("attach", channel.open, container_id=container_id, **attrs)
        return channel

    def claim(self, sandbox: Sandbox, principal: Principal, grant: Allowed, key: str) -> None:
        """Give a pooled sandbox to its principal: its owner, profile and egress attribution are the
        principal's from now on; `rename_to_owner` then gives it the principal's sandbox name."""
        if self.egress is not None:
            self.egress.reassign(sandbox.container_id, principal.id, principal.tenant, grant.profile)
        sandbox.name, sandbox.principal_key = self.name_for(key), key
        sandbox.profile, sandbox.policy_digest = grant.profile, grant.policy_digest
        sandbox.last_used = time.time()

    async def rename_to_owner(self, sandbox: Sandbox, principal: Principal) -> None:
        """Rename a claimed sandbox to its principal's name. Its labels still say `pool` (labels
        cannot change); the name is the record of its owner."""
        await self.ops.acall(
            "rename",
            self.backend.rename,
            sandbox.container_id,
            sandbox.name,
            container_id=sandbox.container_id,
            principal=principal.id,
        )

    async def state(self, sandbox: Sandbox) -> ContainerInfo | None:
        """The sandbox as the engine sees it now (None: it is gone)."""
        try:
            return await self.ops.acall(
                "inspect", self.backend.inspect, sandbox.container_id, container_id=sandbox.container_id
            )
        except SandboxError:
            return None

    async def discard(
        self, container_id: str, reason: str, *, principal_key: str | None = None, **attrs: str | None
    ) -> None:
        """Remove a sandbox container and record `sandbox.remove` (raises if the engine fails)."""
        await self.ops.acall(
            "remove", self.backend.remove, container_id, container_id=container_id, reason=reason, **attrs
        )
        if self.egress is not None:  # its address is free once the container is gone, not before
            self.egress.release(container_id=container_id)
        self.audit.emit(
            "sandbox.remove", container_id=container_id, reason=reason, principal_key=principal_key
        )

    def discard_all_sync(self, reason: str) -> int:
        """Remove every sandbox of this gateway the engine lists (for shutdown, off the event loop);
        how many there were."""
        rows = self.ops.call("list", self.backend.list, naming.managed_by(self.gateway_id))
        for row in rows:
            self.ops.call("remove", self.backend.remove, row.id, container_id=row.id, reason=reason)
            if self.egress is not None:
                self.egress.release(container_id=row.id)
            self.audit.emit("sandbox.remove", container_id=row.id, reason=reason)
        return len(rows)

    async def discard_sandbox(self, sandbox: Sandbox, reason: str) -> None:
        """Close a sandbox's executor and `discard` its container."""
        sandbox.executor.close()
        await self.discard(sandbox.container_id, reason, principal_key=sandbox.principal_key or None)

    async def discard_quietly(
        self, container_id: str, reason: str, *, principal_key: str | None = None
    ) -> bool:
        """`discard`, logging instead of raising; False if the engine failed."""
        try:
            await self.discard(container_id, reason, principal_key=principal_key)
        except GatewayError as exc:
            _log.warning("removing sandbox %s failed: %s", container_id[:12], exc.message)
            return False
        return True
