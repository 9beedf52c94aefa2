"""How a sandbox is named and labelled on the engine, and how to read an owner back from them.

A principal's sandbox is named `sgw-` + 16 hex digits of sha256(gateway id, NUL, `tenant/principal`),
so a restarted gateway finds it again by name. A pooled sandbox is made as `sgw-pool-...` with the
`pool` label and no owner; when it is handed out it is renamed to its principal's name, but labels
cannot change after a create, so the name is the one record of its owner that always holds.
"""

from __future__ import annotations

import hashlib

from gateway.backend.create_body import LABEL_PREFIX, USER_LABEL

__all__ = [
    "EGRESS_ADDRESS",
    "GATEWAY",
    "IMAGE",
    "MANAGED",
    "POLICY_DIGEST",
    "POOL",
    "POOL_PREFIX",
    "PRINCIPAL",
    "PROFILE",
    "SPEC",
    "TENANT",
    "USER_LABEL",
    "managed_by",
    "pool_prefix",
    "sandbox_name",
    "uid_of",
    "uid_of_user",
]

MANAGED = f"{LABEL_PREFIX}.managed"
GATEWAY = f"{LABEL_PREFIX}.gateway"
PRINCIPAL = f"{LABEL_PREFIX}.principal"
TENANT = f"{LABEL_PREFIX}.tenant"
PROFILE = f"{LABEL_PREFIX}.profile"
POLICY_DIGEST = f"{LABEL_PREFIX}.policy-digest"
IMAGE = f"{LABEL_PREFIX}.image"
SPEC = f"{LABEL_PREFIX}.spec-digest"
#: An egress sandbox's address on the egress network (held again when it is adopted).
EGRESS_ADDRESS = f"{LABEL_PREFIX}.egress-address"
POOL = f"{LABEL_PREFIX}.pool"
POOL_PREFIX = "sgw-pool-"


def sandbox_name(gateway_id: str, principal_key: str) -> str:
    """The engine name of a principal's sandbox (`principal_key` is `tenant/principal`)."""
    digest = hashlib.sha256(f"{gateway_id}\0{principal_key}".encode()).hexdigest()[:16]
    return f"sgw-{digest}"


def pool_prefix(replica_id: str) -> str:
    """The name prefix of one gateway replica's warm-pool sandboxes (fleet replicas share the gateway
    id, and each sweeps only its own pool at start-up)."""
    return f"{POOL_PREFIX}{replica_id}-" if replica_id else POOL_PREFIX


def managed_by(gateway_id: str) -> dict[str, str]:
    """The label filter that selects every sandbox of one gateway."""
    return {MANAGED: "true", GATEWAY: gateway_id}


def uid_of(labels: dict[str, str]) -> int:
    """The host uid recorded on a sandbox (`sandbox-gateway.user`, `uid:gid`), or -1."""
    return uid_of_user(labels.get(USER_LABEL, ""))


def uid_of_user(user: str) -> int:
    """The uid of a `uid:gid` user, or -1."""
    uid = user.partition(":")[0]
    return int(uid) if uid.isdigit() else -1
