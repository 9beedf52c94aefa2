"""After a gateway restart: which sandboxes of this gateway to keep, and adopting a principal's own.

At start-up the sweep keeps running sandboxes made under a current profile spec (their principals
adopt them on their next call) and removes the rest. A principal's sandbox is found again by its
name (made from the gateway id and the principal), which a pooled sandbox also takes when it is
handed to its principal.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from gateway.errors import GatewayError
from gateway.sandboxes import naming
from gateway.sandboxes.containers import Containers
from gateway.sandboxes.model import Sandbox
from policy import Allowed, Principal

__all__ = ["Adoption"]


class Adoption:
    """The start-up sweep, and adopting a principal's running sandbox by name."""

    def __init__(self, containers: Containers) -> None:
        self._containers = containers
        #: Names of sandboxes the start-up sweep kept for adoption; None when unknown (look each time).
        self._adoptable: set[str] | None = None
        #: Fleet replicas with Redis: the container a sandbox name was last given to, by any replica.
        self.current_of: Callable[[str], str | None] | None = None

    async def sweep(self, current_specs: dict[str, str]) -> tuple[int, int]:
        """Keep this gateway's running sandboxes whose profile spec is current; remove stopped ones,
        unassigned pooled ones and those made under another spec. `current_specs` maps profile name
        -> spec digest. Returns (kept, removed)."""
        kept = removed = 0
        adoptable: set[str] = set()
        for row in await self._containers.list():
            profile = row.labels.get(naming.PROFILE, "")
            unassigned = row.name.startswith(naming.POOL_PREFIX)
            if unassigned and not row.name.startswith(naming.pool_prefix(self._containers.replica_id)):
                continue  # another replica's warm pool: that replica's own to keep or remove
            current = row.labels.get(naming.SPEC) == current_specs.get(profile)
            if row.running and current and not unassigned:
                kept += 1
                adoptable.add(row.name)
                continue
            reason = (
                "pool-unassigned" if unassigned else "orphan-stopped" if not row.running else "older-policy"
            )
            await self._containers.discard(row.id, reason)
            removed += 1
        self._containers.audit.emit("sandbox.sweep", kept=kept, removed=removed)
        # Fleet replicas: another replica makes sandboxes after this sweep, so look each time.
        self._adoptable = None if self._containers.replica_id else adoptable
        return kept, removed

    def may_exist(self, name: str) -> None:
        """A removal of `name` failed: it may still be there, so look for it next time."""
        if self._adoptable is not None:
            self._adoptable.add(name)

    async def adopt(self, principal: Principal, grant: Allowed, key: str) -> tuple[Sandbox | None, bool]:
        """The principal's running sandbox made with the same spec, young enough and with a uid of
        this gateway's range; any other of its name is removed. Without a listing from the sweep the
        engine is asked every time; with one, only for names the sweep kept. With no sandbox, whether
        the principal had one that could not be taken over (a new one replaces it: its files are gone)."""
        containers = self._containers
        name = containers.name_for(key)
        if self._adoptable is not None:
            if name not in self._adoptable:
                return None, False
            self._adoptable.discard(name)
        rows = await containers.list(name, principal=principal.id)
        now, keep = time.time(), None
        spec_digest = grant.spec.digest()
        # Fleet replicas: the one the principal used last, when known; an older one is stale.
        current = self.current_of(name) if self.current_of is not None else None
        # Its latest out of reach (its host does not answer) or gone: a new one replaces it.
        replaced = current is not None and all(row.id != current for row in rows)
        for row in rows:
            young = now - row.created < grant.lifecycle.max_age_s
            same = row.labels.get(naming.SPEC) == spec_digest and row.name == name
            own_uid = naming.uid_of(row.labels) in containers.uids
            latest = current is None or row.id == current
            if keep is None and row.running and same and young and own_uid and latest:
                keep = row
                continue
            await containers.discard(row.id, "stale", principal_key=key, principal=principal.id)
            replaced |= keep is None
        if keep is None:
            return None, replaced
        egress, address = containers.egress, keep.labels.get(naming.EGRESS_ADDRESS, "")
        owner = (principal.id, principal.tenant, grant.profile, keep.id)
        if grant.spec.network == "egress" and (egress is None or not egress.claim(address, *owner)):
            await containers.discard(keep.id, "stale", principal_key=key, principal=principal.id)
            return None, False
        user = keep.labels.get(naming.USER_LABEL, "")
        try:
            executor = await containers.executor(grant, keep.id, user, principal=principal.id)
        except GatewayError:
            await containers.discard(keep.id, "agent-unreachable", principal_key=key)
            return None, True
        adopted = Sandbox(
            container_id=keep.id,
            name=keep.name,
            principal_key=key,
            profile=grant.profile,
            policy_digest=grant.policy_digest,
            spec_digest=spec_digest,
            image=grant.image,
            lifecycle=grant.lifecycle,
            created_at=keep.created or now,
            last_used=now,
            user=user,
            executor=executor,
        )
        return adopted, False
